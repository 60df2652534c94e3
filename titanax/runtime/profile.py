"""``tx.Profile``: a ``jax.profiler`` trace of chosen training steps of ``engine.fit``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax

from titanax.errors import TrainingError

__all__ = ["Profile"]


@dataclass(frozen=True)
class Profile:
    """Trace training steps ``first`` to ``last`` (inclusive, counted as ``engine.host_step``) with
    ``jax.profiler`` into ``dir``, for TensorBoard's profile plugin or Perfetto. Example::

        engine.fit(train_step, data, steps=1000, profile=tx.Profile("runs/trace", first=100, last=102))

    The trace starts before step ``first`` is dispatched and stops once step ``last`` has
    finished on the devices, so it holds whole steps; pick steps after the first, which compiles.
    """

    dir: str | os.PathLike
    """Folder the trace is written under (``plugins/profile/<time>/<host>.xplane.pb``)."""
    first: int
    """First traced step (1 is the first step a fresh run takes)."""
    last: int | None = None
    """Last traced step; ``None``: only ``first``."""

    def __post_init__(self) -> None:
        last = self.first if self.last is None else self.last
        valid = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.first, last))
        if not valid or not 1 <= self.first <= last:
            raise TrainingError.single(
                "TX720",
                f"Profile(first={self.first!r}, last={self.last!r}) must be steps with 1 <= first <= last",
                'write tx.Profile("runs/trace", first=10, last=12)',
            )
        if not isinstance(self.dir, (str, os.PathLike)):
            raise TrainingError.single(
                "TX720", f"Profile(dir={self.dir!r}) must be a path", 'write tx.Profile("runs/trace", first=10)'
            )
        object.__setattr__(self, "last", last)


class ProfileWindow:
    """Starts and stops the trace around the steps a :class:`Profile` names, and always stops it."""

    def __init__(self, profile: Profile | None):
        self.profile = profile
        self.active = False

    def before_step(self, step: int) -> None:
        """Call with the number the next step will have."""
        if self.profile is not None and step == self.profile.first and not self.active:
            jax.profiler.start_trace(os.fspath(self.profile.dir))
            self.active = True

    def after_step(self, step: int, outputs: object) -> None:
        """Call with the step just dispatched and its outputs; stops the trace after ``last``."""
        if self.active and self.profile is not None and step >= self.profile.last:  # type: ignore[operator]
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        """Stop the trace if one is running (also when training stops early)."""
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
