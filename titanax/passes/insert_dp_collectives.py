"""``insert-dp-collectives``: declare the collectives data parallelism needs each step.

Data parallelism needs exactly two: one all-reduce (mean) of the gradients over
the DP axes, once per step whatever the accumulation, and one all-reduce (mean)
of the step's metrics. The lowering emits exactly the collectives declared here.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import CollectiveNode, DataParallelNode, Operand, PlanIR
from titanax.ir.build import add_required_collective
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["InsertDPCollectives", "GRADIENT_SYNC", "METRIC_REDUCE"]

GRADIENT_SYNC = "grad_sync"
METRIC_REDUCE = "metric_reduce"


@register_pass
@dataclass(frozen=True, kw_only=True)
class InsertDPCollectives(Pass):
    """Add the gradient and metric all-reduces of each data-parallel dimension."""

    name = "insert-dp-collectives"
    requires = ("check-mesh", "check-parallel-axes", "infer-mesh-shape")

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Add two collective nodes per DP dimension."""
        for dim_id, dim in list(ir.items(DataParallelNode)):
            group = ir.group_size(dim.axes)
            for name, operand in ((GRADIENT_SYNC, Operand.GRADIENTS), (METRIC_REDUCE, Operand.METRICS)):
                node = CollectiveNode(
                    name=name,
                    op="all-reduce",
                    reduction="mean",
                    axes=dim.axes,
                    operand=operand,
                    origin="lowering",
                    group_size=group,
                )
                add_required_collective(ir, dim_id, node)
