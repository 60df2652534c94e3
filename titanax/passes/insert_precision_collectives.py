"""``insert-precision-collectives``: declare the all-reduce dynamic loss scaling needs.

Under float16 the step skips an update whose gradients overflowed, and every
device must take the same decision. After the DP gradient sync the gradients
are equal across data-parallel replicas, but tensor-parallel shards and pipeline
stages hold different pieces of them. So the lowering counts the non-finite
gradient values on each device and sums that count over the tensor and pipeline
axes: one 4-byte all-reduce, ``grad_finite``. A pure DP plan needs none.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import CollectiveNode, Operand, PlanIR
from titanax.ir.build import add_required_collective
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["GRAD_FINITE", "InsertPrecisionCollectives", "add_split_count_sum", "split_state_axes"]

GRAD_FINITE = "grad_finite"
"""Name of the collective that sums the non-finite gradient count over the split axes."""


def split_state_axes(ir: PlanIR) -> tuple[str, ...]:
    """The tensor-, pipeline- and FSDP axes: along them, devices hold different pieces of the
    parameters, gradients or optimizer state (data-parallel replicas hold the same)."""
    tp, pp, fsdp = ir.tensor_parallel(), ir.pipeline_parallel(), ir.fully_sharded()
    return (tp.axes if tp else ()) + (pp.axes if pp else ()) + (fsdp.axes if fsdp else ())


def add_split_count_sum(ir: PlanIR, owner_id: str, name: str, operand: Operand) -> None:
    """Add ``collective.NAME``, required by ``owner_id``: an all-reduce sum of a per-device int32
    count over :func:`split_state_axes`, so every device reaches the same verdict. Nothing when
    the state is not split."""
    axes = split_state_axes(ir)
    if not axes:
        return
    node = CollectiveNode(
        name=name,
        op="all-reduce",
        reduction="sum",
        axes=axes,
        operand=operand,
        origin="lowering",
        group_size=ir.group_size(axes),
    )
    add_required_collective(ir, owner_id, node)


@register_pass
@dataclass(frozen=True, kw_only=True)
class InsertPrecisionCollectives(Pass):
    """Add the non-finite-gradient count all-reduce of dynamic loss scaling, where gradients are split."""

    name = "insert-precision-collectives"
    requires = ("check-precision", "infer-mesh-shape")

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Add ``collective.grad_finite`` when the policy scales the loss and gradients differ across devices."""
        policy = ir.precision()
        if policy is None or policy.loss_scaling != "dynamic":
            return
        add_split_count_sum(ir, "precision", GRAD_FINITE, Operand.NONFINITE_COUNT)
