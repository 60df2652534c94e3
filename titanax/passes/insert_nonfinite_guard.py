"""``insert-nonfinite-guard``: declare the all-reduce a skipped non-finite update needs under split state.

With ``Engine(nonfinite="skip")`` a step whose updated parameters or optimizer
state hold an Inf or a NaN keeps the old ones. Every device must take that
decision alike, but under tensor or pipeline parallelism each device checks only
its own shards. So the lowering sums a 0/1 flag (this device's shards are not
finite) over the tensor and pipeline axes: one 4-byte all-reduce,
``state_finite``. The Engine runs this pass after the default ones when it skips
non-finite steps; the state of a pure DP plan is whole on every device and needs none.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import Operand, PipelineParallelNode, PlanIR, TensorParallelNode
from titanax.passes.base import Pass, PassContext, register_pass
from titanax.passes.insert_precision_collectives import add_split_count_sum

__all__ = ["STATE_FINITE", "InsertNonfiniteGuard"]

STATE_FINITE = "state_finite"
"""Name of the collective that sums the non-finite-state flag over the split axes."""


@register_pass
@dataclass(frozen=True, kw_only=True)
class InsertNonfiniteGuard(Pass):
    """Add the all-reduce of the non-finite-state flag that skipping non-finite updates needs, where
    the state is split over tensor or pipeline axes."""

    name = "insert-nonfinite-guard"
    requires = ("check-parallel-axes", "infer-mesh-shape")

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Add ``collective.state_finite``, required by the tensor (else pipeline) dimension."""
        owner = next((dim_id for dim_id, _ in ir.items((TensorParallelNode, PipelineParallelNode))), None)
        if owner is not None:
            add_split_count_sum(ir, owner, STATE_FINITE, Operand.STATE_NONFINITE)
