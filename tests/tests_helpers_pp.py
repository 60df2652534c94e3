"""A tiny pipelined model for tests that need a real Engine."""

import jax
import jax.numpy as jnp

import titanax as tx


def tiny_engine_and_step(precision=None, microbatches=4):
    model = tx.PipelineModel(
        first=lambda o, mb: mb["x"] @ o["embed"]["w"],
        block=lambda layer, x: jnp.tanh(x @ layer["w"]),
        last=lambda o, x, mb: jnp.mean((x @ o["head"]["w"] - mb["y"]) ** 2),
    )
    plan = tx.Plan(
        data_parallel=tx.DP(axis="data"),
        pipeline_parallel=tx.PP(axis="pipe", microbatches=microbatches),
        precision=precision,
    )
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "pipe"), shape=(2, 2), devices=4), plan=plan, optimizer=tx.optim.sgd(0.1)
    )

    @tx.step_fn
    def step(state, batch):
        loss, grads = tx.pipeline.value_and_grad(model, state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    k = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {
        "embed": {"w": jax.random.normal(k[0], (4, 8))},
        "blocks": {"w": jax.random.normal(k[1], (2, 8, 8)) * 0.3},
        "head": {"w": jax.random.normal(k[2], (8, 2))},
    }
    return engine, step, params
