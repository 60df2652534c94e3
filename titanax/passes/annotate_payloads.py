"""``annotate-payloads``: record how many bytes each collective moves per step.

The plan alone does not know parameter shapes; the runtime runs this pass once
it has traced a step, so that the IR states the bytes the compiled step moves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from titanax.errors import PlanError
from titanax.ir import CollectiveNode, PlanIR
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["AnnotatePayloads"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class AnnotatePayloads(Pass):
    """Set ``payload_bytes`` on every collective whose operand appears in ``operand_bytes``."""

    name = "annotate-payloads"
    operand_bytes: tuple[tuple[str, int], ...] = ()
    """``(operand, bytes)`` pairs, e.g. ``(("gradients", 4096), ("metrics", 4))``."""

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
        for node_id, node in list(ir.items(CollectiveNode)):
            if node.operand in sizes:
                ir.replace(node_id, replace(node, payload_bytes=sizes[node.operand]))
