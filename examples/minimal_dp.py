"""Minimal data parallelism: a linear model trained over 8 devices (simulated on CPU).

Run: python examples/minimal_dp.py
"""

import os

# On a CPU-only machine, pretend to have 8 devices; on GPUs/TPUs this has no effect.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import titanax as tx  # noqa: E402

engine = tx.Engine(
    mesh=tx.MeshSpec(axes=("data",)),  # every device on one "data" axis
    plan=tx.Plan(data_parallel=tx.DP(axis="data")),  # batch split over it, one gradient all-reduce
    optimizer=tx.optim.sgd(0.1),
)
print(engine.describe())  # the plan IR: every collective the step will run


@tx.step_fn
def train_step(state, batch):
    def loss_fn(params):
        return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}


key_x, key_w = jax.random.split(jax.random.PRNGKey(0))
x = jax.random.normal(key_x, (64, 3))
batch = {"x": x, "y": x @ jnp.array([[1.0], [-2.0], [0.5]]) + 0.3}
state = engine.create_state({"w": jnp.zeros((3, 1)), "b": jnp.zeros((1,))})
for step in range(20):
    state, metrics = train_step(state, batch)
    if step % 5 == 4:
        print(f"step {step + 1}: loss={float(metrics['loss']):.5f}")
