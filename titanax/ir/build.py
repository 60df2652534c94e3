"""Build the initial plan IR from the front end's ``MeshSpec`` and ``Plan``.

The builder records what the user wrote, nothing more: names that do not
resolve are kept as names (validation passes report them), and sizes left to
inference stay ``-1`` until the ``infer-mesh-shape`` pass fills them in.
"""

from __future__ import annotations

from titanax.frontend import MeshSpec, Plan
from titanax.ir.graph import PlanIR
from titanax.ir.nodes import AxisNode, DataParallelNode, EdgeKind, MeshNode, Node, ShardRuleNode

__all__ = ["build_ir", "connect_over_axes"]


def _mesh_devices_label(spec: MeshSpec) -> str:
    if spec.device_list is not None:
        return "list"
    if isinstance(spec.devices, int):
        return "count"
    return spec.platform or "all"


def connect_over_axes(ir: PlanIR, node_id: str, node: Node) -> None:
    """Add an ``over`` edge from ``node_id`` to every axis it names that exists."""
    for axis_id in sorted({ir.axis_id(name) for name in node.axis_names} - {None}):
        ir.connect(node_id, axis_id, EdgeKind.OVER)


def _add(ir: PlanIR, node_id: str, node: Node) -> str:
    ir.add(node_id, node)
    connect_over_axes(ir, node_id, node)
    return node_id


def build_ir(mesh: MeshSpec, plan: Plan) -> PlanIR:
    """Return the unvalidated IR for ``mesh`` and ``plan``."""
    ir = PlanIR()
    ir.add("mesh", MeshNode(devices=_mesh_devices_label(mesh), device_count=mesh.requested_device_count))
    for position, (name, size) in enumerate(zip(mesh.axes, mesh.shape, strict=True)):
        # A repeated name gets a unique id so check-mesh can report it instead of the builder crashing.
        node_id = f"axis.{name}" if f"axis.{name}" not in ir else f"axis.{name}.{position}"
        ir.add(node_id, AxisNode(name=name, size=size, position=position))
        ir.connect("mesh", node_id, EdgeKind.HAS_AXIS)
    if plan.data_parallel is not None:
        dp = plan.data_parallel
        _add(ir, "dp", DataParallelNode(axes=dp.axes, accumulate_steps=dp.accumulate_steps))
    # Without tensor parallelism every parameter is replicated; the rule says so explicitly.
    _add(ir, "rule.default", ShardRuleNode(pattern="**", role="replicated"))
    return ir
