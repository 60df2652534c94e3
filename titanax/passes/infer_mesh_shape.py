"""``infer-mesh-shape``: fill in the one axis size left as ``-1`` and the device count."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from titanax.ir import AxisNode, MeshNode, PlanIR
from titanax.ir.nodes import UNRESOLVED_SIZE
from titanax.passes.base import Pass, PassContext, register_pass
from titanax.passes.check_mesh import available_device_count

__all__ = ["InferMeshShape"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class InferMeshShape(Pass):
    """Resolve the axis size left as ``-1`` and the mesh's device count.

    Needs ``check-mesh`` first. With no device count to infer from (no ``devices``
    count in the mesh, no target), it reports TX107.
    """

    name = "infer-mesh-shape"
    requires = ("check-mesh",)

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Replace ``-1`` sizes and set the mesh device count."""
        count = available_device_count(ir, ctx)
        unresolved = [a.name for a in ir.axes() if a.size == UNRESOLVED_SIZE]
        if count is None and unresolved:
            axis = next(a for a in ir.axes() if a.size == UNRESOLVED_SIZE)
            ctx.error(
                "TX107",
                f"cannot infer the size of mesh axis '{axis.name}' without a device count",
                "give the axis an explicit size, or compile with a target device count (--devices N)",
                axis.location,
            )
            return
        fixed = math.prod(a.size for a in ir.axes() if a.size != UNRESOLVED_SIZE)
        for node_id, axis in list(ir.items(AxisNode)):
            if axis.size == UNRESOLVED_SIZE and count is not None and fixed > 0 and count % fixed == 0:
                ir.replace(node_id, replace(axis, size=count // fixed))
        sizes = [a.size for a in ir.axes()]
        if all(s >= 1 for s in sizes):
            mesh_id, mesh = next(ir.items(MeshNode))
            ir.replace(mesh_id, replace(mesh, device_count=math.prod(sizes)))
