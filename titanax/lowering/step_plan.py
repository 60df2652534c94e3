"""The step as the IR describes it: a frozen description built once, the only place lowering reads the plan.

:class:`StepPlan` gathers from the compiled IR everything the step program
needs: the axes of each parallel dimension, accumulation and pipeline settings,
the precision policy, and Titanax's own collectives, found by their operand
kind (:class:`~titanax.ir.Operand`) and origin, never by a name.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import Operand, PlanIR, Schedule, schedule_from_ir
from titanax.ir.stage_split import stage_split
from titanax.lowering.collectives import IRCollective, lowering_collective, lowering_collectives
from titanax.lowering.fully_sharded import FSDPPlan

__all__ = ["PipelinePlan", "StepPlan"]


@dataclass(frozen=True, kw_only=True)
class PipelinePlan:
    """What the pipeline program needs: its axis, schedule table, blocks entry and collectives."""

    axis: str
    schedule: Schedule
    blocks: str
    balance_tolerance: float
    remat: str
    """What each stage's forward keeps for its backward (``none``, ``dots`` or ``full``)."""
    stage_layers: tuple[int, ...] | None
    """Layers each device runs when the stages differ (the blocks are then stored padded); ``None``: all equal."""
    activations: IRCollective | None
    """Device ``s`` to ``s + 1`` every tick (and ``p - 1`` to 0 when interleaved; ``None`` with one stage)."""
    cotangents: IRCollective | None
    """Device ``s`` to ``s - 1`` every tick (and 0 to ``p - 1`` when interleaved; ``None`` with one stage)."""
    replicated_gradients: IRCollective
    """Sum over the pipeline axis of the gradients of parameters every stage holds whole."""
    loss: IRCollective
    """Sum over the pipeline axis of the loss the last stage computes."""


@dataclass(frozen=True, kw_only=True)
class StepPlan:
    """The plan of one step, read from the IR once."""

    mesh_axes: tuple[str, ...]
    dp_axes: tuple[str, ...]
    """Every axis the batch is split over: the data-parallel axes, then the FSDP axes."""
    dp_size: int
    tp_axes: tuple[str, ...]
    sequence_parallel: bool
    accumulate_steps: int
    microbatches: int
    """Pipeline microbatches per step (1 without pipeline parallelism)."""
    pipeline: PipelinePlan | None
    compute_dtype: str | None
    output_dtype: str | None
    loss_scaling: bool
    """Dynamic loss scaling (a float16 policy)."""
    loss_scale_growth_interval: int
    gradient_sync: tuple[IRCollective, ...]
    metric_reduce: tuple[IRCollective, ...]
    nonfinite_count: tuple[IRCollective, ...]
    state_guard: tuple[IRCollective, ...] = ()
    """Sums the non-finite-state flag over the axes that split the state (``nonfinite="skip"``)."""
    remat: str = "none"
    """The remat policy of the stacked blocks: the pipeline's, else the plan's activations policy."""
    fsdp: FSDPPlan | None = None
    """Fully sharded data parallelism's gathers, scatters and per-parameter dimensions, or ``None``."""

    @classmethod
    def from_ir(cls, ir: PlanIR) -> StepPlan:
        """Read the step's plan from the compiled IR."""
        tp, pp, policy = ir.tensor_parallel(), ir.pipeline_parallel(), ir.precision()
        dp_axes = ir.batch_axes()
        pipeline = None
        if pp is not None:
            split = stage_split(ir)
            pipeline = PipelinePlan(
                axis=pp.axes[0],
                schedule=schedule_from_ir(ir),
                blocks=pp.blocks,
                balance_tolerance=pp.balance_tolerance,
                remat=ir.remat(),
                stage_layers=split.counts if split is not None and not split.even else None,
                activations=lowering_collective(ir, Operand.STAGE_ACTIVATIONS),
                cotangents=lowering_collective(ir, Operand.STAGE_COTANGENTS),
                replicated_gradients=lowering_collective(ir, Operand.REPLICATED_GRADIENTS),
                loss=lowering_collective(ir, Operand.PIPELINE_LOSS),
            )
        return cls(
            mesh_axes=tuple(axis.name for axis in ir.axes()),
            dp_axes=dp_axes,
            dp_size=ir.group_size(dp_axes),
            tp_axes=tp.axes if tp else (),
            sequence_parallel=bool(tp and tp.sequence_parallel),
            accumulate_steps=ir.accumulate_steps(),
            microbatches=pp.microbatches if pp else 1,
            pipeline=pipeline,
            compute_dtype=policy.compute if policy else None,
            output_dtype=policy.output if policy else None,
            loss_scaling=bool(policy and policy.loss_scaling == "dynamic"),
            loss_scale_growth_interval=policy.loss_scale_growth_interval if policy else 0,
            gradient_sync=lowering_collectives(ir, Operand.GRADIENTS),
            metric_reduce=lowering_collectives(ir, Operand.METRICS),
            nonfinite_count=lowering_collectives(ir, Operand.NONFINITE_COUNT),
            state_guard=lowering_collectives(ir, Operand.STATE_NONFINITE),
            remat=ir.remat(),
            fsdp=FSDPPlan.from_ir(ir),
        )
