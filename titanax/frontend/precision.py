"""``Precision``: which dtype parameters are stored in, computed in, and returned in."""

from __future__ import annotations

from dataclasses import dataclass, field

from titanax.errors import Diagnostic, Location, PlanError
from titanax.frontend.bounds import MAX_GROWTH_INTERVAL, shown

__all__ = ["DTYPES", "Precision"]

DTYPES = ("float32", "bfloat16", "float16", "float64")
"""Floating dtypes a precision policy may name."""


@dataclass(frozen=True, kw_only=True)
class Precision:
    """A mixed-precision policy: master weights in ``params``, math in ``compute``, results in ``output``.

    Integer arrays (token ids, labels) are never cast. When ``params`` or
    ``compute`` is ``float16`` the step applies dynamic loss scaling: the loss is
    multiplied by a scale before differentiation (use ``tx.value_and_grad``), the
    gradients are divided by it, a step whose gradients overflow is skipped and
    halves the scale, and ``loss_scale_growth_interval`` finite steps in a row
    double it. Example::

        tx.Precision(params="float32", compute="bfloat16", output="float32")
        tx.Precision(compute="float16", loss_scale_init=2.0**15, loss_scale_growth_interval=2000)
    """

    params: str = "float32"
    """Dtype of the stored parameters and optimizer state."""
    compute: str = "float32"
    """Dtype parameters and floating inputs are cast to inside the step."""
    output: str = "float32"
    """Dtype of the loss and the metrics the step returns."""
    loss_scale_init: float = 2.0**15
    """Starting loss scale under float16 (ignored otherwise)."""
    loss_scale_growth_interval: int = 2000
    """Finite steps in a row after which the float16 loss scale doubles."""
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
        init, interval = self.loss_scale_init, self.loss_scale_growth_interval
        if isinstance(init, bool) or not isinstance(init, int | float) or not 1.0 <= init <= 2.0**24:
            self._invalid(
                f"loss_scale_init={shown(init)}",
                "a number between 1 and 2**24",
                "the usual start is 2**15 = 32768; the scale adapts from there",
            )
        if isinstance(interval, bool) or not isinstance(interval, int) or not 1 <= interval <= MAX_GROWTH_INTERVAL:
            self._invalid(
                f"loss_scale_growth_interval={shown(interval)}",
                f"an integer from 1 to 2**31 - 1 = {MAX_GROWTH_INTERVAL} (the step counter is an int32)",
                "the usual value is 2000 finite steps between doublings",
            )

    def _invalid(self, setting: str, requirement: str, hint: str) -> None:
        raise PlanError(
            Diagnostic(
                code="TX204",
                message=f"Precision({setting}) must be {requirement}",
                hint=hint,
                location=self.location,
            )
        )

    @property
    def loss_scaling(self) -> str:
        """``"dynamic"`` when parameters or the math are float16, else ``"none"``."""
        return "dynamic" if "float16" in (self.params, self.compute) else "none"
