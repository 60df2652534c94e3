"""Pipeline parallelism against a sequential single-device reference.

The reference runs the layers one after another in plain JAX; the pipelined
runs split them over stages and run GPipe or 1F1B. SGD makes a missing or
doubled gradient visible; parameters after each step are ``p - lr * grad``.
"""

import jax
import jax.numpy as jnp
import models
import numpy as np
import pytest
from models import GPT, gpt_batches, gpt_pipeline_step, max_relative_error

import titanax as tx
from titanax import nn

LR = 0.3
WIDTH = 16


def first(others, mb):
    return mb["x"] @ others["embed"]["w"]


def block(layer, x):
    return jnp.tanh(x @ layer["w"] + layer["b"])


def last(others, x, mb):
    return jnp.mean((x @ others["head"]["w"] - mb["y"]) ** 2)


MODEL = tx.PipelineModel(first=first, block=block, last=last)


def mlp_params(layers):
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return {
        "embed": {"w": jax.random.normal(k[0], (4, WIDTH)) * 0.5},
        "blocks": {"w": jax.random.normal(k[1], (layers, WIDTH, WIDTH)) * 0.3, "b": jnp.zeros((layers, WIDTH))},
        "head": {"w": jax.random.normal(k[2], (WIDTH, 2)) * 0.5},
    }


def reference_loss(params, batch):
    x = batch["x"] @ params["embed"]["w"]
    for i in range(params["blocks"]["w"].shape[0]):
        x = jnp.tanh(x @ params["blocks"]["w"][i] + params["blocks"]["b"][i])
    return jnp.mean((x @ params["head"]["w"] - batch["y"]) ** 2)


REFERENCE = jax.jit(jax.value_and_grad(reference_loss))


def sgd_reference(value_and_grad, params, batches):
    return models.sgd_reference(value_and_grad, params, batches, LR)


@tx.step_fn
def pipeline_step(state, batch):
    loss, grads = tx.pipeline.value_and_grad(MODEL, state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def run(plan, mesh, params, batches, step=pipeline_step):
    engine = tx.Engine(mesh=mesh, plan=plan, optimizer=tx.optim.sgd(LR))
    state = engine.create_state(params)
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return np.array(losses), jax.device_get(state.params), state


def mlp_batches(count, size):
    keys = jax.random.split(jax.random.PRNGKey(7), 2 * count)
    return [
        {"x": jax.random.normal(keys[2 * i], (size, 4)), "y": jax.random.normal(keys[2 * i + 1], (size, 2))}
        for i in range(count)
    ]


CASES = [(schedule, p, m) for schedule in ("gpipe", "1f1b") for p in (2, 4) for m in (p, 2 * p, 2 * p + 1)]


@pytest.mark.parametrize(("schedule", "stages", "microbatches"), CASES, ids=[f"{s}-p{p}-m{m}" for s, p, m in CASES])
def test_pipeline_matches_sequential_reference(schedule, stages, microbatches):
    params = mlp_params(2 * stages)
    batches = mlp_batches(3, 2 * microbatches)
    plan = tx.Plan(pipeline_parallel=tx.PP(axis="pipe", microbatches=microbatches, schedule=schedule))
    losses, got, state = run(plan, tx.MeshSpec(devices=stages, axes=("pipe",)), params, batches)
    ref_losses, ref_params = sgd_reference(REFERENCE, params, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(got, ref_params) < 1e-5
    assert state.params["blocks"]["w"].sharding.spec == jax.P("pipe", None, None)


def test_dp_x_pp_matches_sequential_reference():
    params, batches = mlp_params(4), mlp_batches(3, 16)
    plan = tx.Plan(data_parallel=tx.DP(axis="data"), pipeline_parallel=tx.PP(axis="pipe", microbatches=4))
    losses, got, _ = run(plan, tx.MeshSpec(axes=("data", "pipe"), shape=(4, 2)), params, batches)
    ref_losses, ref_params = sgd_reference(REFERENCE, params, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(got, ref_params) < 1e-5


GPT_STACKED = {**GPT, "layers": 4}


def gpt_reference():
    """The GPT reference of models.py, on the per-layer (unstacked) view of the same parameters."""
    return models.stacked_gpt_reference(GPT_STACKED["layers"])


@pytest.mark.parametrize(
    ("shape", "schedule", "sequence_parallel"),
    [((1, 2, 4), "1f1b", False), ((2, 2, 2), "1f1b", False), ((2, 2, 2), "gpipe", False), ((2, 2, 2), "1f1b", True)],
    ids=["tp2xpp4-1f1b", "dp2xtp2xpp2-1f1b", "dp2xtp2xpp2-gpipe", "dp2xtp2xpp2-1f1b-sp"],
)
def test_tp_and_dp_compositions_with_pp_match_the_gpt_reference(shape, schedule, sequence_parallel):
    params = nn.init_gpt(jax.random.PRNGKey(0), stacked=True, **GPT_STACKED)
    batches = gpt_batches(3, 8)
    plan = tx.Plan(
        data_parallel=tx.DP(axis="data"),
        tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES, sequence_parallel=sequence_parallel),
        pipeline_parallel=tx.PP(axis="pipe", microbatches=4, schedule=schedule),
    )
    mesh = tx.MeshSpec(axes=("data", "model", "pipe"), shape=shape)
    losses, got, state = run(plan, mesh, params, batches, step=gpt_pipeline_step)
    ref_losses, ref_params = sgd_reference(gpt_reference(), params, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(got, ref_params) < 1e-5
    assert state.params["blocks"]["attn"]["qkv"]["w"].sharding.spec == jax.P("pipe", None, "model", None, None)


def test_pipeline_model_without_pp_is_the_sequential_model():
    params, batch = mlp_params(4), mlp_batches(1, 8)[0]
    loss, grads = tx.pipeline.value_and_grad(MODEL, params, batch)
    ref_loss, ref_grads = REFERENCE(params, batch)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    assert max_relative_error(grads, ref_grads) < 1e-5
