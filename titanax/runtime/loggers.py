"""Loggers: where step metrics go. The Engine calls each one after a step."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Protocol, TextIO

__all__ = ["Basic", "Logger"]


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


class Basic:
    """Print metrics as one line per logged step, e.g. ``[titanax] step 10 | loss=0.123456``.

    Example: ``tx.loggers.Basic(every=10)``; writes to stderr unless ``stream`` is given.
    """

    def __init__(self, every: int = 1, stream: TextIO | None = None, precision: int = 6):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"Basic(every={every!r}) must be a positive integer")
        self.every = every
        self.precision = precision
        self._stream = stream

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write one line for ``step``."""
        values = " ".join(f"{name}={value:.{self.precision}g}" for name, value in sorted(metrics.items()))
        stream = self._stream or sys.stderr
        stream.write(f"[titanax] step {step} | {values}\n")
        stream.flush()

    def close(self) -> None:
        """Flush the stream."""
        (self._stream or sys.stderr).flush()
