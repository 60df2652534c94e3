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
    """Resolve every axis size and the mesh's device count (run after ``check-mesh``)."""

    name = "infer-mesh-shape"

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Replace ``-1`` sizes and set the mesh device count."""
        count = available_device_count(ir, ctx)
        fixed = math.prod(a.size for a in ir.axes() if a.size != UNRESOLVED_SIZE)
        for node_id, axis in list(ir.items(AxisNode)):
            if axis.size == UNRESOLVED_SIZE and count is not None:
                ir.replace(node_id, replace(axis, size=count // fixed))
        resolved = math.prod(a.size for a in ir.axes())
        mesh_id, mesh = next(ir.items(MeshNode))
        ir.replace(mesh_id, replace(mesh, device_count=resolved))
