"""Train a character-level Llama (RMSNorm, rotary positions, SwiGLU, grouped-query attention) on the
Python standard library's source, under a .tx plan.

Run:
    python examples/llama_small/train.py --plan dp_tp --steps 300
    python examples/llama_small/train.py --plan 3d --set pipeline.microbatches=8

Plans (examples/llama_small/plans/): dp, dp_tp, 3d, fsdp_tp. On a CPU-only machine the script simulates
8 devices. The text comes from examples/gpt_small/data.py. The last line printed is JSON with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# On a CPU-only machine, pretend to have 8 devices; on GPUs/TPUs this has no effect.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent / "gpt_small")]  # this model, then the shared text

import numpy as np  # noqa: E402
from data import Batches, load_corpus  # noqa: E402
from model import SEQ_LEN, eval_step, init_params, train_step  # noqa: E402

import titanax as tx  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", default="dp_tp", help="dp, dp_tp, 3d, fsdp_tp, or the path of a .tx plan")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step, in all")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    parser.add_argument("--log-every", type=int, default=50, help="print the training loss every this many steps")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a plan setting (repeatable)")
    args = parser.parse_args()

    path = Path(args.plan) if args.plan.endswith(".tx") else HERE / "plans" / f"{args.plan}.tx"
    try:
        loaded = tx.load_plan(path, overrides=args.set or ())
        engine = tx.Engine(mesh=loaded.mesh, plan=loaded.plan, optimizer=tx.optim.adamw(args.lr))
        state = engine.create_state(init_params(), stacked="blocks")
    except tx.TitanaxError as err:
        sys.exit(f"{err}")
    print(engine.describe())

    tokens = load_corpus()
    split = int(len(tokens) * 0.95)
    train = Batches(tokens[:split], args.batch_size, SEQ_LEN, seed=0)
    held_out = [next(Batches(tokens[split:], args.batch_size, SEQ_LEN, seed=1)) for _ in range(4)]

    def evaluate() -> float:
        return float(np.mean([float(eval_step(state, batch)[1]["loss"]) for batch in held_out]))

    first = evaluate()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        state, metrics = train_step(state, next(train))
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step}: loss={float(metrics['loss']):.4f}", flush=True)
    seconds = time.perf_counter() - start
    last = evaluate()
    print(f"held-out loss: {first:.4f} -> {last:.4f}")
    result = {"plan": path.stem, "steps": args.steps, "eval_loss_start": round(first, 4)}
    print(json.dumps(result | {"eval_loss_end": round(last, 4), "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
