"""``insert-pp-collectives``: declare the collectives pipeline parallelism needs each step.

- ``pp_activations``: a collective-permute along the pipeline axis every tick,
  stage ``s`` to ``s + 1`` (the activations of the forward just run, zeros if none);
- ``pp_cotangents``: a collective-permute every tick, ``s`` to ``s - 1``;
- ``pp_replicated_grads``: one all-reduce (sum) over the pipeline axis of the
  gradients of parameters every stage holds whole (embedding, head...), which
  only the first or last stage computes;
- ``pp_loss``: one all-reduce (sum) of the loss, which only the last stage computes.

The two permutes run inside the loop over ticks: ``2 (m + p - 1)`` times per step.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import CollectiveNode, PipelineParallelNode, PlanIR
from titanax.ir.build import add_required_collective
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["InsertPPCollectives", "PP_COLLECTIVES"]

PP_COLLECTIVES = (
    ("pp_activations", "collective-permute", None, "pipeline activations"),
    ("pp_cotangents", "collective-permute", None, "pipeline cotangents"),
    ("pp_replicated_grads", "all-reduce", "sum", "pipeline-replicated gradients"),
    ("pp_loss", "all-reduce", "sum", "pipeline loss"),
)
"""``(name, op, reduction, operand)`` of each collective a pipeline step performs."""


@register_pass
@dataclass(frozen=True, kw_only=True)
class InsertPPCollectives(Pass):
    """Add the activation and cotangent permutes and the gradient and loss all-reduces of pipelining."""

    name = "insert-pp-collectives"
    requires = ("build-schedule",)

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Add four collective nodes per pipeline dimension."""
        for dim_id, dim in list(ir.items(PipelineParallelNode)):
            group = ir.group_size(dim.axes)
            for name, op, reduction, operand in PP_COLLECTIVES:
                if op == "collective-permute" and group == 1:
                    continue  # one stage has no neighbour to send to
                node = CollectiveNode(
                    name=name,
                    op=op,
                    reduction=reduction,
                    axes=dim.axes,
                    operand=operand,
                    origin="lowering",
                    group_size=group,
                )
                add_required_collective(ir, dim_id, node)
