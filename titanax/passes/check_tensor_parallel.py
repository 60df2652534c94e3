"""``check-tensor-parallel``: every shard rule has a known layout over the TP axes, once."""

from __future__ import annotations

from dataclasses import dataclass

from titanax.frontend import ROLES
from titanax.ir import PlanIR, ShardRuleNode, TensorParallelNode
from titanax.passes.base import Pass, PassContext, register_pass
from titanax.passes.check_parallel_axes import did_you_mean, suggest

__all__ = ["CheckTensorParallel"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class CheckTensorParallel(Pass):
    """Reject an unknown role (TX208), a pattern given twice (TX209), an axis twice in
    one partition spec (TX210), and a spec over an axis that is not a TP axis (TX211)
    or not in the mesh (TX201)."""

    name = "check-tensor-parallel"
    validates = True

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Report every problem of the tensor-parallel rules into ``ctx``."""
        known = [axis.name for axis in ir.axes()]
        for dim_id, dim in list(ir.items(TensorParallelNode)):
            first_seen: dict[str, ShardRuleNode] = {}
            for _, rule in ir.shard_rules(dim_id):
                earlier = first_seen.setdefault(rule.pattern, rule)
                if earlier is not rule:
                    where = f" (first at line {earlier.location.line})" if earlier.location else ""
                    ctx.error(
                        "TX209",
                        f"TP rule pattern {rule.pattern!r} is given twice{where}",
                        "keep one rule per pattern; merge or delete the other",
                        rule.location,
                    )
                if rule.role == "spec":
                    self._check_spec(rule, dim, known, ctx)
                elif rule.role not in ROLES:
                    ctx.error(
                        "TX208",
                        f"TP rule {rule.pattern!r} has unknown role {rule.role!r}",
                        suggest(rule.role, list(ROLES), "roles", "or give a partition spec such as (none, model)"),
                        rule.location,
                    )

    @staticmethod
    def _check_spec(rule: ShardRuleNode, dim: TensorParallelNode, known: list[str], ctx: PassContext) -> None:
        repeated = sorted({a for a in rule.axes if rule.axes.count(a) > 1})
        if repeated:
            ctx.error(
                "TX210",
                f"partition spec {rule.spec} of TP rule {rule.pattern!r} uses axis {repeated} more than once",
                "an axis can split only one dimension of a parameter; name it once",
                rule.location,
            )
        for axis in dict.fromkeys(rule.axes):
            if axis not in known:
                ctx.error(
                    "TX201",
                    f"partition spec of TP rule {rule.pattern!r} uses axis '{axis}', which is not in the mesh",
                    did_you_mean(axis, known),
                    rule.location,
                )
            elif axis not in dim.axes:
                ctx.error(
                    "TX211",
                    f"partition spec of TP rule {rule.pattern!r} splits over '{axis}', which is not a tensor-parallel axis {dim.axes}",
                    f"tensor-parallel rules may only split parameters over {dim.axes}; replace '{axis}' with one of them or none",
                    rule.location,
                )
