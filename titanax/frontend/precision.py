"""``Precision``: which dtype parameters are stored in, computed in, and returned in."""

from __future__ import annotations

from dataclasses import dataclass, field

from titanax.errors import Location, PlanError

__all__ = ["DTYPES", "Precision"]

DTYPES = ("float32", "bfloat16", "float16", "float64")
"""Floating dtypes a precision policy may name."""


@dataclass(frozen=True, kw_only=True)
class Precision:
    """A mixed-precision policy: master weights in ``params``, math in ``compute``, results in ``output``.

    Integer arrays (token ids, labels) are never cast. Example::

        tx.Precision(params="float32", compute="bfloat16", output="float32")
    """

    params: str = "float32"
    """Dtype of the stored parameters and optimizer state."""
    compute: str = "float32"
    """Dtype parameters and floating inputs are cast to inside the step."""
    output: str = "float32"
    """Dtype of the loss and the metrics the step returns."""
    location: Location | None = field(default=None, compare=False, repr=False)
    """Where the policy was written, when it came from a ``.tx`` file."""

    def __post_init__(self) -> None:
        for name in ("params", "compute", "output"):
            if not isinstance(getattr(self, name), str):
                raise PlanError.single(
                    "TX204",
                    f"Precision({name}={getattr(self, name)!r}) must be a dtype name",
                    f"use one of {DTYPES}",
                )
