"""``annotate-payloads``: record how many bytes, of which dtypes, each collective moves.

The plan alone does not know parameter shapes; the runtime runs this pass once
it has traced a step, giving each of Titanax's collective nodes the ``(dtype,
bytes)`` its emitted collectives carried in the trace. The pass converts them to
what the target backend moves (XLA:CPU runs bfloat16 collectives in float32,
:mod:`titanax.ir.backend`), so the IR states the bytes of the compiled program.
By hand, ``annotate-payloads{gradients=4096,metrics=4}`` sets bytes per operand kind.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from titanax.errors import PlanError
from titanax.ir import CollectiveNode, PlanIR, wire_payload
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["AnnotatePayloads"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class AnnotatePayloads(Pass):
    """Set ``payload_bytes`` (and ``dtypes``) on collectives, by node id from a trace or by operand kind."""

    name = "annotate-payloads"
    operand_bytes: tuple[tuple[str, int], ...] = ()
    """``(operand, bytes)`` pairs, e.g. ``(("gradients", 4096), ("metrics", 4))``."""
    node_payloads: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    """``(node id, ((dtype, bytes), ...))``: what the trace found emitted for each node, per execution."""

    @classmethod
    def from_options(cls, options: dict[str, str]) -> AnnotatePayloads:
        """``annotate-payloads{gradients=4096,metrics=4}``: bytes per operand."""
        pairs = []
        for operand, value in options.items():
            if not value.isdigit():
                raise PlanError.single(
                    "TX220",
                    f"annotate-payloads option {operand}={value!r} is not a byte count",
                    "write annotate-payloads{gradients=4096,metrics=4}",
                )
            pairs.append((operand, int(value)))
        return cls(operand_bytes=tuple(pairs))

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Fill in payload sizes."""
        sizes = dict(self.operand_bytes)
        by_node = dict(self.node_payloads)
        for node_id, node in list(ir.items(CollectiveNode)):
            if node_id in by_node:
                dtypes, payload = wire_payload(by_node[node_id], ctx.target.platform)
                ir.replace(node_id, replace(node, payload_bytes=payload, dtypes=dtypes))
            elif node.operand in sizes:
                ir.replace(node_id, replace(node, payload_bytes=sizes[node.operand]))
