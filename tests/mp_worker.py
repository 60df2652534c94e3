"""A training script for the multi-process tests, run alone or under ``titanax launch``.

    python tests/mp_worker.py MODE OUT.json [CHECKPOINT_DIR]

MODE: ``dp`` (DP over every device), ``dp_tp`` (DP x TP, data=2 x model=4),
``fsdp`` (FSDP stage 3 over every device), ``save`` / ``fsdp_save`` (train 3
steps under DP / FSDP, checkpoint), ``restore`` (restore that checkpoint under
DP), ``die`` (rank 1 kills itself at step 3). Process 0 writes the losses and
the full parameters to OUT.json.
"""

import json
import os
import signal
import sys

import titanax as tx

tx.distributed.initialize()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from titanax import nn  # noqa: E402

TP_RULES = {"dense1/w": "column", "dense1/b": "column", "dense2/w": "row"}


class Recorder:
    """Keeps the loss of every step."""

    every = 1

    def __init__(self):
        self.losses = {}

    def log(self, step, metrics):
        if "loss" in metrics:
            self.losses[step] = metrics["loss"]

    def close(self):
        pass


@tx.step_fn
def train_step(state, batch):
    def loss_fn(params):
        h = jnp.tanh(nn.column_dense(params["dense1"], batch["x"]))
        return jnp.mean((nn.row_dense(params["dense2"], h) - batch["y"]) ** 2)

    loss, grads = tx.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}


def init_params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {
        "dense1": {"w": jax.random.normal(k1, (4, 16)) * 0.5, "b": jnp.zeros((16,))},
        "dense2": {"w": jax.random.normal(k2, (16, 3)) * 0.5, "b": jnp.full((3,), 0.1)},
    }


def loader():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = np.sin(x[:, :3] * 2).astype(np.float32)
    return tx.data.ArrayLoader({"x": x, "y": y}, batch_size=16, seed=1)


def main():
    mode, out = sys.argv[1], sys.argv[2]
    directory = sys.argv[3] if len(sys.argv) > 3 else None
    if mode == "dp_tp":
        mesh = tx.MeshSpec(axes=("data", "model"), shape=(2, 4))
        plan = tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model", rules=TP_RULES))
    elif mode.startswith("fsdp"):
        mesh = tx.MeshSpec(axes=("fsdp",))
        plan = tx.Plan(fully_sharded=tx.FSDP(axis="fsdp", stage=3, min_size=16))
    else:
        mesh = tx.MeshSpec(axes=("data",))
        plan = tx.Plan(data_parallel=tx.DP(axis="data"))
    recorder = Recorder()
    engine = tx.Engine(
        mesh=mesh,
        plan=plan,
        optimizer=tx.optim.sgd(0.1),
        loggers=[recorder],
        checkpoint=tx.Checkpoint(directory, every=3) if directory else None,
    )
    state = engine.create_state(init_params())
    data = loader()
    if mode == "restore":
        state = engine.restore(state)
    elif mode == "die":

        def batches(position):
            if jax.process_index() == 1 and position == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return data.batch(position)

        state = engine.fit(train_step, batches, steps=1000, log_every=1, progress=False)
    else:
        steps = 3 if mode.endswith("save") else 5
        state = engine.fit(train_step, data, steps=steps, log_every=1, progress=False)
    engine.close()
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if jax.process_index() == 0:
        result = {
            "processes": jax.process_count(),
            "devices": jax.device_count(),
            "host_step": engine.host_step,
            "losses": [recorder.losses[s] for s in sorted(recorder.losses)],
            "params": jax.tree.map(lambda x: np.asarray(x).tolist(), params),
        }
        with open(out, "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main()
