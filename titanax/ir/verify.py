"""Structural invariants of the plan IR, checked after every pass.

A failure here is a bug in a pass or a builder, never a user mistake: user
mistakes (an unknown axis, a wrong size) are reported by validation passes.
References by name that do not resolve are therefore allowed; references that
do resolve must be mirrored by edges, and edges must agree with the fields.
"""

from __future__ import annotations

import networkx as nx

from titanax.errors import Diagnostic, IRVerificationError
from titanax.ir.backend import DTYPE_BYTES
from titanax.ir.graph import PlanIR
from titanax.ir.nodes import (
    COLLECTIVE_OPS,
    EDGE_RULES,
    REDUCTIONS,
    UNRESOLVED_SIZE,
    AxisNode,
    Cadence,
    CollectiveNode,
    EdgeKind,
    MeshNode,
    Node,
    Operand,
    ParamNode,
    PipelineParallelNode,
    ScheduleOpNode,
    ShardRuleNode,
    StageNode,
    TensorParallelNode,
)

__all__ = ["verify_ir"]


def _problem(message: str) -> Diagnostic:
    return Diagnostic(code="TX901", message=message, hint="this is a Titanax bug; please report it with the IR dump")


def _check_edges(ir: PlanIR) -> list[Diagnostic]:
    problems = []
    for source, target, kind in ir.edges():
        pair = (ir.node(source).kind, ir.node(target).kind)
        if pair not in EDGE_RULES[kind]:
            problems.append(_problem(f"edge %{source} -{kind}-> %{target} joins {pair[0]} to {pair[1]}"))
    return problems


def _check_mesh_and_axes(ir: PlanIR) -> list[Diagnostic]:
    problems = []
    meshes = [node_id for node_id, _ in ir.items(MeshNode)]
    if len(meshes) != 1:
        return [_problem(f"the IR must have exactly one mesh node, found {len(meshes)}")]
    axes = list(ir.items(AxisNode))
    positions = sorted(axis.position for _, axis in axes)
    if positions != list(range(len(axes))):
        problems.append(_problem(f"axis positions must be 0..{len(axes) - 1}, found {positions}"))
    for node_id, axis in axes:
        if ir.sources(node_id, EdgeKind.HAS_AXIS) != meshes:
            problems.append(_problem(f"axis %{node_id} must belong to the mesh by one has_axis edge"))
        # Sizes below 1 are a user error that check-mesh reports; a non-integer is a builder bug.
        if not isinstance(axis.size, int):
            problems.append(_problem(f"axis %{node_id} has a non-integer size {axis.size!r}"))
    mesh = ir.mesh()
    if mesh.device_count is not None and mesh.device_count < 1:
        problems.append(_problem(f"mesh device_count must be positive, got {mesh.device_count}"))
    return problems


def _check_axis_references(ir: PlanIR, node_id: str, node: Node) -> list[Diagnostic]:
    expected = sorted({ir.axis_id(name) for name in node.axis_names} - {None})
    actual = ir.targets(node_id, EdgeKind.OVER)
    if expected != actual:
        return [_problem(f"%{node_id} names axes {node.axis_names} but its over edges reach {actual}")]
    return []


def _check_collective(ir: PlanIR, node_id: str, node: CollectiveNode) -> list[Diagnostic]:
    problems = []
    if node.op not in COLLECTIVE_OPS:
        problems.append(_problem(f"collective %{node_id} has unknown op {node.op!r}; known: {COLLECTIVE_OPS}"))
    if node.origin not in ("lowering", "user"):
        problems.append(_problem(f"collective %{node_id} has unknown origin {node.origin!r}"))
    if node.origin == "lowering" and not ir.sources(node_id, EdgeKind.REQUIRES):
        problems.append(
            _problem(f"collective %{node_id} was inserted by a pass but no dimension or policy requires it")
        )
    if node.op in ("all-reduce", "reduce-scatter") and node.reduction not in REDUCTIONS:
        problems.append(_problem(f"{node.op} %{node_id} has reduction {node.reduction!r}; known: {REDUCTIONS}"))
    sizes = ir.axis_sizes()
    if all(sizes.get(a, UNRESOLVED_SIZE) > 0 for a in node.axes):
        expected = ir.group_size(node.axes)
        if node.group_size != expected:
            problems.append(_problem(f"collective %{node_id} has group_size {node.group_size}, axes give {expected}"))
    return problems + _check_collective_types(ir, node_id, node, sizes)


