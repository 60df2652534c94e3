"""``PlanIR``: a typed wrapper over a ``networkx.DiGraph``.

Node ids are strings (``"mesh"``, ``"axis.data"``, ``"collective.grad_sync"``);
each graph node stores its typed :class:`~titanax.ir.nodes.Node` under ``"node"``
and each edge its :class:`~titanax.ir.nodes.EdgeKind` under ``"kind"``. All
listings are sorted, so everything derived from them is deterministic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import TypeVar

import networkx as nx

from titanax.ir.nodes import (
    AxisNode,
    CollectiveNode,
    DataParallelNode,
    EdgeKind,
    MeshNode,
    Node,
    NodeKind,
    ParamNode,
    PipelineParallelNode,
    PrecisionNode,
    ShardRuleNode,
    StageNode,
    TensorParallelNode,
)

__all__ = ["PlanIR"]

N = TypeVar("N", bound=Node)

_KIND_ORDER = {kind: i for i, kind in enumerate(NodeKind)}


def _natural_key(node_id: str) -> tuple[object, ...]:
    # "stage.10" sorts after "stage.9": numbers in ids compare as numbers.
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", node_id))


class PlanIR:
    """The parallel plan as a graph of mesh axes, dimensions, rules, stages and collectives."""

    def __init__(self) -> None:
        self._graph = nx.DiGraph()

    # -- building ---------------------------------------------------------
    def add(self, node_id: str, node: Node) -> str:
        """Add ``node`` under ``node_id`` (which must be new) and return the id."""
        if node_id in self._graph:
            raise KeyError(f"IR already has a node {node_id!r}")
        self._graph.add_node(node_id, node=node)
        return node_id

    def replace(self, node_id: str, node: Node) -> None:
        """Swap the node stored under ``node_id`` for ``node``; edges are kept."""
        if node_id not in self._graph:
            raise KeyError(f"IR has no node {node_id!r}")
        self._graph.nodes[node_id]["node"] = node

    def connect(self, source: str, target: str, kind: EdgeKind) -> None:
        """Add an edge of ``kind`` from ``source`` to ``target`` (both must exist)."""
        for node_id in (source, target):
            if node_id not in self._graph:
                raise KeyError(f"IR has no node {node_id!r}")
        self._graph.add_edge(source, target, kind=kind)

    def copy(self) -> PlanIR:
        """Return an independent copy (nodes are immutable, so sharing them is safe)."""
        other = PlanIR()
        other._graph = self._graph.copy()
        return other

    # -- reading ----------------------------------------------------------
    @property
    def graph(self) -> nx.DiGraph:
        """A read-only view of the underlying graph, for analyses such as cycle checks."""
        return self._graph.copy(as_view=True)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._graph

    def node(self, node_id: str) -> Node:
        """Return the node stored under ``node_id``."""
        return self._graph.nodes[node_id]["node"]

    def ids(self) -> list[str]:
        """Every node id, ordered by node kind and then by id."""
        return sorted(self._graph, key=lambda i: (_KIND_ORDER[self.node(i).kind], _natural_key(i)))

    def items(self, node_type: type[N] = Node) -> Iterator[tuple[str, N]]:  # type: ignore[assignment]
        """Yield ``(id, node)`` for every node of ``node_type``, in :meth:`ids` order."""
        for node_id in self.ids():
            node = self.node(node_id)
            if isinstance(node, node_type):
                yield node_id, node

    def edges(self, kind: EdgeKind | None = None) -> list[tuple[str, str, EdgeKind]]:
        """Every edge ``(source, target, kind)``, sorted, optionally of one kind."""
        found = [(s, t, d["kind"]) for s, t, d in self._graph.edges(data=True) if kind is None or d["kind"] == kind]
        return sorted(found, key=lambda e: (_natural_key(e[0]), _natural_key(e[1]), e[2]))

    def targets(self, node_id: str, kind: EdgeKind) -> list[str]:
        """Ids reached from ``node_id`` by edges of ``kind``, sorted."""
        return sorted(
            (t for _, t, d in self._graph.out_edges(node_id, data=True) if d["kind"] == kind), key=_natural_key
        )

    def sources(self, node_id: str, kind: EdgeKind) -> list[str]:
        """Ids with an edge of ``kind`` into ``node_id``, sorted."""
        return sorted(
            (s for s, _, d in self._graph.in_edges(node_id, data=True) if d["kind"] == kind), key=_natural_key
        )

    # -- conveniences for passes and lowering -----------------------------
    def mesh(self) -> MeshNode:
        """The single mesh node."""
        return next(node for _, node in self.items(MeshNode))

    def axes(self) -> list[AxisNode]:
        """Mesh axes, outermost first."""
        return sorted((node for _, node in self.items(AxisNode)), key=lambda a: a.position)

    def axis_id(self, name: str) -> str | None:
        """Id of the first axis called ``name``, or ``None``."""
        for node_id, node in sorted(self.items(AxisNode), key=lambda item: item[1].position):
            if node.name == name:
                return node_id
        return None

    def axis_sizes(self) -> dict[str, int]:
        """Axis name -> size, outermost first (the first axis wins if a name repeats)."""
        sizes: dict[str, int] = {}
        for axis in self.axes():
            sizes.setdefault(axis.name, axis.size)
        return sizes

    def group_size(self, axes: tuple[str, ...]) -> int:
        """Devices in one group spanning ``axes`` (the product of their sizes)."""
        sizes = self.axis_sizes()
        return math.prod(sizes[a] for a in axes)

    def data_parallel(self) -> DataParallelNode | None:
        """The data-parallel dimension, if the plan has one."""
        return next((node for _, node in self.items(DataParallelNode)), None)

    def tensor_parallel(self) -> TensorParallelNode | None:
        """The tensor-parallel dimension, if the plan has one."""
        return next((node for _, node in self.items(TensorParallelNode)), None)

    def pipeline_parallel(self) -> PipelineParallelNode | None:
        """The pipeline-parallel dimension, if the plan has one."""
        return next((node for _, node in self.items(PipelineParallelNode)), None)

    def precision(self) -> PrecisionNode | None:
        """The mixed-precision policy, if the plan has one."""
        return next((node for _, node in self.items(PrecisionNode)), None)

    def shard_rules(self, owner: str) -> list[tuple[str, ShardRuleNode]]:
        """The ``(id, rule)`` pairs contained by the dimension ``owner``, in id order."""
        return [
            (i, self.node(i)) for i in self.targets(owner, EdgeKind.CONTAINS) if isinstance(self.node(i), ShardRuleNode)
        ]

    def params(self) -> list[ParamNode]:
        """Resolved parameter layouts, in path order (empty until ``resolve-shardings`` ran)."""
        return [node for _, node in self.items(ParamNode)]

    def stages(self) -> list[StageNode]:
        """Pipeline stages, first stage first."""
        return sorted((node for _, node in self.items(StageNode)), key=lambda s: s.index)

    def collectives(self, operand: str | None = None) -> list[CollectiveNode]:
        """Collectives the step performs, optionally only those moving ``operand``."""
        return [node for _, node in self.items(CollectiveNode) if operand is None or node.operand == operand]
