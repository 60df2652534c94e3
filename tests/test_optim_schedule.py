"""Learning-rate schedules: ``tx.optim.warmup_cosine``, optimizers that keep the rate they used, and fit logging it."""

import jax
import numpy as np
import optax
import pytest
from models import Recorder, init_mlp, mlp_loss

import titanax as tx


@tx.step_fn
def train_step(state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def batches(count=6, size=16):
    rng = np.random.default_rng(0)
    return [
        {"x": rng.normal(size=(size, 4)).astype(np.float32), "y": rng.normal(size=(size, 3)).astype(np.float32)}
        for _ in range(count)
    ]


def test_warmup_cosine_is_optax_warmup_cosine_decay():
    schedule = tx.optim.warmup_cosine(0.1, warmup_steps=2, total_steps=6, start=0.01, end=0.001)
    ref = optax.warmup_cosine_decay_schedule(0.01, 0.1, 2, 6, 0.001)
    assert [float(schedule(i)) for i in range(8)] == pytest.approx([float(ref(i)) for i in range(8)])
    assert float(schedule(0)) == pytest.approx(0.01) and float(schedule(2)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("args", "message"),
    [((0.1, 6, 6), "need 0 <= warmup < total"), ((0.1, -1, 6), "need 0 <= warmup < total"), ((-0.1, 1, 6), ">= 0")],
)
def test_warmup_cosine_rejects_bad_arguments(args, message):
    with pytest.raises(tx.OptimizerError, match=f"TX402.*{message}"):
        tx.optim.warmup_cosine(*args)


def test_fit_logs_the_rate_each_step_used_and_trains_as_optax_does():
    schedule = tx.optim.warmup_cosine(0.2, warmup_steps=2, total_steps=6)
    recorder = Recorder(every=1)
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data")),
        optimizer=tx.optim.sgd(schedule),
        loggers=[recorder],
    )
    data = batches()
    state = engine.fit(train_step, data, steps=6, log_every=1, progress=False, state=engine.create_state(init_mlp()))
    # Step k (1-based) updates with the rate at count k - 1.
    assert [recorder.rows[k]["learning_rate"] for k in range(1, 7)] == pytest.approx(
        [float(schedule(k)) for k in range(6)]
    )
    # The same SGD with the same schedule, in plain optax on one device.
    params, opt = init_mlp(), optax.sgd(schedule)
    opt_state = opt.init(params)
    for batch in data:
        grads = jax.grad(mlp_loss)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    got = jax.device_get(state.params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_constant_rate_is_not_logged_and_the_reader_finds_none():
    assert tx.optim.learning_rate(tx.optim.adamw(1e-3).init(init_mlp())) is None
    state = tx.optim.adamw(tx.optim.warmup_cosine(1e-3, 1, 4)).init(init_mlp())
    assert float(tx.optim.learning_rate(state)) == 0.0  # the rate at count 0: the start of the warmup
