"""``insert-traced-collectives``: list in the IR the collectives the user's step performs.

The lowering inserts only the collectives the plan declares (gradient and
metric sync). Everything else a step communicates comes from the user's code:
``tx.collectives``, the layers of ``titanax.nn``, raw ``lax`` calls, and the
reductions JAX's autodiff adds for them (a tensor-parallel layer's backward
all-reduce). The runtime finds those by walking the step's jaxpr and hands them
to this pass, so the IR lists every collective of the compiled step.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import CollectiveNode, PlanIR
from titanax.ir.build import connect_over_axes
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["InsertTracedCollectives", "TracedCollective"]


@dataclass(frozen=True, kw_only=True)
class TracedCollective:
    """One collective found in a traced step function."""

    op: str
    """XLA's name: ``all-reduce``, ``all-gather``, ``reduce-scatter``..."""
    reduction: str | None
    axes: tuple[str, ...]
    payload_bytes: int
    """Bytes of the result on one device."""
    primitive: str
    """The JAX primitive, e.g. ``psum_invariant``."""
    where: str
    """The user source line that caused it, e.g. ``titanax/nn/layers.py:88 (row_dense)``."""
    backward: bool
    """True when autodiff added it (the transpose of a forward operation)."""


@register_pass
@dataclass(frozen=True, kw_only=True)
class InsertTracedCollectives(Pass):
    """Add a collective node (origin ``user``) for every collective traced from the step function."""

    name = "insert-traced-collectives"
    requires = ("infer-mesh-shape",)
    collectives: tuple[TracedCollective, ...] = ()

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Add ``collective.user.N`` nodes in trace order."""
        for index, traced in enumerate(self.collectives):
            node = CollectiveNode(
                name=f"{traced.primitive} at {traced.where}",
                op=traced.op,
                reduction=traced.reduction,
                axes=traced.axes,
                operand="cotangents" if traced.backward else "activations",
                origin="user",
                group_size=ir.group_size(traced.axes),
                payload_bytes=traced.payload_bytes,
            )
            node_id = ir.add(f"collective.user.{index}", node)
            connect_over_axes(ir, node_id, node)
