"""``build-schedule``: write the pipeline's schedule table into the IR.

One ``schedule_op`` node per cell that runs something (``forward`` or
``backward`` of a microbatch on a stage at a tick), ``next`` edges in tick order
along each stage, and a ``runs`` edge to the stage. Stages the plan left
implicit get ``stage`` nodes here, one per index of the pipeline axis.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import EdgeKind, PipelineParallelNode, PlanIR, ScheduleOpNode, StageNode
from titanax.ir.schedule import build_schedule
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["BuildSchedule"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class BuildSchedule(Pass):
    """Add the GPipe or 1F1B schedule table of the pipeline as schedule_op nodes."""

    name = "build-schedule"
    requires = ("check-pipeline", "infer-mesh-shape")

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Add stage nodes if missing, then one node per scheduled op."""
        for dim_id, dim in list(ir.items(PipelineParallelNode)):
            stages = ir.axis_sizes()[dim.axes[0]]
            if not ir.stages():
                for index in range(stages):
                    stage_id = ir.add(f"stage.{index}", StageNode(index=index, layers=()))
                    ir.connect(dim_id, stage_id, EdgeKind.CONTAINS)
                    if index:
                        ir.connect(f"stage.{index - 1}", stage_id, EdgeKind.NEXT)
            table = build_schedule(dim.schedule, stages, dim.microbatches)
            previous: dict[int, str] = {}
            for op in table.ops:
                node = ScheduleOpNode(
                    tick=op.tick,
                    stage=op.stage,
                    op="forward" if op.kind == "F" else "backward",
                    microbatch=op.microbatch,
                )
                node_id = ir.add(f"schedule.{op.stage}.{op.tick}", node)
                ir.connect(node_id, f"stage.{op.stage}", EdgeKind.RUNS)
                if op.stage in previous:
                    ir.connect(previous[op.stage], node_id, EdgeKind.NEXT)
                previous[op.stage] = node_id
