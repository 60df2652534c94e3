"""Titanax's error types: every mistake a user can make has a class and a code.

Errors are raised before any XLA compilation wherever possible. Each carries a
stable code (``TX101``), a message that names the offending values, and a hint
that says what to change. Validation passes collect :class:`Diagnostic` records
and raise them together, so one run reports every problem at once.

This module imports nothing from JAX: the front end, the IR and the passes use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "Diagnostic",
    "Location",
    "TitanaxError",
    "MeshError",
    "PlanError",
    "BatchError",
    "OptimizerError",
    "StepFnError",
    "IRVerificationError",
    "ParseError",
    "TrainingError",
    "CheckpointError",
    "NonFiniteError",
    "DistributedError",
    "error_class_for_code",
]


_SNIPPET_WIDTH = 100
"""Longest stretch of a source line shown under an error; longer lines are cut around the span."""


@dataclass(frozen=True, kw_only=True)
class Location:
    """A span in a plan file: path, 1-based line and column, and its length on that line."""

    path: str
    line: int
    column: int
    length: int = 1
    """Characters the span covers on its first line (the caret underline's width)."""
    line_text: str | None = field(default=None, compare=False, repr=False)
    """The whole source line, so that errors can show it with a caret under the span."""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"

    def snippet(self) -> str:
        """The source line and a caret line under the span, gutter-numbered; empty without the text."""
        if self.line_text is None:
            return ""
        text, start = self.line_text, self.column - 1
        width = max(1, min(self.length, _SNIPPET_WIDTH // 2))
        # Cut very long lines (a minified or binary file) to a window around the span.
        lo = max(0, min(start - _SNIPPET_WIDTH // 2, len(text) - _SNIPPET_WIDTH))
        shown = text[lo : lo + _SNIPPET_WIDTH]
        prefix = "..." if lo > 0 else ""
        suffix = "..." if lo + _SNIPPET_WIDTH < len(text) else ""
        # Control characters and tabs would shift the caret; show them as one placeholder each.
        shown = "".join(c if c.isprintable() else "?" for c in shown)
        gutter = " " * len(str(self.line))
        caret = " " * (len(prefix) + start - lo) + "^" * width
        return f"{gutter} |\n{self.line} | {prefix}{shown}{suffix}\n{gutter} | {caret}"


@dataclass(frozen=True, kw_only=True)
class Diagnostic:
    """One problem found in a plan: a code, what is wrong, and how to fix it."""

    code: str
    """Stable error code such as ``TX103``; ``docs/errors.md`` lists them all."""
    message: str
    """What is wrong, naming the offending values."""
    hint: str = ""
    """What to change so the problem goes away."""
    location: Location | None = None
    """Source position of the offending element, when it came from a file."""

    def render(self) -> str:
        """Return ``[path:line:col: ]error[CODE]: message``, the source line with a caret
        under the span when the text is known, and the hint."""
        where = f"{self.location}: " if self.location else ""
        text = f"{where}error[{self.code}]: {self.message}"
        snippet = self.location.snippet() if self.location else ""
        if snippet:
            text += "\n" + snippet
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class TitanaxError(Exception):
    """Base class of every error Titanax raises for bad user input.

    ``diagnostics`` holds each problem found; ``code`` is the first one's code.
    """

    code_prefix: ClassVar[str] = "TX0"

    def __init__(self, diagnostics: Diagnostic | Sequence[Diagnostic]):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = (diagnostics,)
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        if not self.diagnostics:
            raise ValueError("TitanaxError needs at least one diagnostic")
        super().__init__("\n".join(d.render() for d in self.diagnostics))

    @property
    def code(self) -> str:
        """The code of the first diagnostic."""
        return self.diagnostics[0].code

    @classmethod
    def single(cls, code: str, message: str, hint: str = "") -> TitanaxError:
        """Build an error of this class holding one diagnostic."""
        return cls(Diagnostic(code=code, message=message, hint=hint))

    @staticmethod
    def from_diagnostics(diagnostics: Iterable[Diagnostic]) -> TitanaxError:
        """Build the error for a batch of diagnostics: the class their codes share, or
        :class:`TitanaxError` itself when they span several classes."""
        diagnostics = tuple(diagnostics)
        classes = {error_class_for_code(d.code) for d in diagnostics}
        return (classes.pop() if len(classes) == 1 else TitanaxError)(diagnostics)


class MeshError(TitanaxError):
    """The mesh is malformed or does not fit the devices (codes TX1xx)."""

    code_prefix = "TX1"


class PlanError(TitanaxError):
    """A parallel plan refers to missing axes or combines dimensions wrongly (TX2xx)."""

    code_prefix = "TX2"


class BatchError(TitanaxError):
    """A batch cannot be split as the plan requires (TX3xx)."""

    code_prefix = "TX3"


class OptimizerError(TitanaxError):
    """The optimizer is not an optax gradient transformation (TX4xx)."""

    code_prefix = "TX4"


class StepFnError(TitanaxError):
    """A step function misuses the training state (TX5xx)."""

    code_prefix = "TX5"


class ParseError(TitanaxError):
    """A ``.tx`` plan file cannot be read or does not follow the language (TX6xx)."""

    code_prefix = "TX6"


class TrainingError(TitanaxError):
    """The training run cannot go on as configured: engine and fit options, data (TX7xx)."""

    code_prefix = "TX7"


class CheckpointError(TrainingError):
    """A checkpoint cannot be saved or restored: missing, foreign, corrupt, or for another model (TX70x)."""

    code_prefix = "TX70"


class NonFiniteError(TrainingError):
    """The loss became NaN or Inf (TX71x)."""

    code_prefix = "TX71"


class DistributedError(TrainingError):
    """Multi-process setup failed: initialisation order, launcher environment, process data (TX74x)."""

    code_prefix = "TX74"


class IRVerificationError(TitanaxError):
    """The plan IR broke a structural invariant: a bug in a pass, not in user input (TX9xx)."""

    code_prefix = "TX9"


_CLASSES: tuple[type[TitanaxError], ...] = (
    MeshError,
    PlanError,
    BatchError,
    OptimizerError,
    StepFnError,
    ParseError,
    # The subclasses of TrainingError own longer prefixes, so they are looked up first.
    CheckpointError,
    NonFiniteError,
    DistributedError,
    TrainingError,
    IRVerificationError,
)


def error_class_for_code(code: str) -> type[TitanaxError]:
    """Return the error class that owns ``code`` (by its ``TXn`` prefix)."""
    for cls in _CLASSES:
        if code.startswith(cls.code_prefix):
            return cls
    return TitanaxError
