"""``insert-traced-collectives``: list in the IR the collectives the user's step performs.

The lowering inserts only the collectives the plan declares (gradient and
metric sync, pipeline permutes, the overflow count). Everything else a step
communicates comes from the user's code: ``tx.collectives``, the layers of
``titanax.nn``, raw ``lax`` calls, and the reductions JAX's autodiff adds for
them (a tensor-parallel layer's backward all-reduce). The runtime finds those by
walking the step's jaxpr and hands them to this pass, so the IR lists every
collective of the compiled step, with how many times each runs per step (the
trip counts of the loops around it) and the bytes and dtypes it moves on the
target backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import Cadence, CollectiveNode, Operand, PlanIR, TracedCollective, wire_payload
from titanax.ir.build import connect_over_axes
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["InsertTracedCollectives", "TracedCollective"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class InsertTracedCollectives(Pass):
    """Add a collective node (origin ``user``) for every collective traced from the step function."""

    name = "insert-traced-collectives"
    requires = ("infer-mesh-shape",)
    collectives: tuple[TracedCollective, ...] = ()
    """The user's collectives, in trace order (records with a ``node_id`` are Titanax's and skipped)."""

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Add ``collective.user.N`` nodes in trace order."""
        user = [traced for traced in self.collectives if traced.node_id is None]
        for index, traced in enumerate(user):
            dtypes, payload = wire_payload(traced.payload, ctx.target.platform)
            node = CollectiveNode(
                name=f"{traced.primitive} at {traced.where}",
                op=traced.op,
                reduction=traced.reduction,
                axes=traced.axes,
                operand=Operand.COTANGENTS if traced.backward else Operand.ACTIVATIONS,
                origin="user",
                group_size=ir.group_size(traced.axes),
                permutation=traced.permutation,
                cadence=Cadence.TRACED,
                executions=traced.executions,
                dtypes=dtypes,
                payload_bytes=payload,
            )
            node_id = ir.add(f"collective.user.{index}", node)
            connect_over_axes(ir, node_id, node)
