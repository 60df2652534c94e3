"""Run passes in order, with one callback hook around each pass.

Verification after every pass, printing after every pass and per-pass timing
are all callbacks on the same hook (:func:`verify_after_each`,
:func:`print_after_each`, :class:`PassTimings`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from titanax.errors import PlanError, TitanaxError
from titanax.ir import PlanIR, print_ir, verify_ir
from titanax.passes.base import DEFAULT_TARGET, Pass, PassContext, Target

__all__ = [
    "PassEvent",
    "PassPipeline",
    "PassTimings",
    "missing_prerequisites",
    "print_after_each",
    "verify_after_each",
]


@dataclass(frozen=True, kw_only=True)
class PassEvent:
    """What the hook receives after a pass ran: the pass, the IR it left, and how long it took."""

    pass_: Pass
    ir: PlanIR
    seconds: float


PassCallback = Callable[[PassEvent], None]


def verify_after_each(event: PassEvent) -> None:
    """Callback: verify the IR's structural invariants after the pass."""
    verify_ir(event.ir, after=event.pass_.name)


def print_after_each(stream: TextIO) -> PassCallback:
    """Callback factory: print the IR to ``stream`` after each pass, headed by the pass name."""

    def _print(event: PassEvent) -> None:
        stream.write(f"// ----- IR after {event.pass_.name} -----\n")
        stream.write(print_ir(event.ir))

    return _print


@dataclass
class PassTimings:
    """Callback that records how long each pass took, in run order."""

    seconds: list[tuple[str, float]] = field(default_factory=list)

    def __call__(self, event: PassEvent) -> None:
        """Record the pass's name and duration."""
        self.seconds.append((event.pass_.name, event.seconds))


def missing_prerequisites(passes: Sequence[Pass], already_run: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """``(pass, missing)`` for every pass of ``passes`` whose ``requires`` neither ran already
    nor come earlier in ``passes``."""
    done = set(already_run)
    found = []
    for pass_ in passes:
        missing = [name for name in pass_.requires if name not in done]
        if missing:
            found.append((pass_.name, missing))
        done.add(pass_.name)
    return found


class PassPipeline:
    """An ordered list of passes and the callbacks to run after each one.

    Validation errors accumulate across consecutive validation passes and are
    raised together, as one :class:`TitanaxError`, before the next transform
    pass (or at the end), so a user sees every problem of a plan at once.
    """

    def __init__(self, passes: Sequence[Pass], *, callbacks: Sequence[PassCallback] = (verify_after_each,)):
        self.passes = tuple(passes)
        self.callbacks = tuple(callbacks)

    def run(self, ir: PlanIR, target: Target = DEFAULT_TARGET) -> PlanIR:
        """Run every pass on a copy of ``ir`` and return the result.

        Every pass's prerequisites must have run on ``ir`` already (an earlier pipeline) or come
        earlier in this one; otherwise nothing runs (TX207).
        """
        self._check_prerequisites(ir)
        ir = ir.copy()
        if verify_after_each in self.callbacks:
            verify_ir(ir, after="build")
        ctx = PassContext(target=target)
        for index, pass_ in enumerate(self.passes):
            start = time.perf_counter()
            pass_.run(ir, ctx)
            ir.passes_run = (*ir.passes_run, pass_.name)
            event = PassEvent(pass_=pass_, ir=ir, seconds=time.perf_counter() - start)
            for callback in self.callbacks:
                callback(event)
            next_validates = index + 1 < len(self.passes) and self.passes[index + 1].validates
            if ctx.diagnostics and not next_validates:
                raise TitanaxError.from_diagnostics(ctx.diagnostics)
        return ir

    def _check_prerequisites(self, ir: PlanIR) -> None:
        missing = missing_prerequisites(self.passes, ir.passes_run)
        if missing:
            name, needed = missing[0]
            raise PlanError.single(
                "TX207",
                f"pass '{name}' needs {needed} to run before it, and neither this pipeline nor the IR it was given "
                "ran them",
                f"run {', '.join(needed)} first (titanax.passes.compile_plan runs the default passes)",
            )
