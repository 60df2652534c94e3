"""Loggers: where step metrics go. The Engine calls each one after a step.

``Basic`` prints lines, ``CSV`` and ``JSONL`` write files, ``TensorBoard`` writes event files through tensorboardX.
In a multi-host run every process runs the same loop, so each logger writes on JAX process 0 only; on the other
processes it creates nothing on disk and its ``log`` and ``close`` do nothing.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

import jax
import jax.numpy as jnp
from tqdm import tqdm

from titanax.errors import TrainingError
from titanax.runtime.distributed import ENV_PROCESS_ID

__all__ = ["CSV", "JSONL", "Basic", "Logger", "TensorBoard", "WandB", "host_scalars", "scalar_metrics"]

_INT64 = 2**63
"""TensorBoard event files store a step as a signed 64-bit integer."""


class Logger(Protocol):
    """What the Engine needs from a logger."""

    every: int
    """Log on steps that are multiples of this."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` (already on the host) for ``step``."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...


def _check_every(owner: str, every: int) -> int:
    # bool is an int subclass; every=True is a mistake, not "every step".
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise TrainingError.single(
            "TX722", f"{owner}(every={every!r}) must be a positive integer", f"e.g. {owner}(every=10)"
        )
    return every


def _check_open(owner: str, handle: object, step: int, where: os.PathLike[str]) -> None:
    # A closed logger would silently drop the row; say so instead.
    if handle is None:
        raise TrainingError.single(
            "TX722", f"{owner}.log(step={step}) after close() of {where}", "log before engine.close()"
        )


def _on_process_zero() -> bool:
    # Under `titanax launch` the rank is known from the launcher before JAX starts. Asking JAX
    # would start its backend, after which the Engine could no longer join the other processes.
    rank = os.environ.get(ENV_PROCESS_ID)
    if rank is not None and not jax.distributed.is_initialized():
        return rank == "0"
    return jax.process_index() == 0


def _check_reserved(owner: str, metrics: Mapping[str, float], reserved: tuple[str, ...]) -> None:
    # A metric with a reserved name would silently overwrite the step (or time) column.
    clashes = sorted(name for name in metrics if name in reserved)
    if clashes:
        raise TrainingError.single(
            "TX722",
            f"{owner}.log: metric names {clashes} are reserved for the logger's own columns",
            f"rename them, e.g. 'train/{clashes[0]}'",
        )


def scalar_metrics(metrics: Mapping[str, object], *, stacklevel: int = 3) -> dict[str, object]:
    """The scalar metrics of ``metrics`` that loggers can write, keyed by name.

    A nested mapping is flattened with ``/`` (``{"eval": {"loss": x}}`` becomes ``"eval/loss"``); arrays with
    more than zero dimensions are left out (loggers write scalars); a value that is not a number (a string,
    ``None``, an object) is left out with a warning naming it, so one odd metric never stops a run.
    Values are returned as given (device arrays stay on the device); the caller fetches and converts them.
    ``stacklevel`` is the warning's, as for :func:`warnings.warn`.
    """
    found: dict[str, object] = {}
    skipped: list[str] = []

    def walk(prefix: str, values: Mapping[str, object]) -> None:
        for name, value in values.items():
            key = f"{prefix}{name}"
            if isinstance(value, Mapping):
                walk(f"{key}/", value)
            elif not _is_numeric(value):
                skipped.append(key)
            elif getattr(value, "ndim", 0) == 0:
                found[key] = value

    walk("", metrics)
    if skipped:
        warnings.warn(
            f"titanax: metrics {sorted(skipped)} are not numbers and are not logged; "
            "return numbers or scalar arrays from the step (strings and objects belong in your own log)",
            stacklevel=stacklevel,
        )
    return found


def host_scalars(metrics: object) -> dict[str, float]:
    """:func:`scalar_metrics` of ``metrics`` fetched to the host as floats, in one transfer
    (nothing for metrics that are not a mapping)."""
    if not isinstance(metrics, Mapping):
        return {}
    return {name: float(value) for name, value in jax.device_get(scalar_metrics(metrics, stacklevel=4)).items()}


def _is_numeric(value: object) -> bool:
    # Python and NumPy/JAX numbers and booleans (0 or 1); not strings, which float() would also read.
    if isinstance(value, bool | int | float):
        return True
    dtype = getattr(value, "dtype", None)
    if dtype is None or not hasattr(value, "ndim"):
        return False
    return bool(jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)) and not jnp.issubdtype(
        dtype, jnp.complexfloating
    )


