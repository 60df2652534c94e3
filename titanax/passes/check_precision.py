"""``check-precision``: the precision policy names dtypes Titanax can compute in."""

from __future__ import annotations

from dataclasses import dataclass

from titanax.frontend import DTYPES
from titanax.ir import PlanIR, PrecisionNode
from titanax.passes.base import Pass, PassContext, register_pass
from titanax.passes.check_parallel_axes import suggest

__all__ = ["CheckPrecision"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class CheckPrecision(Pass):
    """Reject a dtype that is not a floating type Titanax supports (TX219), and float16 master weights (TX233)."""

    name = "check-precision"
    validates = True

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Report every unknown dtype of the policy into ``ctx``."""
        for _, policy in list(ir.items(PrecisionNode)):
            for field_name in ("params", "compute", "output"):
                dtype = getattr(policy, field_name)
                if dtype not in DTYPES:
                    ctx.error(
                        "TX219",
                        f"precision {field_name} = {dtype!r} is not a supported floating dtype",
                        suggest(dtype, list(DTYPES), "dtypes"),
                        policy.location,
                    )
            if policy.params == "float16":
                # Unscaled float16 gradients and updates underflow: the small ones loss scaling
                # exists to keep would vanish in the master copy itself.
                ctx.error(
                    "TX233",
                    "precision params = float16: master weights in float16 lose the small updates that loss "
                    "scaling preserves",
                    "keep params = float32 (the default) and compute in float16",
                    policy.location,
                )
