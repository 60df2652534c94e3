"""Engine, TrainState and step_fn behaviour: compilation caching, donation, logging."""

import io

import jax
import numpy as np
import pytest
from models import init_mlp, make_batches, mlp_loss

import titanax as tx


def make_engine(loggers=()):
    return tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data")),
        optimizer=tx.optim.adam(1e-2),
        loggers=loggers,
    )


def make_step(donate_state=True):
    @tx.step_fn(donate_state=donate_state)
    def train_step(state, batch):
        loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    return train_step


def test_no_recompilation_after_the_first_step():
    step = make_step()
    state = make_engine().create_state(init_mlp())
    for batch in make_batches(5, 16):
        state, _ = step(state, batch)
    assert step.compiled(state).cache_size() == 1
    assert int(state.step) == 5


def test_a_batch_already_placed_is_not_placed_again(monkeypatch):
    from titanax.lowering import step as lowering_step

    step = make_step()
    state = make_engine().create_state(init_mlp())
    batches = make_batches(4, 16)
    compiled = step.compiled(state)
    placed = [compiled.place_batch(batch) for batch in batches]
    calls = []
    real = lowering_step.place_global_batch
    monkeypatch.setattr(lowering_step, "place_global_batch", lambda *a: calls.append(1) or real(*a))
    for batch in placed:
        state, _ = step(state, batch)
    assert calls == [], "a batch already laid out as the step needs is used as it is"
    state, _ = step(state, batches[0])  # a host batch is still placed
    assert calls == [1]
    assert compiled.cache_size() == 1 and int(state.step) == 5


@pytest.mark.parametrize("committed", [True, False])
def test_create_state_copies_so_donation_spares_user_params(committed):
    params = jax.device_put(init_mlp(), jax.devices()[0]) if committed else init_mlp()
    expected = jax.tree.map(np.asarray, params)
    step = make_step()
    state = make_engine().create_state(params)
    for batch in make_batches(2, 16):
        state, _ = step(state, batch)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)  # still alive and unchanged


def test_donated_state_is_consumed_as_documented():
    step = make_step()
    old = make_engine().create_state(init_mlp())
    new, _ = step(old, make_batches(1, 16)[0])
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old.params))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new.params))


def test_donate_state_false_keeps_the_old_state():
    step = make_step(donate_state=False)
    old = make_engine().create_state(init_mlp())
    new, _ = step(old, make_batches(1, 16)[0])
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(old.params))
    assert int(old.step) == 0 and int(new.step) == 1


def test_step_without_apply_gradients_leaves_state_unchanged():
    @tx.step_fn(donate_state=False)
    def eval_step(state, batch):
        return state, {"loss": mlp_loss(state.params, batch)}

    state = make_engine().create_state(init_mlp())
    batch = make_batches(1, 16)[0]
    same, metrics = eval_step(state, batch)
    assert int(same.step) == 0
    np.testing.assert_allclose(float(metrics["loss"]), float(mlp_loss(init_mlp(), batch)), rtol=1e-6)


def test_eval_step_under_accumulation_averages_metrics_and_keeps_state():
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data", accumulate_steps=2)),
        optimizer=tx.optim.sgd(0.1),
    )

    @tx.step_fn(donate_state=False)
    def eval_step(state, batch):
        return state, {"loss": mlp_loss(state.params, batch)}

    batch = make_batches(1, 32)[0]
    same, metrics = eval_step(engine.create_state(init_mlp()), batch)
    assert int(same.step) == 0
    np.testing.assert_allclose(float(metrics["loss"]), float(mlp_loss(init_mlp(), batch)), rtol=1e-5)


def test_state_edits_after_apply_gradients_are_kept():
    """A step may post-process the updated state; Titanax must return what the step returned."""

    @tx.step_fn
    def halving_step(state, batch):
        grads = jax.grad(mlp_loss)(state.params, batch)
        new = state.apply_gradients(grads=grads)
        return new.replace(params=jax.tree.map(lambda p: p * 0.5, new.params)), {}

    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)), plan=tx.Plan(data_parallel=tx.DP(axis="data")), optimizer=tx.optim.sgd(0.1)
    )
    batch = make_batches(1, 16)[0]
    state, _ = halving_step(engine.create_state(init_mlp()), batch)
    grads = jax.grad(mlp_loss)(init_mlp(), batch)
    expected = jax.tree.map(lambda p, g: (p - 0.1 * g) * 0.5, init_mlp(), grads)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_basic_logger_writes_every_n_steps():
    stream = io.StringIO()
    step = make_step()
    state = make_engine(loggers=[tx.loggers.Basic(every=2, stream=stream)]).create_state(init_mlp())
    for batch in make_batches(4, 16):
        state, _ = step(state, batch)
    lines = stream.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["[titanax] step 2", "[titanax] step 4"]
    assert all("loss=" in line for line in lines)


def test_lower_exposes_jax_analyses():
    step = make_step()
    state = make_engine().create_state(init_mlp())
    lowered = step.lower(state, make_batches(1, 16)[0])
    compiled = lowered.compile()
    assert "all-reduce" in compiled.as_text()
    assert compiled.cost_analysis() is not None
    assert compiled.memory_analysis() is not None


def test_apply_gradients_outside_a_step_is_a_plain_update():
    state = make_engine().create_state(init_mlp())
    grads = jax.tree.map(np.ones_like, init_mlp())
    new = state.apply_gradients(grads=grads)
    assert int(new.step) == 1
    moved = [
        not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params), strict=True)
    ]
    assert all(moved)


def test_engine_describes_its_plan():
    text = make_engine().describe()
    assert '%collective.grad_sync = collective {name = "grad_sync", op = "all-reduce", reduction = "mean"' in text
    assert "group_size = 8" in text


def test_basic_logger_rejects_bad_every():
    with pytest.raises(tx.TrainingError, match="TX722.*every=0"):
        tx.loggers.Basic(every=0)
