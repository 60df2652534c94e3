"""Writes fail as TX errors that name the path: loggers (TX722, at construction where they can, also naming
a bad metric) and the command line's outputs (TX615: ``titanax fmt`` rewriting a plan, ``--schedule-svg``).

A nested-dict metric is flattened as ``outer/inner`` and a value that is not a number is skipped with a
warning, so neither stops ``fit`` at its first log interval.
"""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models import init_mlp, mlp_loss

import titanax as tx
from titanax import cli
from titanax.runtime import loggers
from titanax.runtime.loggers import scalar_metrics

FILE_LOGGERS = [
    pytest.param(lambda path: loggers.CSV(path / "metrics.csv"), id="csv"),
    pytest.param(lambda path: loggers.JSONL(path / "metrics.jsonl"), id="jsonl"),
    pytest.param(lambda path: loggers.TensorBoard(path / "tb"), id="tensorboard"),
]


@pytest.mark.parametrize("make", FILE_LOGGERS)
def test_a_path_under_a_file_is_tx722_at_construction(tmp_path, make):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(tx.TrainingError) as caught:
        make(blocker)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "TX722" and str(blocker) in diagnostic.message
    assert "cannot write to" in diagnostic.message


@pytest.mark.parametrize("owner", [loggers.CSV, loggers.JSONL])
def test_a_file_logger_on_a_directory_is_tx722(tmp_path, owner):
    with pytest.raises(tx.TrainingError) as caught:
        owner(tmp_path)
    assert caught.value.diagnostics[0].code == "TX722"
    assert f"cannot write to {tmp_path}: it is a directory" in caught.value.diagnostics[0].message


@pytest.mark.parametrize("make", FILE_LOGGERS[:2])
def test_a_non_numeric_metric_given_to_a_logger_is_tx722_naming_it(tmp_path, make):
    logger = make(tmp_path)
    for bad in ("fast", {"inner": 1.0}, None):
        with pytest.raises(tx.TrainingError) as caught:
            logger.log(1, {"loss": 0.5, "note": bad})
        assert caught.value.diagnostics[0].code == "TX722"
        assert "metric 'note'" in caught.value.diagnostics[0].message
    logger.log(1, {"loss": 0.5})  # the refused rows left the logger usable
    logger.close()


def test_basic_refuses_a_string_metric_with_tx722():
    with pytest.raises(tx.TrainingError, match="metric 'note' is str"):
        loggers.Basic().log(1, {"note": "x"})


@pytest.mark.parametrize("step", [2**63, -(2**63) - 1, 10**100])
def test_tensorboard_step_outside_int64_is_tx722(tmp_path, step):
    logger = loggers.TensorBoard(tmp_path / "tb")
    with pytest.raises(tx.TrainingError) as caught:
        logger.log(step, {"loss": 1.0})
    assert caught.value.diagnostics[0].code == "TX722" and "signed 64-bit step" in caught.value.diagnostics[0].message
    logger.log(2**63 - 1, {"loss": 1.0})  # the largest step the format holds still works
    logger.close()


def test_scalar_metrics_flattens_nested_dicts_and_skips_non_numbers_with_a_warning():
    metrics = {
        "loss": jnp.float32(0.5),
        "eval": {"acc": np.float64(0.9), "deep": {"n": 3}},
        "skipped_flag": True,
        "note": "epoch 1",
        "hist": np.zeros(4),
    }
    with pytest.warns(UserWarning, match=r"\['note'\] are not numbers"):
        found = scalar_metrics(metrics)
    assert sorted(found) == ["eval/acc", "eval/deep/n", "loss", "skipped_flag"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scalar_metrics({"a": {"b": 1.0}}) == {"a/b": 1.0}


@tx.step_fn
def nested_step(state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss, "parts": {"loss": loss, "twice": 2 * loss}}


def test_fit_logs_a_nested_dict_metric_as_outer_inner(tmp_path):
    path = tmp_path / "metrics.jsonl"
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data")),
        optimizer=tx.optim.sgd(0.05),
        loggers=[loggers.JSONL(path)],
    )
    engine.create_state(init_mlp())
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(32, 4)).astype(np.float32), "y": rng.normal(size=(32, 3)).astype(np.float32)}

    def evaluate(state):
        return {"nested": {"value": jnp.float32(1.5)}, "label": "held-out"}

    with pytest.warns(UserWarning, match="label"):
        engine.fit(
            nested_step,
            tx.data.ArrayLoader(data, batch_size=16, shuffle=False),
            steps=2,
            log_every=1,
            eval_fn=evaluate,
            eval_every=2,
            progress=False,
        )
    engine.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    train = [row for row in rows if "loss" in row]
    assert [row["step"] for row in train] == [1, 2]
    assert all(row["parts/twice"] == pytest.approx(2 * row["parts/loss"]) for row in train)
    assert any(row.get("eval_nested/value") == 1.5 for row in rows)


# -- the command line's writes ----------------------------------------------------------------------------------------
def test_fmt_on_a_file_it_cannot_write_is_tx615(tmp_path, monkeypatch, capsys):
    plan = tmp_path / "plan.tx"
    plan.write_text("mesh {data=8}\n")
    plan.chmod(0o444)
    real_open = open

    def read_only(path, mode="r", *args, **kwargs):
        # As root a mode-0444 file is still writable; refuse as the kernel would for any other user.
        if "w" in mode and str(path) == str(plan):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(cli, "open", read_only, raising=False)
    assert cli.main(["fmt", str(plan)]) == 1
    err = capsys.readouterr().err
    assert f"error[TX615]: cannot write the formatted plan to {plan}: Permission denied" in err
    assert "internal error" not in err and plan.read_text() == "mesh {data=8}\n"


def test_schedule_svg_into_a_missing_folder_is_tx615(tmp_path, capsys):
    plan = tmp_path / "pp.tx"
    plan.write_text("mesh { pipe = 2 }\npipeline over pipe { microbatches = 4 }\n")
    target = tmp_path / "missing" / "schedule.svg"
    assert cli.main(["compile", str(plan), "--schedule-svg", str(target)]) == 1
    err = capsys.readouterr().err
    assert f"error[TX615]: cannot write the schedule picture to {target}: No such file or directory" in err
    assert f"create the folder {target.parent} first" in err and "internal error" not in err
    assert cli.main(["compile", str(plan), "--schedule-svg", str(tmp_path / "schedule.svg")]) == 0
    assert (tmp_path / "schedule.svg").read_text().startswith("<svg")
