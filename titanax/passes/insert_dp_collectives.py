"""``insert-dp-collectives``: declare the collectives data parallelism needs each step.

Data parallelism needs exactly two: one all-reduce (mean) of the gradients over
the DP axes, once per step whatever the accumulation, and one all-reduce (mean)
of the step's metrics over every axis the batch is split over (the DP axes, and
the FSDP axes beside them). A plan with FSDP and no DP gets the metric reduce
alone, required by the FSDP dimension; FSDP's gradient collectives depend on
the parameters and come from ``insert-fsdp-collectives``. The lowering emits
exactly the collectives declared here.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import CollectiveNode, DataParallelNode, FullyShardedNode, Operand, PlanIR
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
        """Add the gradient and metric all-reduces of the DP dimension (the metric one alone under FSDP only)."""
        batch_axes = ir.batch_axes()
        owners = list(ir.items(DataParallelNode)) or list(ir.items(FullyShardedNode))
        for dim_id, dim in owners:
            wanted = [(METRIC_REDUCE, Operand.METRICS, batch_axes)]
            if isinstance(dim, DataParallelNode):
                wanted.insert(0, (GRADIENT_SYNC, Operand.GRADIENTS, dim.axes))
            for name, operand, axes in wanted:
                node = CollectiveNode(
                    name=name,
                    op="all-reduce",
                    reduction="mean",
                    axes=axes,
                    operand=operand,
                    origin="lowering",
                    group_size=ir.group_size(axes),
                )
                add_required_collective(ir, dim_id, node)
