"""Tensor parallelism, alone and with data parallelism, against a single-device GPT.

The reference (``models.ref_gpt_loss``) is written independently of ``titanax.nn``.
SGD makes a missing or doubled reduction visible: with Adam, a gradient off by a
constant factor would give nearly the same updates. Parameters after each SGD
step are ``p - lr * grad``, so equal parameters mean equal gradients.
"""

import jax
import numpy as np
import pytest
from models import GPT, gpt_batches, max_relative_error, ref_gpt_loss

import titanax as tx
from titanax import nn

LR = 0.5
STEPS = 5


REF_VALUE_AND_GRAD = jax.jit(jax.value_and_grad(ref_gpt_loss))


def reference(params, batches):
    losses = []
    for batch in batches:
        loss, grads = REF_VALUE_AND_GRAD(params, batch["ids"], batch["labels"])
        losses.append(float(loss))
        params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
    return np.array(losses), params


@tx.step_fn
def train_step(state, batch):
    loss, grads = jax.value_and_grad(nn.gpt_loss)(state.params, batch["ids"], batch["labels"])
    return state.apply_gradients(grads=grads), {"loss": loss}


def titanax_run(dp, tp, *, sequence_parallel=False, optimizer=None):
    params = nn.init_gpt(jax.random.PRNGKey(0), **GPT)
    batches = gpt_batches(STEPS, 8)
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(dp, tp)),
        plan=tx.Plan(
            data_parallel=tx.DP(axis="data"),
            tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES, sequence_parallel=sequence_parallel),
        ),
        optimizer=optimizer or tx.optim.sgd(LR),
    )
    state = engine.create_state(params)
    losses = []
    for batch in batches:
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return np.array(losses), state, params, batches


@pytest.mark.parametrize(("dp", "tp"), [(1, 8), (2, 4), (4, 2), (8, 1)], ids=lambda v: str(v))
def test_dp_x_tp_matches_single_device(dp, tp):
    losses, state, params, batches = titanax_run(dp, tp)
    ref_losses, ref_params = reference(params, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(jax.device_get(state.params), ref_params) < 1e-5


@pytest.mark.parametrize(("dp", "tp"), [(2, 4), (1, 8)], ids=lambda v: str(v))
def test_sequence_parallel_matches_single_device(dp, tp):
    losses, state, params, batches = titanax_run(dp, tp, sequence_parallel=True)
    ref_losses, ref_params = reference(params, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(jax.device_get(state.params), ref_params) < 1e-5


def test_first_step_gradients_match_the_reference():
    # One SGD step from p gives p - lr * g: recover g and compare it directly.
    params = nn.init_gpt(jax.random.PRNGKey(0), **GPT)
    batch = gpt_batches(1, 8)[0]
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(2, 4)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES)),
        optimizer=tx.optim.sgd(1.0),
    )
    state, _ = train_step(engine.create_state(params), batch)
    grads = jax.tree.map(lambda before, after: before - after, params, jax.device_get(state.params))
    _, ref_grads = REF_VALUE_AND_GRAD(params, batch["ids"], batch["labels"])
    assert max_relative_error(grads, ref_grads) < 1e-4


def test_adamw_moments_are_sharded_like_their_parameters():
    _, state, params, _ = titanax_run(2, 4, optimizer=tx.optim.adamw(1e-3))
    qkv = state.params["blocks"]["0"]["attn"]["qkv"]["w"]
    mu = state.opt_state[0].mu["blocks"]["0"]["attn"]["qkv"]["w"]
    assert qkv.sharding.spec == mu.sharding.spec == jax.P(None, "model", None, None)
    whole = params["blocks"]["0"]["attn"]["qkv"]["w"].nbytes
    for array in (qkv, mu, state.opt_state[0].nu["blocks"]["0"]["attn"]["qkv"]["w"]):
        assert array.addressable_shards[0].data.nbytes * 4 == whole  # 1/TP of the whole on each device
    ln = state.params["blocks"]["0"]["ln1"]["scale"]
    assert ln.addressable_shards[0].data.nbytes == ln.nbytes  # replicated stays whole


def test_tp_steps_do_not_recompile():
    _, state, _, batches = titanax_run(2, 4)
    for batch in batches[:2]:
        state, _ = train_step(state, batch)
    assert train_step.compiled(state).cache_size() == 1
