"""state.rng_key(): reproducible from the seed, folded with the step and the device's position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import titanax as tx
from titanax.lowering import ensure_varying


def make_engine(shape=(4, 2), accumulate=1):
    return tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=shape),
        plan=tx.Plan(
            data_parallel=tx.DP(axis="data", accumulate_steps=accumulate),
            tensor_parallel=tx.TP(axis="model", rules={"w": "column"}),
        ),
        optimizer=tx.optim.sgd(0.1),
    )


def draws(over=None):
    """A step that returns, for every device, one uniform number drawn from its key."""

    @tx.step_fn
    def step(state, batch):
        grads = jax.tree.map(jnp.zeros_like, state.params)
        new = state.apply_gradients(grads=grads)
        u = ensure_varying(jax.random.uniform(state.rng_key(over=over), ()), ("data", "model"))
        # Place every device's number in a (data, model) table and sum: the same table everywhere.
        row, col = tx.collectives.axis_index("data"), tx.collectives.axis_index("model")
        table = jnp.zeros((4, 2)).at[row, col].set(u)
        return new, {"u": tx.collectives.psum(table, ("data", "model"))}

    return step


def run(step, seed=0, steps=2, engine=None):
    engine = engine or make_engine()
    state = engine.create_state({"w": jnp.ones((4, 4))}, seed=seed)
    out = []
    for _ in range(steps):
        state, metrics = step(state, {"x": jnp.zeros((8, 1))})
        out.append(np.asarray(metrics["u"]))
    return out


def test_keys_differ_across_data_parallel_replicas_and_agree_across_tensor_parallel_shards():
    first, second = run(draws())
    assert first.shape == (4, 2)
    assert np.all(first[:, 0] == first[:, 1])  # TP shards of one replica draw the same numbers
    assert len(set(first[:, 0].tolist())) == 4  # every replica draws different ones
    assert not np.array_equal(first, second)  # and the step changes them


def test_over_chooses_the_axes():
    everywhere, _ = run(draws(over=("data", "model")))
    assert len(set(everywhere.ravel().tolist())) == 8
    same, _ = run(draws(over=()))
    assert len(set(same.ravel().tolist())) == 1
    with pytest.raises(tx.StepFnError, match="TX505.*rng_key.*'pipe'"):
        run(draws(over="pipe"))


def test_the_run_is_reproducible_from_the_seed():
    step = draws()
    a, b = run(step, seed=7), run(step, seed=7)
    c = run(step, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], c[0])


def test_outside_a_step_the_key_folds_the_step_only():
    engine = make_engine()
    state = engine.create_state({"w": jnp.ones((4, 4))}, seed=3)
    expected = jax.random.fold_in(jax.random.key(3), 0)
    assert np.array_equal(jax.random.key_data(state.rng_key()), jax.random.key_data(expected))


def test_accumulation_microbatches_get_different_keys():
    @tx.step_fn
    def step(state, batch):
        grads = jax.tree.map(jnp.zeros_like, state.params)
        return state.apply_gradients(grads=grads), {"u": jax.random.uniform(state.rng_key(over=()), ())}

    engine = make_engine(shape=(8, 1), accumulate=2)
    state = engine.create_state({"w": jnp.ones((4, 4))}, seed=0)
    _, metrics = step(state, {"x": jnp.zeros((16, 1))})
    base = jax.random.fold_in(jax.random.key(0), 0)
    per_microbatch = [float(jax.random.uniform(jax.random.fold_in(base, i), ())) for i in (0, 1)]
    # The metric is the mean over the two microbatches, each drawn from its own key.
    assert float(metrics["u"]) == pytest.approx(np.mean(per_microbatch), rel=1e-6)
    assert float(metrics["u"]) != pytest.approx(float(jax.random.uniform(base, ())), rel=1e-3)
