"""Build the initial plan IR from the front end's ``MeshSpec`` and ``Plan``.

Both front ends (Python objects and ``.tx`` files) arrive here as the same
objects, so equivalent plans give identical IR. The builder records what the
user wrote, nothing more: names that do not resolve are kept as names
(validation passes report them), and sizes left to inference stay ``-1`` until
the ``infer-mesh-shape`` pass fills them in. Source locations, when the plan
came from a file, are copied onto the nodes so that passes can point at them.
"""

from __future__ import annotations

from titanax.frontend import DP, PP, TP, MeshSpec, Plan, Precision
from titanax.ir.graph import PlanIR
from titanax.ir.nodes import (
    ActivationsNode,
    AxisNode,
    CollectiveNode,
    DataParallelNode,
    EdgeKind,
    FullyShardedNode,
    MeshNode,
    Node,
    PipelineParallelNode,
    PrecisionNode,
    ShardRuleNode,
    StageNode,
    TensorParallelNode,
)

__all__ = ["add_required_collective", "build_ir", "connect_over_axes"]


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


def add_required_collective(ir: PlanIR, owner_id: str, node: CollectiveNode) -> str:
    """Add ``node`` as ``collective.NAME``, required by the dimension ``owner_id``, over its axes."""
    node_id = ir.add(f"collective.{node.name}", node)
    ir.connect(owner_id, node_id, EdgeKind.REQUIRES)
    connect_over_axes(ir, node_id, node)
    return node_id


def _add(ir: PlanIR, node_id: str, node: Node) -> str:
    ir.add(node_id, node)
    connect_over_axes(ir, node_id, node)
    return node_id


def _build_mesh(ir: PlanIR, mesh: MeshSpec) -> None:
    devices = MeshNode(
        devices=_mesh_devices_label(mesh), device_count=mesh.requested_device_count, location=mesh.location
    )
    ir.add("mesh", devices)
    locations = mesh.axis_locations or (None,) * len(mesh.axes)
    for position, (name, size, location) in enumerate(zip(mesh.axes, mesh.shape, locations, strict=True)):
        # A repeated name gets a unique id so check-mesh can report it instead of the builder crashing.
        node_id = f"axis.{name}" if f"axis.{name}" not in ir else f"axis.{name}.{position}"
        ir.add(node_id, AxisNode(name=name, size=size, position=position, location=location))
        ir.connect("mesh", node_id, EdgeKind.HAS_AXIS)


def _build_data_parallel(ir: PlanIR, dp: DP) -> None:
    _add(ir, "dp", DataParallelNode(axes=dp.axes, accumulate_steps=dp.accumulate_steps, location=dp.location))


def _build_tensor_parallel(ir: PlanIR, tp: TP) -> None:
    node = TensorParallelNode(
        axes=tp.axes, sequence_parallel=tp.sequence_parallel, weight_layout=tp.weight_layout, location=tp.location
    )
    _add(ir, "tp", node)
    for index, rule in enumerate(tp.rules):
        if isinstance(rule.layout, str):
            node = ShardRuleNode(pattern=rule.pattern, role=rule.layout, axes=tp.axes, location=rule.location)
        else:
            named = [
                a
                for entry in rule.layout
                if entry is not None
                for a in (entry if isinstance(entry, tuple) else (entry,))
            ]
            node = ShardRuleNode(
                pattern=rule.pattern, role="spec", spec=rule.layout, axes=tuple(named), location=rule.location
            )
        rule_id = _add(ir, f"rule.tp.{index}", node)
        ir.connect("tp", rule_id, EdgeKind.CONTAINS)


def _build_pipeline(ir: PlanIR, pp: PP) -> None:
    dim = PipelineParallelNode(
        axes=pp.axes,
        microbatches=pp.microbatches,
        schedule=pp.schedule,
        blocks=pp.blocks_entry,
        balance_tolerance=float(pp.balance_tolerance),
        virtual_stages=pp.virtual_stages,
        remat=pp.remat,
        table=pp.table,
        location=pp.location,
    )
    _add(ir, "pp", dim)
    previous = None
    for index, stage in enumerate(pp.stages or ()):
        stage_id = ir.add(f"stage.{index}", StageNode(index=index, layers=stage.layers, location=stage.location))
        ir.connect("pp", stage_id, EdgeKind.CONTAINS)
        if previous is not None:
            ir.connect(previous, stage_id, EdgeKind.NEXT)
        previous = stage_id


def _build_precision(ir: PlanIR, precision: Precision) -> None:
    ir.add(
        "precision",
        PrecisionNode(
            params=precision.params,
            compute=precision.compute,
            output=precision.output,
            loss_scaling=precision.loss_scaling,
            loss_scale_init=float(precision.loss_scale_init),
            loss_scale_growth_interval=precision.loss_scale_growth_interval,
            location=precision.location,
        ),
    )


def build_ir(mesh: MeshSpec, plan: Plan) -> PlanIR:
    """Return the unvalidated IR for ``mesh`` and ``plan``: the mesh, then one helper per dimension."""
    ir = PlanIR()
    _build_mesh(ir, mesh)
    if plan.data_parallel is not None:
        _build_data_parallel(ir, plan.data_parallel)
    if plan.fully_sharded is not None:
        fsdp = plan.fully_sharded
        _add(
            ir,
            "fsdp",
            FullyShardedNode(
                axes=fsdp.axes,
                stage=fsdp.stage,
                min_size=fsdp.min_size,
                reshard_after_forward=fsdp.reshard_after_forward,
                accumulate_steps=fsdp.accumulate_steps,
                rules=tuple((rule.pattern, rule.dim) for rule in fsdp.rules),
                location=fsdp.location,
            ),
        )
    if plan.tensor_parallel is not None:
        _build_tensor_parallel(ir, plan.tensor_parallel)
    if plan.pipeline_parallel is not None:
        _build_pipeline(ir, plan.pipeline_parallel)
    if plan.precision is not None:
        _build_precision(ir, plan.precision)
    if plan.activations is not None:
        ir.add("activations", ActivationsNode(remat=plan.activations.remat, location=plan.activations.location))
    # Parameters no rule matches are replicated; this lowest-precedence rule says so explicitly.
    _add(ir, "rule.default", ShardRuleNode(pattern="**", role="replicated"))
    return ir
