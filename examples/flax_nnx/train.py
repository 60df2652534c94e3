"""Train a transformer written with stock Flax NNX layers on the Python standard library's source, under a
.tx plan, and check it against the same model trained on one device.

Run:
    python examples/flax_nnx/train.py --plan dp_tp --steps 100
    python examples/flax_nnx/train.py --plan dp_tp --steps 5 --check

Plans (examples/flax_nnx/plans/): dp, dp_tp. On a CPU-only machine the script simulates 8 devices. With
--check it trains with SGD and compares every loss and the final parameters with plain JAX on one
device (nnx.split, jax.value_and_grad, nnx State arithmetic). The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE.parent / "gpt_small")]  # this model, then the shared text

import jax  # noqa: E402
import numpy as np  # noqa: E402
from data import Batches, load_corpus  # noqa: E402
from model import SEQ_LEN, build, loss_fn, train_step  # noqa: E402

import titanax as tx  # noqa: E402


def one_device(params, batches, lr):
    """Plain JAX on one device: losses and parameters after SGD on ``batches``."""
    step = jax.jit(jax.value_and_grad(loss_fn))
    losses = []
    for batch in batches:
        loss, grads = step(params, batch)
        losses.append(float(loss))
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return losses, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", default="dp_tp", help="dp, dp_tp, or the path of a .tx plan")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW's learning rate (SGD's 0.1 under --check)")
    parser.add_argument("--check", action="store_true", help="train with SGD and compare with one device")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a plan setting (repeatable)")
    args = parser.parse_args()

    path = Path(args.plan) if args.plan.endswith(".tx") else HERE / "plans" / f"{args.plan}.tx"
    loaded = tx.load_plan(path, overrides=args.set or ())
    optimizer = tx.optim.sgd(0.1) if args.check else tx.optim.adamw(args.lr)
    engine = tx.Engine(mesh=loaded.mesh, plan=loaded.plan, optimizer=optimizer)
    _, params = build()
    state = engine.create_state(params)
    tokens = load_corpus(200_000)
    data = Batches(tokens, args.batch_size, SEQ_LEN, seed=0)
    batches = [next(data) for _ in range(args.steps)]
    losses = []
    for batch in batches:
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    result = {
        "plan": path.stem,
        "steps": args.steps,
        "loss_start": round(losses[0], 4),
        "loss_end": round(losses[-1], 4),
    }
    if args.check:
        reference_losses, reference = one_device(params, batches, 0.1)
        ours = jax.tree.leaves(jax.device_get(state.params))
        error = max(
            float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
            for a, b in zip(ours, jax.tree.leaves(reference), strict=True)
        )
        loss_error = float(np.max(np.abs(np.array(losses) - reference_losses) / np.array(reference_losses)))
        result |= {"max_relative_parameter_error": error, "max_relative_loss_error": loss_error}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
