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

from titanax.errors import TitanaxError
from titanax.ir import PlanIR, print_ir, verify_ir
from titanax.passes.base import DEFAULT_TARGET, Pass, PassContext, Target

__all__ = ["PassEvent", "PassPipeline", "PassTimings", "print_after_each", "verify_after_each"]


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
        """Run every pass on a copy of ``ir`` and return the result."""
        ir = ir.copy()
        if verify_after_each in self.callbacks:
            verify_ir(ir, after="build")
        ctx = PassContext(target=target)
        for index, pass_ in enumerate(self.passes):
            start = time.perf_counter()
            pass_.run(ir, ctx)
            event = PassEvent(pass_=pass_, ir=ir, seconds=time.perf_counter() - start)
            for callback in self.callbacks:
                callback(event)
            next_validates = index + 1 < len(self.passes) and self.passes[index + 1].validates
            if ctx.diagnostics and not next_validates:
                raise TitanaxError.from_diagnostics(ctx.diagnostics)
        return ir
