"""``check-pipeline``: the schedule, microbatches and stages of pipeline parallelism fit together."""

from __future__ import annotations

from dataclasses import dataclass

from titanax.frontend import REMAT_POLICIES, SCHEDULES, LayerRange, parse_layer
from titanax.frontend.bounds import MAX_MICROBATCHES, shown
from titanax.ir import PipelineParallelNode, PlanIR, StageNode
from titanax.passes.base import Pass, PassContext, register_pass
from titanax.passes.check_mesh import resolved_axis_size
from titanax.passes.check_parallel_axes import suggest

__all__ = ["CheckPipeline"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class CheckPipeline(Pass):
    """Reject an unknown schedule (TX216), fewer than one microbatch or more than 2**16 (TX217), a stage
    count other than the pipeline axis size (TX212), fewer microbatches than stages
    under 1F1B, interleaved or ZB-H1 (TX213), an empty stage (TX214), a layer in two stages (TX215), a
    malformed layer reference (TX218), an unknown remat policy (TX234) and chunks per device
    other than at least 2 under ``interleaved`` and 1 elsewhere (TX235)."""

    name = "check-pipeline"
    validates = True

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Report every pipeline problem into ``ctx``."""
        for _, dim in list(ir.items(PipelineParallelNode)):
            if dim.schedule not in SCHEDULES:
                ctx.error(
                    "TX216",
                    f"unknown pipeline schedule {dim.schedule!r}",
                    suggest(dim.schedule, list(SCHEDULES), "schedules"),
                    dim.location,
                )
            if not 1 <= dim.microbatches <= MAX_MICROBATCHES:
                ctx.error(
                    "TX217",
                    f"pipeline microbatches = {shown(dim.microbatches)}; it must be from 1 to 2**16 = {MAX_MICROBATCHES}",
                    "use at least as many microbatches as stages (a few times as many keeps the pipeline full)",
                    dim.location,
                )
            stages = ir.stages()
            axis_size = resolved_axis_size(ir, ctx, dim.axes[0])
            if stages and axis_size is not None and len(stages) != axis_size:
                ctx.error(
                    "TX212",
                    f"the pipeline has {len(stages)} stages but axis '{dim.axes[0]}' has size {axis_size}",
                    f"give exactly {axis_size} stages (one per device along '{dim.axes[0]}'), or resize the axis to {len(stages)}",
                    dim.location,
                )
            stage_count = len(stages) or axis_size
            if stage_count is not None and 1 <= dim.microbatches <= MAX_MICROBATCHES < dim.microbatches * stage_count:
                ctx.error(
                    "TX217",
                    f"pipeline microbatches = {dim.microbatches} over {stage_count} stages make a schedule of "
                    f"{dim.microbatches * stage_count} forward steps; at most 2**16 = {MAX_MICROBATCHES} fit",
                    f"use at most {max(1, MAX_MICROBATCHES // stage_count)} microbatches, or fewer stages",
                    dim.location,
                )
            if dim.remat not in REMAT_POLICIES:
                ctx.error(
                    "TX234",
                    f"unknown remat policy {dim.remat!r}",
                    suggest(dim.remat, list(REMAT_POLICIES), "remat policies"),
                    dim.location,
                )
            if dim.schedule == "user" and dim.table is None:
                ctx.error(
                    "TX216",
                    "schedule user runs a table the plan names, and this plan names none",
                    'add table = "my.sched" (the format titanax compile --schedule prints), or pick a built schedule',
                    dim.location,
                )
            interleaved = dim.schedule == "interleaved"
            if dim.schedule == "user":
                if not 1 <= dim.virtual_stages <= 64:
                    ctx.error(
                        "TX235",
                        f"virtual_stages = {shown(dim.virtual_stages)}: a table may use 1 to 64 chunks per device",
                        "write virtual_stages = the number of chunks the table's cells use (F3.1 is chunk 1)",
                        dim.location,
                    )
            elif (interleaved and not 2 <= dim.virtual_stages <= 64) or (not interleaved and dim.virtual_stages != 1):
                ctx.error(
                    "TX235",
                    f"virtual_stages = {shown(dim.virtual_stages)} with schedule {dim.schedule}: "
                    + (
                        "interleaved needs 2 to 64 chunks per device" if interleaved else "only interleaved runs chunks"
                    ),
                    "write schedule = interleaved with virtual_stages = 2"
                    if not interleaved
                    else "write virtual_stages = 2 (each device holds two chunks of blocks)",
                    dim.location,
                )
            lockstep = dim.schedule in ("1f1b", "interleaved", "zbh1")
            if lockstep and stage_count is not None and 1 <= dim.microbatches < stage_count:
                ctx.error(
                    "TX213",
                    f"{dim.schedule} needs at least as many microbatches as stages: {dim.microbatches} microbatches, "
                    f"{stage_count} stages",
                    f"use microbatches >= {stage_count} (a multiple of {stage_count} keeps the pipeline full), or schedule gpipe",
                    dim.location,
                )
            self._check_layers(stages, ctx)

    @staticmethod
    def _check_layers(stages: list[StageNode], ctx: PassContext) -> None:
        placed: list[tuple[LayerRange, str, int]] = []
        for stage in stages:
            if not stage.layers:
                ctx.error(
                    "TX214",
                    f"pipeline stage {stage.index} has no layers",
                    "every stage must run at least one layer; move some layers into it or drop a stage",
                    stage.location,
                )
            for text in stage.layers:
                layer = parse_layer(text)
                if layer is None or layer.empty:
                    ctx.error(
                        "TX218",
                        f"stage {stage.index} names layer {text!r}, which is not NAME, NAME[i] or NAME[i:j] with i < j",
                        'write "embed", "block[3]" or "block[0:6]" (layers 0 to 5)',
                        stage.location,
                    )
                    continue
                for other, other_text, other_stage in placed:
                    if layer.overlaps(other):
                        where = "twice in that stage" if other_stage == stage.index else f"also in stage {other_stage}"
                        ctx.error(
                            "TX215",
                            f"stage {stage.index} runs {text!r}, which overlaps {other_text!r} {where}",
                            "each layer must belong to exactly one stage; split the ranges so they do not overlap",
                            stage.location,
                        )
                placed.append((layer, text, stage.index))
