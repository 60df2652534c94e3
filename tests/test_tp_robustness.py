"""Tensor parallelism with real-world optimizers and incomplete rules: right answers or clear errors."""

import jax
import jax.numpy as jnp
import optax
import pytest
from models import GPT, gpt_batches

import titanax as tx
from titanax import nn

SMALL = {**GPT, "layers": 1}


@tx.step_fn
def step(state, batch):
    loss, grads = jax.value_and_grad(nn.gpt_loss)(state.params, batch["ids"], batch["labels"])
    return state.apply_gradients(grads=grads), {"loss": loss}


def engine(optimizer, rules=nn.GPT_TP_RULES, sequence_parallel=False):
    return tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(2, 4)),
        plan=tx.Plan(
            data_parallel=tx.DP(axis="data"),
            tensor_parallel=tx.TP(axis="model", rules=rules, sequence_parallel=sequence_parallel),
        ),
        optimizer=optimizer,
    )


def params_and_batch():
    return nn.init_gpt(jax.random.PRNGKey(0), **SMALL), gpt_batches(1, 8)[0]


def test_tp_aware_global_norm_clipping_equals_clipping_the_whole_gradients():
    params, batch = params_and_batch()
    grads = jax.grad(nn.gpt_loss)(params, batch["ids"], batch["labels"])
    whole = optax.chain(optax.clip_by_global_norm(1e-2), optax.sgd(1.0))
    updates, _ = whole.update(grads, whole.init(params), params)
    expected = optax.apply_updates(params, updates)
    state, _ = step(
        engine(tx.optim.chain(tx.optim.clip_by_global_norm(1e-2), tx.optim.sgd(1.0))).create_state(params), batch
    )
    errors = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), jax.device_get(state.params), expected)
    assert max(jax.tree.leaves(errors)) < 1e-6


def test_optax_global_norm_clipping_under_tp_is_a_clear_error():
    params, batch = params_and_batch()
    state = engine(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))).create_state(params)
    with pytest.raises(tx.StepFnError, match="(?s)TX509.*tx.optim.clip_by_global_norm"):
        step(state, batch)


def test_masked_and_multi_transform_optimizers_follow_parameter_layouts():
    params, batch = params_and_batch()
    mask = jax.tree.map(lambda x: x.ndim > 1, params)  # no decay for vectors
    labels = jax.tree.map(lambda x: "matrix" if x.ndim > 1 else "vector", params)
    for optimizer in (
        optax.masked(optax.adam(1e-3), mask),
        optax.multi_transform({"matrix": optax.adam(1e-3), "vector": optax.sgd(0.1)}, labels),
    ):
        state, metrics = step(engine(optimizer).create_state(params), batch)
        assert jnp.isfinite(metrics["loss"])


def test_a_missing_vocabulary_rule_still_gives_the_right_loss():
    params, batch = params_and_batch()
    expected = float(nn.gpt_loss(params, batch["ids"], batch["labels"]))
    for dropped in ("head/w", "embed/tokens"):
        rules = {k: v for k, v in nn.GPT_TP_RULES.items() if k != dropped}
        _, metrics = step(engine(tx.optim.sgd(0.0), rules).create_state(params), batch)
        assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-6)


def test_a_missing_row_rule_is_a_clear_error():
    params, batch = params_and_batch()
    rules = {k: v for k, v in nn.GPT_TP_RULES.items() if k != "**/mlp/down/w"}
    with pytest.raises(tx.StepFnError, match="TX510.*row_dense got activations split over 'model'"):
        step(engine(tx.optim.sgd(0.1), rules).create_state(params), batch)


def test_sequence_length_not_divisible_by_tp_is_a_clear_error():
    params, _ = params_and_batch()
    ids = jnp.zeros((8, 10), jnp.int32)
    state = engine(tx.optim.sgd(0.1), sequence_parallel=True).create_state(params)
    with pytest.raises(tx.StepFnError, match="(?s)TX511.*multiple of 4"):
        step(state, {"ids": ids, "labels": ids})


def test_stacked_blocks_under_tp_without_pp_follow_per_layer_rules():
    params = nn.init_gpt(jax.random.PRNGKey(0), stacked=True, **{**GPT, "layers": 2})
    batch = gpt_batches(1, 8)[0]
    ref_loss, ref_grads = tx.pipeline.value_and_grad(nn.GPT_PIPELINE, params, batch)

    @tx.step_fn
    def pipeline_step(state, batch):
        loss, grads = tx.pipeline.value_and_grad(nn.GPT_PIPELINE, state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    state = engine(tx.optim.sgd(1.0)).create_state(params, stacked="blocks")
    assert state.params["blocks"]["attn"]["qkv"]["w"].sharding.spec == jax.P(None, None, "model", None, None)
    state, metrics = pipeline_step(state, batch)
    assert float(metrics["loss"]) == pytest.approx(float(ref_loss), rel=1e-5)
    grads = jax.tree.map(lambda before, after: before - after, params, jax.device_get(state.params))
    errors = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))), grads, ref_grads)
    assert max(jax.tree.leaves(errors)) < 1e-3  # p - (p - g) in float32 loses a few digits
