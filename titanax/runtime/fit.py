"""``Engine.fit``: the training loop around a compiled step.

Each iteration takes the next batch, runs the step and counts it. Metrics
stay on the devices between log intervals: at each interval they cross to the
host once, together with the losses of every step since the last one, which
are checked for NaN and Inf then. A non-finite loss stops training with an
error naming the first bad step, unless the engine was built with
``nonfinite="skip"`` (the step itself then keeps the old parameters). Step time
and throughput are measured over the interval, after ``block_until_ready``.

Checkpoints are saved every ``Checkpoint.every`` steps and after the last one;
``resume=True`` restores the newest complete checkpoint first and goes on from
its step and data position. ``fit`` first becomes the checkpoint directory's
only writer (another run writing there is TX707), and a save refuses a state
holding Inf or NaN, which an update can produce although its loss was finite:
``fit`` then stops with TX711 and the earlier checkpoints stay.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from titanax.errors import CheckpointError, Diagnostic, NonFiniteError, TrainingError
from titanax.runtime.checkpoint import NonFiniteStateError
from titanax.runtime.data import PerProcess
from titanax.runtime.loggers import Basic, host_scalars
from titanax.runtime.optim import learning_rate
from titanax.runtime.profile import Profile, ProfileWindow
from titanax.runtime.state import TrainState

if TYPE_CHECKING:
    from titanax.runtime.engine import Engine
    from titanax.runtime.step_fn import StepFn

__all__ = ["fit"]


def _positive(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrainingError.single("TX720", f"fit({name}={value!r}) must be a positive integer", f"e.g. {name}=100")


def _batch_source(data: Any, *, skip: int, engine: Engine) -> Callable[[int], Any]:
    """``position -> batch`` for a loader with ``.batch(n)``, a function, or an iterable.

    An iterable cannot seek: after a resume the first ``skip`` items, which the
    restored run already trained on, are drawn and dropped; otherwise it is read
    from where it stands.
    """
    if callable(getattr(data, "batch", None)):
        return data.batch
    if callable(data):
        return data
    if not hasattr(data, "__iter__"):
        raise TrainingError.single(
            "TX721",
            f"fit(data=...) must give batches; got {type(data).__name__}",
            "pass tx.data.ArrayLoader(arrays, batch_size), a function position -> batch, or an iterable of batches",
        )
    iterator: Iterator[Any] = iter(data)
    taken = 0

    def draw() -> Any:
        nonlocal taken
        try:
            batch = next(iterator)
        except StopIteration:
            raise TrainingError.single(
                "TX721",
                f"the data ran out after {taken} batches, before step {engine.host_step + 1}",
                "give more data (repeat it for several epochs) or fewer steps",
            ) from None
        taken += 1
        return batch

    def next_batch(position: int) -> Any:
        while taken < skip:
            draw()
        return draw()

    return next_batch


def _examples(batch: Any) -> int:
    """Examples in the global batch (a process's share times the process count)."""
    if isinstance(batch, PerProcess):
        return _examples(batch.batch) * jax.process_count()
    leaves = jax.tree.leaves(batch)
    return int(np.shape(leaves[0])[0]) if leaves and np.ndim(leaves[0]) else 1


class _LossWatch:
    """Holds the step losses still on the devices and checks them in one transfer."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.pending: list[tuple[int, jax.Array]] = []

    def add(self, step: int, metrics: Any) -> None:
        if isinstance(metrics, Mapping) and "loss" in metrics:
            self.pending.append((step, metrics["loss"]))

    def check(self) -> None:
        if not self.pending:
            return
        steps = [step for step, _ in self.pending]
        values = np.asarray(jax.device_get([loss for _, loss in self.pending]), dtype=np.float64)
        self.pending.clear()
        bad = [(step, value) for step, value in zip(steps, values, strict=True) if not math.isfinite(value)]
        if not bad:
            return
        if self.engine.nonfinite == "skip":
            return  # those steps kept their parameters; the metrics say "skipped"
        step, value = bad[0]
        raise NonFiniteError(
            Diagnostic(
                code="TX710",
                message=f"the loss is {value} at step {step}"
                + (f" ({len(bad)} non-finite losses in steps {bad[0][0]}..{bad[-1][0]})" if len(bad) > 1 else ""),
                hint="lower the learning rate or clip gradients, check the batch at that step, or build the Engine "
                "with nonfinite='skip' to drop such updates" + self.last_checkpoint(),
            )
        )

    def last_checkpoint(self) -> str:
        """``"; the last checkpoint is step N"`` for a hint, or nothing."""
        if self.engine.checkpoint is None:
            return ""
        last = self.engine.checkpointer.latest_step()
        return f"; the last checkpoint is step {last}" if last is not None else ""


def _save_checked(engine: Engine, state: TrainState, step: int, watch: _LossWatch) -> None:
    """Save ``state`` as step ``step``. The save itself refuses a state holding Inf or NaN (TX712); no
    step with a non-finite loss was applied (``watch`` checked them, or they were skipped), so an update
    with a finite loss overflowed: TX711."""
    try:
        engine.save(state)
    except NonFiniteStateError as refused:
        where = ", ".join(f"{path}: {count}" for path, count in list(refused.arrays.items())[:5])
        raise NonFiniteError(
            Diagnostic(
                code="TX711",
                message=f"the parameters or optimizer state after step {step} hold Inf or NaN values ({where}), "
                "though no step with a non-finite loss was applied: an update whose loss was finite overflowed; "
                f"step {step} was not saved",
                hint="lower the learning rate or clip gradients (tx.optim.clip_by_global_norm); with "
                "nonfinite='skip' a data-parallel step refuses such an update" + watch.last_checkpoint(),
            )
        ) from None


class _PlainProgress:
    """Progress for output that is not a terminal (a file, a pipe, ``titanax launch``): no redrawn bar,
    one plain line per log interval on process 0, and none when a ``Basic`` logger already prints one."""

    def __init__(self, total: int, initial: int, quiet: bool):
        self.total, self.step, self.quiet = total, initial, quiet
        self.start, self.start_step = time.perf_counter(), initial

    def update(self, count: int) -> None:
        self.step += count

    def set_postfix(self, **values: Any) -> None:
        if self.quiet:
            return
        rate = (self.step - self.start_step) / max(time.perf_counter() - self.start, 1e-9)
        extra = " ".join(f"{name}={value}" for name, value in values.items() if name != "refresh")
        line = f"[titanax] step {self.step}/{self.total} ({rate:.3g} steps/s) {extra}".rstrip()
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """Nothing to clear."""


def _progress_bar(enabled: bool, total: int, initial: int, loggers: Sequence[Any]) -> Any:
    from tqdm.auto import tqdm

    show = enabled and jax.process_index() == 0
    if show and not sys.stderr.isatty():
        return _PlainProgress(total, initial, quiet=any(isinstance(logger, Basic) for logger in loggers))
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not show)


def fit(
    engine: Engine,
    step_fn: StepFn,
    data: Any,
    *,
    steps: int,
    state: TrainState | None,
    eval_fn: Callable[[TrainState], Mapping[str, Any]] | None = None,
    eval_every: int | None = None,
    log_every: int | None = None,
    progress: bool = True,
    resume: bool = False,
    tokens_per_sample: int | None = None,
    profile: Profile | None = None,
) -> TrainState:
    """Train ``state`` with ``step_fn`` on ``data`` until ``engine.host_step == steps``.

    - ``data``: a ``tx.data.ArrayLoader`` (or anything with ``.batch(position)``), a
      function ``position -> batch``, or an iterable of batches. Loaders and
      functions resume exactly; an iterable is advanced past the batches a
      restored run already used.
    - ``steps``: the total number of training steps, counting those before a resume.
    - ``eval_fn(state) -> metrics``: run every ``eval_every`` steps and after the last;
      its metrics are logged with an ``eval_`` prefix and kept in ``engine.eval_history``.
    - ``log_every``: how often metrics, step time (``step_time_s``), ``samples_per_s``
      and, with ``tokens_per_sample``, ``tokens_per_s`` reach the loggers (default:
      the smallest ``every`` of the engine's loggers, else 100).
    - ``progress``: show a progress bar (process 0 only).
    - ``resume``: restore the newest complete checkpoint first, if there is one.
    - ``profile``: a :class:`~titanax.runtime.profile.Profile`: trace those steps with ``jax.profiler``.
    """
    from titanax.runtime.step_fn import StepFn

    if not isinstance(step_fn, StepFn):
        raise TrainingError.single(
            "TX720",
            f"fit() trains a @tx.step_fn, got {type(step_fn).__name__}",
            "decorate the training step with @tx.step_fn",
        )
    if not isinstance(state, TrainState) or state.engine is not engine:
        raise TrainingError.single(
            "TX720",
            "fit() needs a state made by this engine's create_state",
            "call state = engine.create_state(params) first, then engine.fit(step, data, steps=..., state=state)",
        )
    if any(leaf.is_deleted() for leaf in jax.tree.leaves(state)):
        raise TrainingError.single(
            "TX720",
            "fit() was given a state whose arrays a step has already consumed (steps donate their input state)",
            "pass the state the last step or fit() returned: state = engine.fit(..., state=state)",
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise TrainingError.single("TX720", f"fit(steps={steps!r}) must be a non-negative integer", "e.g. steps=1000")
    _positive("eval_every", eval_every, optional=True)
    _positive("log_every", log_every, optional=True)
    _positive("tokens_per_sample", tokens_per_sample, optional=True)
    if profile is not None and not isinstance(profile, Profile):
        raise TrainingError.single(
            "TX720",
            f"fit(profile=...) takes a tx.Profile, got {type(profile).__name__}",
            'profile=tx.Profile("runs/trace", first=10)',
        )
    if eval_every is not None and eval_fn is None:
        raise TrainingError.single("TX720", "fit(eval_every=...) was given without an eval_fn", "pass eval_fn=...")
    if resume and engine.checkpoint is None:
        raise TrainingError.single(
            "TX720",
            "fit(resume=True) needs a checkpoint directory to resume from",
            "build the Engine with checkpoint=tx.Checkpoint('runs/ckpt', every=500)",
        )
    if log_every is None:
        log_every = min((logger.every for logger in engine.loggers), default=100)
    resumed_from = None
    if engine.checkpoint is not None:
        engine.checkpointer.acquire()  # one writer per directory: another run writing there is TX707
    if resume and engine.checkpointer.latest_step() is not None:
        state = engine.restore(state)
        resumed_from = engine.data_position
        for logger in engine.loggers:
            # File loggers append after the rows up to the restored step instead of starting over.
            if hasattr(logger, "resume"):
                logger.resume(engine.host_step)
    elif engine.checkpoint is not None and (later := engine.checkpointer.steps_of_other_runs(engine.host_step)):
        raise CheckpointError.single(
            "TX707",
            f"{engine.checkpointer.directory} already holds checkpoints of another run (steps {later[:5]}); "
            "this run would mix its checkpoints with them",
            "pass resume=True to continue that run, or give tx.Checkpoint a new directory",
        )

    next_batch = _batch_source(data, skip=resumed_from or 0, engine=engine)
    watch = _LossWatch(engine)
    bar = _progress_bar(progress, steps, min(engine.host_step, steps), engine.loggers)
    window_start, window_steps, window_examples = time.perf_counter(), 0, 0
    previous: Any = None
    window = ProfileWindow(profile)
    try:
        while engine.host_step < steps:
            batch = next_batch(engine.data_position)
            engine.data_position += 1
            before = engine.host_step
            window.before_step(before + 1)
            state, metrics = step_fn.run(state, batch)
            window.after_step(before + 1, metrics)
            if engine.host_step == before:
                raise TrainingError.single(
                    "TX720",
                    f"fit() was given {getattr(step_fn, '__name__', 'a step')}, which never calls "
                    "state.apply_gradients, so training would never advance",
                    "pass the training step to fit(); run evaluation steps through eval_fn",
                )
            # At most two steps in flight: the host prepares the next batch while the devices run
            # this step, but never queues more. A deep queue buys nothing, holds batches in device
            # memory, and on XLA's CPU client can starve a collective's rendezvous of threads.
            jax.block_until_ready(previous)
            previous = metrics
            engine.last_state = state
            step = engine.host_step
            window_steps += 1
            window_examples += _examples(batch)
            watch.add(step, metrics)
            bar.update(1)
            last = step >= steps
            if step % log_every == 0 or last:
                jax.block_until_ready(metrics)
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                watch.check()
                scalars = host_scalars(metrics)
                rate = learning_rate(state.opt_state)
                if rate is not None and "learning_rate" not in scalars:
                    scalars.update(host_scalars({"learning_rate": rate}))  # the rate this step's update used
                scalars["step_time_s"] = elapsed / window_steps
                scalars["samples_per_s"] = window_examples / elapsed
                if tokens_per_sample:
                    scalars["tokens_per_s"] = window_examples * tokens_per_sample / elapsed
                # Each logger still keeps its own interval; the last step reaches all of them.
                engine.log(scalars, step, force=last)
                shown = {"loss": f"{scalars['loss']:.4g}"} if "loss" in scalars else {}
                bar.set_postfix(refresh=False, **shown)
            if eval_fn is not None and ((eval_every and step % eval_every == 0) or last):
                watch.check()
                results = {f"eval_{name}": value for name, value in host_scalars(eval_fn(state)).items()}
                engine.eval_history.append((step, results))
                engine.log(results, step, force=True)
            if engine.checkpoint is not None and (step % engine.checkpoint.every == 0 or last):
                watch.check()  # never save a state that a non-finite loss has already spoiled
                _save_checked(engine, state, step, watch)
            if step % log_every == 0 or last:
                window_start, window_steps, window_examples = time.perf_counter(), 0, 0
        watch.check()
    except BaseException as stopped:
        bar.close()
        window.stop()  # a trace that was running is written, up to where training stopped
        # Let pending saves finish, but report the error that stopped training, not theirs.
        if engine._checkpointer is not None:
            try:
                engine._checkpointer.wait()
            except KeyboardInterrupt:
                unfinished = engine._checkpointer.pending_steps()
                stopped.add_note(
                    "titanax: interrupted again while checkpoint step(s) "
                    f"{unfinished or '?'} were being written; an unfinished step is never read, and its "
                    "temporary files are removed when a run next writes to that directory"
                )
            except Exception:  # noqa: BLE001 - the error that stopped training is the one to report
                pass
        raise
    bar.close()
    window.stop()  # a last step before the profile's last one (steps < last) still ends the trace
    if engine._checkpointer is not None:
        engine._checkpointer.wait()
    return state
