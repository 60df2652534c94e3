"""``tx.loggers.WandB`` in offline mode: fit's metrics reach the run's files, no network needed."""

import jax
import numpy as np
import pytest
from models import Recorder, init_mlp, mlp_loss

import titanax as tx

wandb = pytest.importorskip("wandb")  # the optional extra; CI installs it (.ci/run)


@tx.step_fn
def train_step(state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def test_fit_logs_to_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = tx.loggers.WandB(project="titanax-test", mode="offline", dir=str(tmp_path), every=1)
    recorder = Recorder()
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data")),
        optimizer=tx.optim.sgd(tx.optim.warmup_cosine(0.1, 1, 4)),
        loggers=[logger, recorder],
    )
    rng = np.random.default_rng(0)
    data = [
        {"x": rng.normal(size=(16, 4)).astype(np.float32), "y": rng.normal(size=(16, 3)).astype(np.float32)}
        for _ in range(3)
    ]
    sent = []
    real_log = logger.run.log
    monkeypatch.setattr(
        logger.run, "log", lambda values, step: (sent.append((step, values)), real_log(values, step=step))
    )
    engine.fit(train_step, data, steps=3, log_every=1, progress=False, state=engine.create_state(init_mlp()))
    engine.close()
    # Every step reached the run with the values every other logger got, at its own step number.
    assert [step for step, _ in sent] == [1, 2, 3]
    for step, values in sent:
        assert values == pytest.approx(recorder.rows[step])
        assert {"loss", "learning_rate", "step_time_s"} <= set(values)
    (run_dir,) = list((tmp_path / "wandb").glob("offline-run-*"))
    assert list(run_dir.glob("*.wandb"))  # the run's records, for `wandb sync`
    with pytest.raises(tx.TrainingError, match="TX722"):
        logger.log(4, {"loss": 1.0})  # after close