def _number(owner: str, step: int, name: str, value: object) -> float:
    # float() of a string or a dict raises a bare ValueError/TypeError that names neither.
    if not _is_numeric(value) or getattr(value, "ndim", 0) != 0:
        raise TrainingError.single(
            "TX722",
            f"{owner}.log(step={step}): metric {name!r} is {type(value).__name__} {_short(value)}, not a number",
            "log numbers or scalar arrays; engine.fit flattens nested dicts as 'outer/inner' and skips non-numbers",
        )
    return float(value)


def _short(value: object) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "(a huge integer)"
    return text if len(text) <= 60 else text[:57] + "..."


def _unwritable(owner: str, where: Path, why: str) -> TrainingError:
    return TrainingError.single(
        "TX722",
        f"{owner}: cannot write to {where}: {why}",
        "give a path in a directory this process can create and write (check the permissions and that "
        "no part of the path is a file)",
    )


def _check_writable(owner: str, path: Path, *, directory: bool) -> None:
    """Refuse now, naming the path, what would otherwise fail at the first logged step."""
    folder = path if directory else path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(owner, path, error.strerror or str(error)) from None
    if not directory and path.is_dir():
        raise _unwritable(owner, path, "it is a directory") from None
    target = folder if directory or not path.exists() else path
    if not os.access(target, os.W_OK):
        raise _unwritable(owner, path, f"{target} is not writable")


class Basic:
    """Print metrics as one line per logged step, e.g. ``[titanax] step 10 | loss=0.123456``.

    Example: ``tx.loggers.Basic(every=10)``; writes to stderr unless ``stream`` is given.
    """

    def __init__(self, every: int = 1, stream: TextIO | None = None, precision: int = 6):
        self.every = _check_every("Basic", every)
        if isinstance(precision, bool) or not isinstance(precision, int) or not 1 <= precision <= 17:
            raise TrainingError.single(
                "TX722", f"Basic(precision={precision!r}) must be a number of digits from 1 to 17", "e.g. precision=6"
            )
        self.precision = precision
        self._stream = stream
        self._active = _on_process_zero()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write one line for ``step``."""
        if not self._active:
            return
        values = " ".join(
            f"{name}={_number('Basic', step, name, value):.{self.precision}g}"
            for name, value in sorted(metrics.items())
        )
        stream = self._stream or sys.stderr
        # Through tqdm: a progress bar on the same stream is cleared and redrawn below the line.
        tqdm.write(f"[titanax] step {step} | {values}", file=stream)
        stream.flush()

    def close(self) -> None:
        """Flush the stream."""
        if self._active:
            (self._stream or sys.stderr).flush()


class _FileLogger:
    """What ``CSV`` and ``JSONL`` share: process 0 only, a file opened at the first row, and the
    choice between overwriting and appending.

    ``append=None`` (the default) overwrites the file for a fresh run and appends when ``fit(resume=True)``
    resumes from a checkpoint: :meth:`resume` is told the restored step, and rows logged after it by the
    run that was interrupted are dropped (the resumed run logs those steps again). ``append=True`` always
    keeps the file's rows, ``append=False`` always overwrites.
    """

    owner = "logger"

    def __init__(self, path: str | os.PathLike[str], every: int, append: bool | None):
        self.every = _check_every(self.owner, every)
        if append not in (None, True, False):
            raise TrainingError.single(
                "TX722",
                f"{self.owner}(append={append!r}) must be None, True or False",
                "leave it out: a resumed fit() appends by itself",
            )
        self.path = Path(path)
        self.append = append
        self._active = _on_process_zero()
        self._resume_step: int | None = None
        self._opened = False
        self._closed = False
        if self._active:
            _check_writable(self.owner, self.path, directory=False)

    def resume(self, step: int) -> None:
        """Called by ``fit`` after restoring checkpoint ``step``: append after the rows up to ``step``
        (unless built with ``append=False``)."""
        if self.append is not False and not self._opened:
            self._resume_step = step

    def _ensure_open(self, step: int) -> None:
        if self._closed:
            raise TrainingError.single(
                "TX722", f"{self.owner}.log(step={step}) after close() of {self.path}", "log before engine.close()"
            )
        if self._opened:
            return
        self._opened = True
        keep = self.append is True or self._resume_step is not None
        try:
            if keep and self.path.exists():
                self._open_appending(self._resume_step)
            else:
                self._open_fresh()
        except OSError as error:
            raise _unwritable(self.owner, self.path, error.strerror or str(error)) from None

    def _open_fresh(self) -> None:
        raise NotImplementedError

    def _open_appending(self, up_to: int | None) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the file; logging after this is TX722."""
        self._closed = True
        if self._opened:
            self._release()


