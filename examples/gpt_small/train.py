"""Train a character-level GPT on the Python standard library's source, under a .tx plan.

Run:
    python examples/gpt_small/train.py --plan dp_tp --steps 300
    python examples/gpt_small/train.py --plan path/to/my_plan.tx

Plans (examples/gpt_small/plans/): dp, tp, dp_tp, dp_tp_sp, dp_pp, 3d, fsdp, fsdp_tp. On a CPU-only machine
the script simulates 8 devices. The last line printed is JSON with the results.
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
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from data import Batches, load_corpus  # noqa: E402
from model import eval_step, init_params, pipeline_eval_step, pipeline_step, train_step  # noqa: E402

import titanax as tx  # noqa: E402

PLANS = Path(__file__).parent / "plans"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--plan", default="dp_tp", help="dp, tp, dp_tp, dp_tp_sp, dp_pp, 3d, fsdp, fsdp_tp, or the path of a .tx plan"
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="sequences per step, in all: a multiple of the DP size (times the microbatches under a pipeline)",
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    parser.add_argument("--log-every", type=int, default=50, help="print the training loss every this many steps")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="change a plan setting, e.g. --set pipeline.microbatches=8 --set mesh.data=4 (repeatable)",
    )
    args = parser.parse_args()

    plan_path = Path(args.plan) if args.plan.endswith(".tx") else PLANS / f"{args.plan}.tx"
    try:
        loaded = tx.load_plan(plan_path, overrides=args.set or ())
        engine = tx.Engine(mesh=loaded.mesh, plan=loaded.plan, optimizer=tx.optim.adamw(args.lr))
    except tx.TitanaxError as err:
        sys.exit(f"{err}")
    print(engine.describe())

    tokens = load_corpus()
    split = int(len(tokens) * 0.95)
    train, held_out = (
        Batches(tokens[:split], args.batch_size, 64, seed=0),
        Batches(tokens[split:], args.batch_size, 64, seed=1),
    )
    # Pipelined plans stack the blocks on a leading layer dimension and run the schedule; FSDP
    # plans stack them too, so that stage 3 gathers one layer at a time inside the scan.
    stacked = loaded.plan.pipeline_parallel is not None or loaded.plan.fully_sharded is not None
    step_fn, eval_fn = (pipeline_step, pipeline_eval_step) if stacked else (train_step, eval_step)
    state = engine.create_state(init_params(stacked=stacked), stacked="blocks" if stacked else ())
    eval_batches = [next(held_out) for _ in range(4)]

    def evaluate() -> float:
        return float(np.mean([float(eval_fn(state, b)[1]["loss"]) for b in eval_batches]))

    first_eval = evaluate()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        state, metrics = step_fn(state, next(train))
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step}: loss={float(metrics['loss']):.4f}", flush=True)
    seconds = time.perf_counter() - start
    last_eval = evaluate()
    print(f"held-out loss: {first_eval:.4f} -> {last_eval:.4f}")
    result = {"plan": plan_path.stem, "steps": args.steps, "eval_loss_start": round(first_eval, 4)}
    result |= {"eval_loss_end": round(last_eval, 4), "seconds": round(seconds, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