def _check_collective_types(ir: PlanIR, node_id: str, node: CollectiveNode, sizes: dict[str, int]) -> list[Diagnostic]:
    """The typed attributes lowering reads: operand and cadence enums, permute pairs, runs per step, dtypes."""
    problems = []
    if not isinstance(node.operand, Operand):
        problems.append(_problem(f"collective %{node_id} has operand {node.operand!r}, not an Operand"))
    if not isinstance(node.cadence, Cadence):
        problems.append(_problem(f"collective %{node_id} has cadence {node.cadence!r}, not a Cadence"))
    if node.op == "collective-permute" and node.origin == "lowering":
        axis_size = sizes.get(node.axes[0], UNRESOLVED_SIZE) if len(node.axes) == 1 else UNRESOLVED_SIZE
        sources, targets = [s for s, _ in node.permutation], [t for _, t in node.permutation]
        if not node.permutation or len(set(sources)) != len(sources) or len(set(targets)) != len(targets):
            problems.append(_problem(f"permute %{node_id} needs (source, target) pairs, each end once"))
        elif axis_size > 0 and not all(0 <= i < axis_size for i in sources + targets):
            problems.append(_problem(f"permute %{node_id} pairs {node.permutation} leave axis size {axis_size}"))
    elif node.op != "collective-permute" and node.permutation:
        problems.append(_problem(f"{node.op} %{node_id} has permutation pairs; only a permute has them"))
    if node.executions is not None and node.executions < 1:
        problems.append(_problem(f"collective %{node_id} runs {node.executions} times per step"))
    if node.cadence == Cadence.STEP and node.executions != 1:
        problems.append(_problem(f"collective %{node_id} runs once per step but says executions={node.executions}"))
    if node.cadence == Cadence.TICK:
        ticks = 1 + max((op.tick for _, op in ir.items(ScheduleOpNode)), default=-1)
        if ticks and node.executions != ticks:
            problems.append(_problem(f"collective %{node_id} runs once per tick: {ticks} times, not {node.executions}"))
    unknown = [d for d in node.dtypes if d not in DTYPE_BYTES]
    if unknown or list(node.dtypes) != sorted(set(node.dtypes)):
        problems.append(_problem(f"collective %{node_id} has dtypes {node.dtypes}: known names, sorted, once each"))
    return problems


def _check_containment(ir: PlanIR) -> list[Diagnostic]:
    # Rules belong to a TP dimension (except the default rule) and stages to a PP dimension.
    problems = []
    for node_id, node in ir.items():
        owners = [ir.node(o) for o in ir.sources(node_id, EdgeKind.CONTAINS)]
        if isinstance(node, ShardRuleNode) and node_id != "rule.default":
            if len(owners) != 1 or not isinstance(owners[0], TensorParallelNode):
                problems.append(_problem(f"shard rule %{node_id} must be contained by one tensor-parallel dimension"))
        if isinstance(node, StageNode) and (len(owners) != 1 or not isinstance(owners[0], PipelineParallelNode)):
            problems.append(_problem(f"stage %{node_id} must be contained by one pipeline dimension"))
    for node_id, _ in ir.items(ParamNode):
        if len(ir.sources(node_id, EdgeKind.LAYS_OUT)) != 1:
            problems.append(_problem(f"param %{node_id} must be laid out by exactly one shard rule"))
    stages = ir.stages()
    if [s.index for s in stages] != list(range(len(stages))):
        problems.append(_problem(f"stage indices must be 0..{len(stages) - 1}, found {[s.index for s in stages]}"))
    return problems


def verify_ir(ir: PlanIR, *, after: str = "build") -> None:
    """Raise :class:`IRVerificationError` if ``ir`` breaks a structural invariant.

    ``after`` names the pass that just ran, so the message points at the culprit.
    """
    problems = _check_edges(ir) + _check_mesh_and_axes(ir) + _check_containment(ir)
    for node_id, node in ir.items():
        problems += _check_axis_references(ir, node_id, node)
        if isinstance(node, CollectiveNode):
            problems += _check_collective(ir, node_id, node)
    next_graph = ir.graph.edge_subgraph((s, t) for s, t, k in ir.edges(EdgeKind.NEXT))
    if not nx.is_directed_acyclic_graph(next_graph):
        problems.append(_problem("next edges between stages or schedule ops form a cycle"))
    if problems:
        prefixed = [
            Diagnostic(code=p.code, message=f"IR invalid after pass '{after}': {p.message}", hint=p.hint)
            for p in problems
        ]
        raise IRVerificationError(prefixed)