def _rewrite(path: Path, keep: list[str]) -> None:
    """Replace ``path``'s text with ``keep`` (lines with their newlines), through a file beside it so
    that a crash mid-rewrite leaves the old file whole."""
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text("".join(keep), newline="")
    os.replace(scratch, path)


class CSV(_FileLogger):
    """Write one CSV row per logged step: a ``step`` column, then one column per metric name, sorted.

    A metric name that first appears at a later step (eval metrics, say) widens the header: the file is rewritten
    with the new column, earlier rows keep their values and get empty cells for it. A resumed ``fit`` appends
    after the rows of the run it continues (see ``append`` in :class:`_FileLogger`); a fresh run overwrites.

    Example: ``tx.loggers.CSV("runs/exp1/metrics.csv", every=10)``.
    """

    owner = "CSV"

    def __init__(self, path: str | os.PathLike[str], every: int = 1, append: bool | None = None):
        super().__init__(path, every, append)
        self._fieldnames: list[str] = []
        self._file: TextIO | None = None
        self._writer: csv.DictWriter | None = None
        if self._active and append is True and self.path.exists():
            self._header()  # refuse a file another program wrote now, not at the first row

    def _header(self) -> list[str]:
        with self.path.open(newline="") as file:
            header = next(csv.reader(file), [])
        if header and header[0] != "step":
            raise TrainingError.single(
                "TX722",
                f"CSV(append=True): {self.path} starts with column {header[0]!r}, not 'step'",
                "append only to a file a CSV logger wrote, or give a new path",
            )
        return header

    def _open_fresh(self) -> None:
        self._open("w", [])

    def _open_appending(self, up_to: int | None) -> None:
        header = self._header()
        if up_to is not None:
            with self.path.open(newline="") as file:
                lines = file.readlines()
            _rewrite(self.path, lines[:1] + [line for line in lines[1:] if _leading_step(line) <= up_to])
        self._open("a", header)

    def _open(self, mode: str, fieldnames: list[str]) -> None:
        self._fieldnames = fieldnames
        # newline="" because the csv module writes its own line endings.
        self._file = self.path.open(mode, newline="")
        self._writer = csv.DictWriter(self._file, fieldnames, restval="")

    def _widen(self, file: TextIO, names: set[str]) -> None:
        file.close()
        with self.path.open(newline="") as file:
            rows = list(csv.DictReader(file))
        fieldnames = ["step", *sorted(set(self._fieldnames[1:]) | names)]
        # Write beside the file and swap it in, so a crash mid-rewrite leaves the old file whole.
        scratch = self.path.with_name(self.path.name + ".tmp")
        with scratch.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(scratch, self.path)
        self._open("a", fieldnames)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append the row for ``step``, widening the header first if ``metrics`` has new names."""
        if not self._active:
            return
        self._ensure_open(step)
        _check_reserved("CSV", metrics, ("step",))
        row = {name: _number("CSV", step, name, value) for name, value in metrics.items()}
        new = set(metrics) - set(self._fieldnames)
        if new or not self._fieldnames:
            self._widen(self._file, new)
        assert self._writer is not None and self._file is not None  # _open just set them
        self._writer.writerow({"step": step, **row})
        # Flush every row: a run that crashes keeps every step it logged.
        self._file.flush()

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._writer = None


def _leading_step(line: str) -> float:
    """The step a CSV row starts with (rows that do not parse sort first, so they are kept)."""
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return -math.inf


def _json_value(step: int, name: str, value: object) -> float | str:
    value = _number("JSONL", step, name, value)
    if math.isfinite(value):
        return value
    # JSON has no NaN or infinity; Python's json would write the invalid tokens NaN/Infinity.
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _json_step(line: str) -> float:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return -math.inf


class JSONL(_FileLogger):
    """Write one JSON object per logged step and line: ``{"step": N, "time": <unix seconds>, "loss": 0.12, ...}``.

    Non-finite values are written as the strings ``"nan"``, ``"inf"`` and ``"-inf"`` so that every line is valid
    JSON; ``float()`` reads them back. A resumed ``fit`` appends after the lines of the run it continues, dropping
    the ones logged after its checkpoint (see ``append`` in :class:`_FileLogger`); a fresh run overwrites.

    Example: ``tx.loggers.JSONL("runs/exp1/metrics.jsonl", every=10)``.
    """

    owner = "JSONL"

    def __init__(self, path: str | os.PathLike[str], every: int = 1, append: bool | None = None):
        super().__init__(path, every, append)
        self._file: TextIO | None = None

    def _open_fresh(self) -> None:
        self._file = self.path.open("w", encoding="utf-8")

    def _open_appending(self, up_to: int | None) -> None:
        if up_to is not None:
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            _rewrite(self.path, [line for line in lines if _json_step(line) <= up_to])
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append the line for ``step``."""
        if not self._active:
            return
        self._ensure_open(step)
        _check_reserved("JSONL", metrics, ("step", "time"))
        record = {
            "step": step,
            "time": time.time(),
            **{name: _json_value(step, name, metrics[name]) for name in sorted(metrics)},
        }
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        # Flush every line: a run that crashes keeps every step it logged.
        self._file.flush()

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoard:
    """Write each metric as a TensorBoard scalar (tag = metric name) through ``tensorboardX.SummaryWriter``.

    Needs ``pip install tensorboardX``; TensorBoard itself is only needed to view the event files.

    Example: ``tx.loggers.TensorBoard("runs/exp1", every=10)``, then ``tensorboard --logdir runs``.
    """

    def __init__(self, logdir: str | os.PathLike[str], every: int = 1):
        self.every = _check_every("TensorBoard", every)
        self.logdir = Path(logdir)
        # Imported here so that `import titanax` works, and stays fast, without tensorboardX.
        try:
            from tensorboardX import SummaryWriter
        except ImportError as error:
            raise ImportError("tx.loggers.TensorBoard needs tensorboardX: pip install tensorboardX") from error
        self._active = _on_process_zero()
        self._writer = None
        if self._active:
            _check_writable("TensorBoard", self.logdir, directory=True)
            try:
                self._writer = SummaryWriter(str(self.logdir))
            except OSError as error:
                raise _unwritable("TensorBoard", self.logdir, error.strerror or str(error)) from None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Add one scalar per metric at ``step`` and flush them to the event file."""
        if not self._active:
            return
        _check_open("TensorBoard", self._writer, step, self.logdir)
        if not isinstance(step, numbers.Integral) or not -_INT64 <= step < _INT64:
            raise TrainingError.single(
                "TX722",
                f"TensorBoard.log: step {_short(step)} does not fit the event file's signed 64-bit step",
                "log steps between -2**63 and 2**63 - 1",
            )
        values = {name: _number("TensorBoard", step, name, metrics[name]) for name in sorted(metrics)}
        for name, value in values.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandB:
    """Send each logged step's metrics to Weights & Biases (``wandb.init`` then ``run.log(metrics, step=step)``).

    Needs the optional extra: ``pip install "titanax[wandb]"``. Only process 0 logs. The keyword
    arguments go to ``wandb.init``: ``mode="offline"`` writes the run under ``dir`` without a
    network, to upload later with ``wandb sync``. Example::

        tx.loggers.WandB(project="gpt-small", name="dp_tp", config={"lr": 3e-3}, every=10)
    """

    def __init__(self, *, project: str | None = None, every: int = 1, **init_kwargs: Any):
        self.every = _check_every("WandB", every)
        # Imported here so that `import titanax` works, and stays fast, without wandb.
        try:
            import wandb
        except ImportError as error:
            raise ImportError('tx.loggers.WandB needs wandb: pip install "titanax[wandb]"') from error
        self._active = _on_process_zero()
        self._run = wandb.init(project=project, **init_kwargs) if self._active else None
        self._closed = False

    @property
    def run(self) -> Any:
        """The ``wandb`` run (``None`` on processes other than 0)."""
        return self._run

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` at ``step`` (W&B needs steps that never decrease)."""
        if not self._active:
            return
        _check_open("WandB", None if self._closed else self._run, step, Path(str(getattr(self._run, "dir", "wandb"))))
        values = {name: _number("WandB", step, name, metrics[name]) for name in sorted(metrics)}
        self._run.log(values, step=int(step))

    def close(self) -> None:
        """Finish the run (it is uploaded, or kept on disk in offline mode)."""
        if self._run is not None and not self._closed:
            self._closed = True
            self._run.finish()
