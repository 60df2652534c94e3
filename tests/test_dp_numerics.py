"""Data parallelism equals a single-device pure-JAX reference, to float32 precision.

SGD is included on purpose: a missing or doubled gradient reduction changes its
result by the DP factor, where Adam's scale invariance would hide it.
"""

import jax
import numpy as np
import pytest
from models import init_mlp, make_batches, mlp_loss, reference_run

import titanax as tx

STEPS, BATCH = 10, 16


@tx.step_fn
def train_step(state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def titanax_run(optimizer, devices: int, batches, accumulate_steps: int = 1):
    engine = tx.Engine(
        mesh=tx.MeshSpec(devices=devices, axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data", accumulate_steps=accumulate_steps)),
        optimizer=optimizer,
    )
    state = engine.create_state(init_mlp())
    losses = []
    for batch in batches:
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses, state


OPTIMIZERS = {"sgd": lambda: tx.optim.sgd(0.1), "adamw": lambda: tx.optim.adamw(1e-2, weight_decay=0.01)}


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_dp_matches_single_device_reference(devices, opt):
    batches = make_batches(STEPS, BATCH)
    ref_losses, ref_params = reference_run(OPTIMIZERS[opt](), init_mlp(), batches)
    losses, state = titanax_run(OPTIMIZERS[opt](), devices, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert int(state.step) == STEPS


def test_sgd_comparison_detects_a_doubled_gradient():
    """Guard the guard: with SGD, gradients 2x too large (as from a doubled reduction on
    2 devices) move the losses far outside the tolerance the DP tests use."""
    batches = make_batches(3, BATCH)
    ref_losses, _ = reference_run(tx.optim.sgd(0.1), init_mlp(), batches)
    wrong_losses, _ = reference_run(tx.optim.sgd(0.2), init_mlp(), batches)
    assert not np.allclose(wrong_losses[1:], ref_losses[1:], rtol=1e-5)


@pytest.mark.parametrize("devices", [1, 2, 8])
def test_accumulation_equals_large_batch(devices):
    batches = make_batches(STEPS, BATCH * 2)
    big_losses, big_state = titanax_run(tx.optim.sgd(0.1), devices, batches)
    acc_losses, acc_state = titanax_run(tx.optim.sgd(0.1), devices, batches, accumulate_steps=4)
    ref_losses, ref_params = reference_run(tx.optim.sgd(0.1), init_mlp(), batches)
    np.testing.assert_allclose(acc_losses, big_losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acc_losses, ref_losses, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(acc_state.params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_dp_over_two_mesh_axes_matches_reference():
    batches = make_batches(STEPS, BATCH)
    ref_losses, ref_params = reference_run(tx.optim.sgd(0.1), init_mlp(), batches)
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("replica", "data"), shape=(2, 4)),
        plan=tx.Plan(data_parallel=tx.DP(axis=("replica", "data"))),
        optimizer=tx.optim.sgd(0.1),
    )
    state = engine.create_state(init_mlp())
    losses = []
    for batch in batches:
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
