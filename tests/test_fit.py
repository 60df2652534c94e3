"""Engine.fit: the loop, its logging and throughput, evaluation, the NaN guard, and its argument errors."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models import Recorder, init_mlp, mlp_loss

import titanax as tx


def make_engine(**options):
    return tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data")),
        optimizer=tx.optim.sgd(0.05),
        **options,
    )


@tx.step_fn
def train_step(state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


@tx.step_fn
def eval_step(state, batch):
    return state, {"loss": mlp_loss(state.params, batch)}


def arrays(n=128, poison_rows=()):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = rng.normal(size=(n, 3)).astype(np.float32)
    for row in poison_rows:
        x[row] = np.nan
    return {"x": x, "y": y}


def test_fit_logs_metrics_and_throughput_at_intervals_and_evaluates():
    recorder = Recorder(every=1)
    engine = make_engine(loggers=[recorder])
    state = engine.create_state(init_mlp())
    data = tx.data.ArrayLoader(arrays(), batch_size=16, shuffle=False)
    held_out = {name: value[:16] for name, value in arrays().items()}

    def evaluate(state):
        return eval_step(state, held_out)[1]

    state = engine.fit(
        train_step, data, steps=10, log_every=4, eval_fn=evaluate, eval_every=5, progress=False, tokens_per_sample=7
    )
    assert engine.host_step == 10 and int(state.step) == 10
    assert sorted(recorder.rows) == [4, 5, 8, 10]  # log every 4 and the last; eval every 5 and the last
    assert set(recorder.rows[4]) == {"loss", "step_time_s", "samples_per_s", "tokens_per_s"}
    assert recorder.rows[8]["tokens_per_s"] == pytest.approx(recorder.rows[8]["samples_per_s"] * 7)
    assert set(recorder.rows[5]) == {"eval_loss"}
    assert [step for step, _ in engine.eval_history] == [5, 10]
    # Evaluation steps apply no gradients, so they do not advance the host step.
    assert engine.host_step == 10


def test_fit_matches_a_plain_loop_on_the_same_batches():
    data = tx.data.ArrayLoader(arrays(), batch_size=16, seed=4)
    engine = make_engine()
    fitted = engine.fit(train_step, data, steps=6, progress=False, state=engine.create_state(init_mlp()))
    manual_engine = make_engine()
    state = manual_engine.create_state(init_mlp())
    for position in range(6):
        state, _ = train_step(state, data.batch(position))
    for a, b in zip(jax.tree.leaves(fitted.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_nan_loss_stops_training_naming_the_step():
    # Batch 6 (the 7th step) holds a NaN row; the guard checks every step's loss at the log interval.
    engine = make_engine()
    data = tx.data.ArrayLoader(arrays(poison_rows=[6 * 16 + 3]), batch_size=16, shuffle=False)
    with pytest.raises(tx.NonFiniteError, match=r"TX710.*loss is nan at step 7\b"):
        engine.fit(train_step, data, steps=8, log_every=8, progress=False, state=engine.create_state(init_mlp()))


def test_nonfinite_skip_keeps_the_parameters_of_a_bad_step():
    engine = make_engine(nonfinite="skip")
    data = tx.data.ArrayLoader(arrays(poison_rows=[2 * 16]), batch_size=16, shuffle=False)
    state = engine.create_state(init_mlp())
    state, _ = train_step(state, data.batch(0))
    state, _ = train_step(state, data.batch(1))
    before = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    state, metrics = train_step(state, data.batch(2))
    assert float(metrics["skipped"]) == 1.0 and np.isnan(float(metrics["loss"]))
    for a, b in zip(before, jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert int(state.step) == 3
    # fit carries on past it.
    engine.fit(train_step, data, steps=6, progress=False, state=state)
    assert engine.host_step == 6


def test_fit_takes_functions_and_iterables_and_shows_a_progress_bar(capsys):
    engine = make_engine()
    batches = [tx.data.ArrayLoader(arrays(), batch_size=16).batch(i) for i in range(3)]
    state = engine.fit(train_step, iter(batches), steps=3, progress=True, state=engine.create_state(init_mlp()))
    assert "3/3" in capsys.readouterr().err
    state = engine.fit(train_step, lambda position: batches[position % 3], steps=5, progress=False, state=state)
    assert engine.host_step == 5
    with pytest.raises(tx.TrainingError, match="TX721.*ran out after 3 batches"):
        engine.fit(train_step, batches, steps=9, progress=False, state=state)


def test_fit_argument_errors():
    engine = make_engine()
    state = engine.create_state(init_mlp())
    data = tx.data.ArrayLoader(arrays(), batch_size=16)
    with pytest.raises(tx.TrainingError, match="TX720.*steps"):
        engine.fit(train_step, data, steps=-1, state=state)
    with pytest.raises(tx.TrainingError, match="TX720.*eval_every.*without an eval_fn"):
        engine.fit(train_step, data, steps=1, eval_every=2, state=state)
    with pytest.raises(tx.TrainingError, match="TX720.*resume.*checkpoint"):
        engine.fit(train_step, data, steps=1, resume=True, state=state)
    with pytest.raises(tx.TrainingError, match="TX720.*@tx.step_fn"):
        engine.fit(lambda s, b: (s, {}), data, steps=1, state=state)
    with pytest.raises(tx.TrainingError, match="TX720.*nonfinite"):
        make_engine(nonfinite="ignore")
    with pytest.raises(tx.TrainingError, match="TX721"):
        engine.fit(train_step, 42, steps=1, state=state)
    with pytest.raises(tx.TrainingError, match="TX731.*different lengths"):
        tx.data.ArrayLoader({"x": np.zeros((4, 1)), "y": np.zeros((5, 1))}, batch_size=2)


def test_accumulation_refuses_edits_after_apply_gradients():
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data", accumulate_steps=2)),
        optimizer=tx.optim.sgd(0.1),
    )

    @tx.step_fn
    def edits(state, batch):
        grads = jax.grad(mlp_loss)(state.params, batch)
        new = state.apply_gradients(grads=grads)
        return new.replace(params=jax.tree.map(jnp.zeros_like, new.params)), {}

    with pytest.raises(tx.StepFnError, match="TX515.*accumulate_steps"):
        edits(engine.create_state(init_mlp()), arrays(32))


def test_basic_logger_prints_what_fit_sends():
    stream = io.StringIO()
    engine = make_engine(loggers=[tx.loggers.Basic(every=2, stream=stream)])
    data = tx.data.ArrayLoader(arrays(), batch_size=16)
    engine.fit(train_step, data, steps=4, progress=False, state=engine.create_state(init_mlp()))
    lines = stream.getvalue().splitlines()
    assert [line.split(" |")[0] for line in lines] == ["[titanax] step 2", "[titanax] step 4"]
    assert "samples_per_s=" in lines[0]


def test_fit_refuses_a_step_that_applies_no_gradients():
    engine = make_engine()
    data = tx.data.ArrayLoader(arrays(), batch_size=16)
    with pytest.raises(tx.TrainingError, match="TX720.*eval_step.*never calls"):
        engine.fit(eval_step, data, steps=3, progress=False, state=engine.create_state(init_mlp()))


def test_loader_and_logger_options_are_checked():
    with pytest.raises(tx.TrainingError, match="TX731.*seed"):
        tx.data.ArrayLoader(arrays(), batch_size=16, seed=-1)
    with pytest.raises(tx.TrainingError, match="TX731.*scalars"):
        tx.data.ArrayLoader({"x": np.zeros((4, 1)), "n": np.float32(3)}, batch_size=2)
    with pytest.raises(tx.TrainingError, match="TX722.*precision"):
        tx.loggers.Basic(precision="6")


def test_progress_without_a_terminal_prints_plain_lines_per_log_interval(capsys):
    engine = make_engine()
    data = tx.data.ArrayLoader(arrays(), batch_size=16)
    engine.fit(train_step, data, steps=8, log_every=4, progress=True, state=engine.create_state(init_mlp()))
    err = capsys.readouterr().err
    assert "\r" not in err, "no redrawn bar when standard error is not a terminal"
    lines = [line for line in err.splitlines() if line.startswith("[titanax] step")]
    assert [line.split()[2] for line in lines] == ["4/8", "8/8"]
    assert all("loss=" in line and "steps/s" in line for line in lines)
