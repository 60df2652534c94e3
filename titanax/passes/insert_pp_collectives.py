"""``insert-pp-collectives``: declare the collectives pipeline parallelism needs each step.

- ``pp_activations``: a collective-permute along the pipeline axis every tick,
  device ``s`` to ``s + 1`` (the activations of the forward just run, zeros if none),
  and ``p - 1`` to 0 when interleaved chunks go round the devices;
- ``pp_cotangents``: a collective-permute every tick, ``s`` to ``s - 1`` (and 0 to ``p - 1``);
- ``pp_replicated_grads``: one all-reduce (sum) over the pipeline axis of the
  gradients of parameters every stage holds whole (embedding, head...), which
  only the first or last stage computes;
- ``pp_loss``: one all-reduce (sum) of the loss, which only the last stage computes.

The two permutes run inside the loop over ticks: each node says so (``cadence =
tick``, ``executions`` = the schedule's tick count) and carries its
``(source, target)`` pairs, which the lowering passes to ``ppermute`` as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import Cadence, CollectiveNode, Operand, PipelineParallelNode, PlanIR
from titanax.ir.build import add_required_collective
from titanax.ir.schedule import schedule_from_ir
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["InsertPPCollectives", "PP_COLLECTIVES"]

PP_COLLECTIVES = (
    ("pp_activations", "collective-permute", None, Operand.STAGE_ACTIVATIONS),
    ("pp_cotangents", "collective-permute", None, Operand.STAGE_COTANGENTS),
    ("pp_replicated_grads", "all-reduce", "sum", Operand.REPLICATED_GRADIENTS),
    ("pp_loss", "all-reduce", "sum", Operand.PIPELINE_LOSS),
)
"""``(name, op, reduction, operand)`` of each collective a pipeline step performs."""


def _pairs(operand: Operand, stages: int, wrap: bool) -> tuple[tuple[int, int], ...]:
    # Interleaved chunks go round the devices: the last device's chunk c feeds device 0's chunk c + 1.
    if operand == Operand.STAGE_ACTIVATIONS:
        return tuple((s, s + 1) for s in range(stages - 1)) + (((stages - 1, 0),) if wrap else ())
    return tuple((s, s - 1) for s in range(1, stages)) + (((0, stages - 1),) if wrap else ())


@register_pass
@dataclass(frozen=True, kw_only=True)
class InsertPPCollectives(Pass):
    """Add the activation and cotangent permutes and the gradient and loss all-reduces of pipelining."""

    name = "insert-pp-collectives"
    requires = ("build-schedule",)

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Add four collective nodes per pipeline dimension."""
        schedule = schedule_from_ir(ir)
        for dim_id, dim in list(ir.items(PipelineParallelNode)):
            group = ir.group_size(dim.axes)
            for name, op, reduction, operand in PP_COLLECTIVES:
                per_tick = op == "collective-permute"
                if per_tick and group == 1:
                    continue  # one stage has no neighbour to send to
                node = CollectiveNode(
                    name=name,
                    op=op,
                    reduction=reduction,
                    axes=dim.axes,
                    operand=operand,
                    origin="lowering",
                    group_size=group,
                    permutation=_pairs(operand, group, dim.virtual_stages > 1) if per_tick else (),
                    cadence=Cadence.TICK if per_tick else Cadence.STEP,
                    executions=schedule.ticks if per_tick and schedule is not None else 1,
                )
                add_required_collective(ir, dim_id, node)
