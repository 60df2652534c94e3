"""``StepReport``: what tracing a step found, returned once and applied to the IR once.

A report holds the facts the plan alone cannot know: whether the step applies
gradients (evaluation steps do not), every collective in its jaxpr (Titanax's own,
checked against their nodes, and the user's), and under pipeline parallelism the
forward FLOPs of each stage. The runtime turns it into IR annotations
(:meth:`StepReport.node_payloads`, :meth:`StepReport.user_collectives`).
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import CollectiveNode, PlanIR, TracedCollective

__all__ = ["StepReport"]


@dataclass(frozen=True, kw_only=True)
class StepReport:
    """The facts one trace of a step established."""

    applies_update: bool
    """Whether the step calls ``apply_gradients`` (a training step) or not (an evaluation step)."""
    collectives: tuple[TracedCollective, ...]
    """Every collective in the step's jaxpr, in trace order."""
    stage_flops: tuple[float, ...] = ()
    """Forward FLOPs per microbatch of each pipeline stage (empty without pipeline parallelism)."""

    def user_collectives(self) -> tuple[TracedCollective, ...]:
        """The collectives the user's code performs (outside Titanax's own scopes)."""
        return tuple(c for c in self.collectives if c.node_id is None)

    def node_payloads(self, ir: PlanIR) -> tuple[tuple[str, tuple[tuple[str, int], ...]], ...]:
        """``(node id, ((dtype, bytes), ...))`` per execution for every collective Titanax inserted;
        a node the step never emitted (no metrics, no whole parameters under PP) moves nothing."""
        totals: dict[str, dict[str, int]] = {
            node_id: {} for node_id, node in ir.items(CollectiveNode) if node.origin == "lowering"
        }
        for record in self.collectives:
            if record.node_id in totals:
                sizes = totals[record.node_id]
                for dtype, size in record.payload:
                    sizes[dtype] = sizes.get(dtype, 0) + size
        return tuple((node_id, tuple(sorted(sizes.items()))) for node_id, sizes in totals.items())
