"""The loggers: what each writes, read back with an independent reader."""

import ast
import csv
import io
import json
import math
import struct
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

import titanax as tx
from titanax.runtime import loggers


def read_csv(path):
    with path.open(newline="") as file:
        return list(csv.reader(file))


def read_events(logdir):
    """Every (step, tag, value) in the one event file under ``logdir``, read from the TFRecord framing."""
    (path,) = logdir.glob("events.out.tfevents.*")
    data = path.read_bytes()
    scalars, offset = [], 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        record = data[offset + 12 : offset + 12 + length]
        (record_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert header_crc == masked_crc32c(header) and record_crc == masked_crc32c(record)
        event = event_pb2.Event.FromString(record)
        scalars += [(event.step, value.tag, value.simple_value) for value in event.summary.value]
        offset += 16 + length
    assert offset == len(data)
    return scalars


def test_csv_values_read_back_exactly(tmp_path):
    path = tmp_path / "deep" / "dir" / "metrics.csv"
    logger = loggers.CSV(path)
    logger.log(1, {"loss": 0.1 + 0.2, "lr": 3e-4, "grad_norm": 1 / 3})
    logger.log(2, {"loss": 2.5e-17, "lr": np.float32(0.1), "grad_norm": 7.0})
    rows = read_csv(path)  # before close: every row is flushed as it is logged
    logger.close()
    assert rows[0] == ["step", "grad_norm", "loss", "lr"]
    assert [int(row[0]) for row in rows[1:]] == [1, 2]
    assert [float(cell) for cell in rows[1][1:]] == [1 / 3, 0.1 + 0.2, 3e-4]
    assert [float(cell) for cell in rows[2][1:]] == [7.0, 2.5e-17, float(np.float32(0.1))]


def test_csv_new_metric_widens_header_and_keeps_earlier_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    logger = loggers.CSV(path)
    logger.log(1, {"loss": 1.5})
    logger.log(2, {"loss": 1.25})
    logger.log(100, {"loss": 0.5, "eval_loss": 0.75})
    logger.log(101, {"loss": 0.25})
    logger.close()
    assert read_csv(path) == [
        ["step", "eval_loss", "loss"],
        ["1", "", "1.5"],
        ["2", "", "1.25"],
        ["100", "0.75", "0.5"],
        ["101", "", "0.25"],
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_csv_overwrites_unless_append_resumes(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("stale\n")
    first = loggers.CSV(path)
    first.log(1, {"loss": 1.5})
    assert "stale" not in path.read_text()
    first.log(2, {"loss": 1.25})
    first.close()

    resumed = loggers.CSV(path, append=True)
    resumed.log(3, {"loss": 1.0})
    resumed.log(4, {"loss": 0.5, "acc": 0.875})
    resumed.close()
    assert read_csv(path) == [
        ["step", "acc", "loss"],
        ["1", "", "1.5"],
        ["2", "", "1.25"],
        ["3", "", "1.0"],
        ["4", "0.875", "0.5"],
    ]


def test_csv_append_rejects_a_file_it_did_not_write(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(tx.TrainingError, match="'epoch', not 'step'"):
        loggers.CSV(path, append=True)


def test_jsonl_lines_parse_with_steps_values_and_time(tmp_path):
    path = tmp_path / "deep" / "metrics.jsonl"
    before = time.time()
    logger = loggers.JSONL(path)
    logger.log(10, {"loss": 0.1 + 0.2, "lr": np.float32(0.1)})
    logger.log(20, {"loss": 1 / 3, "eval_loss": 2.0})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    logger.close()
    assert [record["step"] for record in records] == [10, 20]
    assert all(before <= record["time"] <= time.time() for record in records)
    assert {k: v for k, v in records[0].items() if k != "time"} == {
        "step": 10,
        "loss": 0.1 + 0.2,
        "lr": float(np.float32(0.1)),
    }
    assert {k: v for k, v in records[1].items() if k != "time"} == {"step": 20, "loss": 1 / 3, "eval_loss": 2.0}


def test_jsonl_writes_non_finite_values_as_strings(tmp_path):
    path = tmp_path / "metrics.jsonl"
    logger = loggers.JSONL(path)
    logger.log(1, {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.0})
    logger.close()
    (line,) = path.read_text().splitlines()
    record = json.loads(line, parse_constant=lambda token: pytest.fail(f"invalid JSON token {token}"))
    assert (record["a"], record["b"], record["c"], record["d"]) == ("nan", "inf", "-inf", 1.0)


def test_jsonl_append_keeps_earlier_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step, append in ((1, False), (2, True)):
        logger = loggers.JSONL(path, append=append)
        logger.log(step, {"loss": float(step)})
        logger.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_file_loggers_reject_reserved_names_and_log_after_close(tmp_path):
    csv_logger, jsonl_logger = loggers.CSV(tmp_path / "m.csv"), loggers.JSONL(tmp_path / "m.jsonl")
    with pytest.raises(tx.TrainingError, match="reserved"):
        csv_logger.log(1, {"step": 1.0})
    with pytest.raises(tx.TrainingError, match="reserved"):
        jsonl_logger.log(1, {"time": 1.0})
    for logger in (csv_logger, jsonl_logger):
        logger.close()
        logger.close()
        with pytest.raises(tx.TrainingError, match="after close"):
            logger.log(2, {"loss": 1.0})


def test_tensorboard_scalars_read_back_from_the_event_file(tmp_path):
    logdir = tmp_path / "tb"
    logger = loggers.TensorBoard(logdir, every=5)
    logger.log(5, {"loss": 0.1 + 0.2, "lr": 3e-4})
    logger.log(10, {"loss": 1 / 3, "lr": 1e-4})
    logger.close()
    logger.close()
    scalars = read_events(logdir)
    assert [(step, tag) for step, tag, _ in scalars] == [(5, "loss"), (5, "lr"), (10, "loss"), (10, "lr")]
    np.testing.assert_allclose([value for *_, value in scalars], [0.3, 3e-4, 1 / 3, 1e-4], rtol=1e-7)
    with pytest.raises(tx.TrainingError, match="after close"):
        logger.log(15, {"loss": 1.0})


def test_tensorboard_without_tensorboardx_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match="pip install tensorboardX"):
        loggers.TensorBoard(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


def test_tensorboardx_is_imported_only_when_a_tensorboard_logger_is_made():
    tree = ast.parse(Path(loggers.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    names = [alias.name for node in top_level for alias in node.names]
    names += [node.module for node in top_level if isinstance(node, ast.ImportFrom) and node.module]
    assert "jax" in names and not any(name.startswith("tensorboardX") for name in names)


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    stream = io.StringIO()
    made = [
        loggers.Basic(stream=stream),
        loggers.CSV(tmp_path / "csv" / "m.csv"),
        loggers.JSONL(tmp_path / "jsonl" / "m.jsonl"),
        loggers.TensorBoard(tmp_path / "tb"),
    ]
    for logger in made:
        logger.log(1, {"loss": 0.5})
        logger.close()
    assert stream.getvalue() == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("every", [0, -1, 1.0, True])
def test_every_must_be_a_positive_integer(tmp_path, every):
    makers = [
        lambda: loggers.Basic(every=every),
        lambda: loggers.CSV(tmp_path / "m.csv", every=every),
        lambda: loggers.JSONL(tmp_path / "m.jsonl", every=every),
        lambda: loggers.TensorBoard(tmp_path / "tb", every=every),
    ]
    for make in makers:
        with pytest.raises(tx.TrainingError, match=f"every={every!r}"):
            make()
    assert list(tmp_path.iterdir()) == []


def test_file_loggers_of_a_resumed_run_append_after_the_restored_step(tmp_path):
    """The default append=None: fit(resume=True) calls resume(step); rows after it are dropped."""
    csv_path, jsonl_path = tmp_path / "m.csv", tmp_path / "m.jsonl"
    first = [loggers.CSV(csv_path), loggers.JSONL(jsonl_path)]
    for logger in first:
        for step in (1, 2, 3, 4):  # interrupted after step 4; the checkpoint holds step 2
            logger.log(step, {"loss": float(step)})
        logger.close()
    second = [loggers.CSV(csv_path), loggers.JSONL(jsonl_path)]
    for logger in second:
        logger.resume(2)
        for step in (3, 4, 5):
            logger.log(step, {"loss": 10.0 + step})
        logger.close()
    assert [row[0] for row in read_csv(csv_path)] == ["step", "1", "2", "3", "4", "5"]
    assert read_csv(csv_path)[3] == ["3", "13.0"]
    records = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0), (5, 15.0)]
    fresh = loggers.JSONL(jsonl_path)  # no resume: a fresh run overwrites
    fresh.log(1, {"loss": 0.5})
    fresh.close()
    assert len(jsonl_path.read_text().splitlines()) == 1


def test_basic_lines_go_through_the_progress_bar(monkeypatch):
    import io

    from tqdm import tqdm

    written = []
    real = tqdm.write
    monkeypatch.setattr(
        tqdm, "write", classmethod(lambda cls, text, file=None, **kw: written.append(text) or real(text, file=file))
    )
    stream = io.StringIO()
    loggers.Basic(stream=stream).log(3, {"loss": 0.5})
    assert written == ["[titanax] step 3 | loss=0.5"]
    assert stream.getvalue() == "[titanax] step 3 | loss=0.5\n"
