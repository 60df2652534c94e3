"""What a pass is: a small frozen dataclass with a ``name`` and a ``run`` method.

A pass's options are its fields. Validation passes only report
:class:`~titanax.errors.Diagnostic` records into the context; transform passes
rewrite the IR in place (the pipeline hands them a private copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from titanax.errors import Diagnostic, Location, PlanError
from titanax.ir import PlanIR

__all__ = ["Pass", "PassContext", "Target", "PASS_REGISTRY", "register_pass"]


@dataclass(frozen=True, kw_only=True)
class Target:
    """What the plan will run on, as far as the runtime knows it (no JAX objects)."""

    device_count: int | None = None
    """Devices available to the mesh; ``None`` when compiling without a runtime."""
    platform: str | None = None
    """``cpu``, ``gpu`` or ``tpu``, when known."""


@dataclass(kw_only=True)
class PassContext:
    """State shared by the passes of one pipeline run."""

    target: Target
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(self, code: str, message: str, hint: str = "", location: Location | None = None) -> None:
        """Record a user error; the pipeline raises all of them together."""
        self.diagnostics.append(Diagnostic(code=code, message=message, hint=hint, location=location))


@dataclass(frozen=True, kw_only=True)
class Pass:
    """Base class of every pass."""

    name: ClassVar[str]
    """Name used by ``--passes`` and in printed output."""
    validates: ClassVar[bool] = False
    """True for passes that only report errors and never change the IR."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Passes that must run earlier in the same pipeline (the rewrite relies on their checks)."""

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Check or rewrite ``ir`` in place."""
        raise NotImplementedError

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Pass:
        """Build the pass from ``name{key=value,...}`` options in a pipeline string.

        Passes without options reject any (TX220); passes with options override this.
        """
        if options:
            raise PlanError.single(
                "TX220", f"pass '{cls.name}' takes no options, got {sorted(options)}", f"write just {cls.name}"
            )
        return cls()


DEFAULT_TARGET = Target()
"""A target that knows nothing: no device count, no platform."""

PASS_REGISTRY: dict[str, type[Pass]] = {}
"""Every known pass, by name."""

P = TypeVar("P", bound=type[Pass])


def register_pass(cls: P) -> P:
    """Class decorator adding a pass to :data:`PASS_REGISTRY` under its ``name``."""
    if cls.name in PASS_REGISTRY:
        raise ValueError(f"two passes are named {cls.name!r}")
    PASS_REGISTRY[cls.name] = cls
    return cls
