"""``build-schedule``: write the pipeline's schedule table into the IR.

One ``schedule_op`` node per op (``forward``, ``backward`` or ``weight`` of a
microbatch on a chunk of a device at a tick), ``next`` edges in run order along
each device, and a ``runs`` edge to the stage. A built schedule's table comes
from :func:`~titanax.ir.schedule.build_schedule`; a ``user`` schedule's is read
from the plan's table file, and each node points at the cell it was written in. Stages the plan left
implicit get ``stage`` nodes here, one per index of the pipeline axis.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.errors import TitanaxError
from titanax.frontend.language.source import read_source
from titanax.frontend.schedule_table import parse_table
from titanax.ir import EdgeKind, PipelineParallelNode, PlanIR, ScheduleOpNode, StageNode
from titanax.ir.schedule import KIND_NAMES, Op, Schedule, build_schedule
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["BuildSchedule"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class BuildSchedule(Pass):
    """Add the pipeline's schedule table (GPipe, 1F1B, interleaved or ZB-H1) as schedule_op nodes."""

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
            locations = {}
            if dim.schedule == "user":
                try:
                    written = parse_table(read_source(dim.table or "", "schedule table"))
                except TitanaxError as err:
                    for d in err.diagnostics:
                        ctx.error(d.code, d.message, d.hint, d.location or dim.location)
                    continue
                for extra in sorted({o.stage for o in written if o.stage >= stages}):
                    where = next(o.location for o in written if o.stage == extra)
                    ctx.error(
                        "TX237",
                        f"the schedule table has a row for device {extra}, but pipeline axis '{dim.axes[0]}' has "
                        f"{stages} devices",
                        f"give one row per device, 0 to {stages - 1}",
                        where,
                    )
                written = tuple(o for o in written if o.stage < stages)
                ops = tuple(sorted(Op(o.tick, o.stage, o.kind, o.microbatch, o.chunk) for o in written))
                locations = {Op(o.tick, o.stage, o.kind, o.microbatch, o.chunk): o.location for o in written}
                table = Schedule("user", stages, dim.microbatches, ops, dim.virtual_stages)
            else:
                table = build_schedule(dim.schedule, stages, dim.microbatches, dim.virtual_stages)
            previous: dict[int, str] = {}
            for tick_stage_ops in (table.at(t, s) for s in range(stages) for t in range(table.ticks)):
                for op in tick_stage_ops:
                    node = ScheduleOpNode(
                        tick=op.tick,
                        stage=op.stage,
                        op=KIND_NAMES[op.kind],
                        microbatch=op.microbatch,
                        chunk=op.chunk,
                        location=locations.get(op),
                    )
                    # One op per device and tick keeps its short name; a tick running several names each by kind.
                    suffix = f".{op.kind}" if len(tick_stage_ops) > 1 else ""
                    node_id = ir.add(f"schedule.{op.stage}.{op.tick}{suffix}", node)
                    ir.connect(node_id, f"stage.{op.stage}", EdgeKind.RUNS)
                    if op.stage in previous:
                        ir.connect(previous[op.stage], node_id, EdgeKind.NEXT)
                    previous[op.stage] = node_id
