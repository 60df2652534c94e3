"""``PlanIR``: a typed wrapper over a ``networkx.DiGraph``.

Node ids are strings (``"mesh"``, ``"axis.data"``, ``"collective.grad_sync"``);
each graph node stores its typed :class:`~titanax.ir.nodes.Node` under ``"node"``
and each edge its :class:`~titanax.ir.nodes.EdgeKind` under ``"kind"``. All
listings are sorted, so everything derived from them is deterministic.

Passes add thousands of nodes (one per parameter) and read the IR after each one,
and the verifier runs after every pass, so reads must not re-sort the graph: the
IR keeps each node kind's ids, sorts a kind again only when its membership has
changed since the last read, and answers axis lookups from a name -> id table.
Reading is then linear in what is read, plus one n log n sort of a kind after
a pass added to it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import TypeVar

import networkx as nx

from titanax.ir.nodes import (
    ActivationsNode,
    AxisNode,
    CollectiveNode,
    DataParallelNode,
    EdgeKind,
    FullyShardedNode,
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


def _natural_key(node_id: str) -> tuple[object, ...]:
    # "stage.10" sorts after "stage.9": numbers in ids compare as numbers.
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", node_id))


def _kinds_of(node_type: type[Node]) -> tuple[NodeKind, ...]:
    """The kinds, in kind order, that an instance of ``node_type`` (or of a subclass) can have."""
    if node_type is Node or not isinstance(node_type, type):
        return tuple(NodeKind)  # the base class, or a tuple of classes (as isinstance takes): every kind
    found: set[NodeKind] = set()
    pending = [node_type]
    while pending:
        cls = pending.pop()
        kind = getattr(cls, "kind", None)
        if isinstance(kind, NodeKind):
            found.add(kind)
        pending.extend(cls.__subclasses__())
    return tuple(kind for kind in NodeKind if kind in found) if found else tuple(NodeKind)


class PlanIR:
    """The parallel plan as a graph of mesh axes, dimensions, rules, stages and collectives."""

    def __init__(self) -> None:
        self._graph = nx.DiGraph()
        self._nodes: dict[str, Node] = {}
        # Per kind, its ids in insertion order (a dict used as an ordered set).
        self._by_kind: dict[NodeKind, dict[str, None]] = {kind: {} for kind in NodeKind}
        # Per id, (natural key, insertion number): the number breaks ties between ids whose
        # natural keys are equal ("a01", "a1") as the stable sort over the graph's node order did.
        self._keys: dict[str, tuple[tuple[object, ...], int]] = {}
        self._inserted = 0
        # Caches, rebuilt on demand: a kind's sorted ids (dropped when its membership changes),
        # and the axis name -> id table (dropped when any axis node is added or replaced).
        # Cached lists are never mutated in place, so a caller iterating one while adding
        # nodes keeps a consistent snapshot.
        self._sorted: dict[NodeKind, list[str]] = {}
        self._axis_ids: dict[str, str] | None = None
        self._edges: list[tuple[str, str, EdgeKind]] | None = None  # every edge, sorted; dropped by connect
        self.passes_run: tuple[str, ...] = ()
        """Names of the passes that have run on this IR, in order (the pass manager appends to it and
        checks each pass's prerequisites against it, whichever pipeline ran them)."""

    # -- building ---------------------------------------------------------
    def add(self, node_id: str, node: Node) -> str:
        """Add ``node`` under ``node_id`` (which must be new) and return the id."""
        if node_id in self._graph:
            raise KeyError(f"IR already has a node {node_id!r}")
        self._graph.add_node(node_id, node=node)
        self._nodes[node_id] = node
        self._keys[node_id] = (_natural_key(node_id), self._inserted)
        self._inserted += 1
        self._by_kind[node.kind][node_id] = None
        self._changed(node.kind)
        return node_id

    def replace(self, node_id: str, node: Node) -> None:
        """Swap the node stored under ``node_id`` for ``node``; edges are kept."""
        if node_id not in self._graph:
            raise KeyError(f"IR has no node {node_id!r}")
        old = self._nodes[node_id]
        self._graph.nodes[node_id]["node"] = node
        self._nodes[node_id] = node
        if old.kind != node.kind:
            del self._by_kind[old.kind][node_id]
            self._by_kind[node.kind][node_id] = None
            self._changed(old.kind)
            self._changed(node.kind)
        elif node.kind == NodeKind.AXIS:
            self._axis_ids = None  # the name or position may have changed; the id order has not

    def _changed(self, kind: NodeKind) -> None:
        self._sorted.pop(kind, None)
        if kind == NodeKind.AXIS:
            self._axis_ids = None

    def connect(self, source: str, target: str, kind: EdgeKind) -> None:
        """Add an edge of ``kind`` from ``source`` to ``target`` (both must exist)."""
        for node_id in (source, target):
            if node_id not in self._graph:
                raise KeyError(f"IR has no node {node_id!r}")
        self._graph.add_edge(source, target, kind=kind)
        self._edges = None

    def copy(self) -> PlanIR:
        """Return an independent copy (nodes are immutable, so sharing them is safe)."""
        other = PlanIR()
        other._graph = self._graph.copy()
        other._nodes = dict(self._nodes)
        other._by_kind = {kind: dict(ids) for kind, ids in self._by_kind.items()}
        other._keys = dict(self._keys)
        other._inserted = self._inserted
        # Cached lists (sorted ids, sorted edges) are never mutated in place, so the copy may share them.
        other._sorted = dict(self._sorted)
        other._axis_ids = None if self._axis_ids is None else dict(self._axis_ids)
        other._edges = self._edges
        other.passes_run = self.passes_run
        return other

    # -- reading ----------------------------------------------------------
    @property
    def graph(self) -> nx.DiGraph:
        """A read-only view of the underlying graph, for analyses such as cycle checks."""
        return self._graph.copy(as_view=True)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def node(self, node_id: str) -> Node:
        """Return the node stored under ``node_id``."""
        return self._nodes[node_id]

    def _ids_of(self, kind: NodeKind) -> list[str]:
        """The ids of ``kind`` in natural id order, sorted at most once per change of the kind."""
        ids = self._sorted.get(kind)
        if ids is None:
            ids = self._sorted[kind] = sorted(self._by_kind[kind], key=self._keys.__getitem__)
        return ids

    def ids(self) -> list[str]:
        """Every node id, ordered by node kind and then by id."""
        # NodeKind's declaration order is the kind order, so concatenating the kinds is the sort.
        return [node_id for kind in NodeKind for node_id in self._ids_of(kind)]

    def items(self, node_type: type[N] = Node) -> Iterator[tuple[str, N]]:  # type: ignore[assignment]
        """Yield ``(id, node)`` for every node of ``node_type``, in :meth:`ids` order."""
        # Only the kinds that instances of ``node_type`` can have are scanned (one for a
        # concrete node class), so reading one kind does not cost a pass over every node.
        # The ids are taken once, at the first ``next``, as the sort over every node was.
        kinds = _kinds_of(node_type)
        ids = self._ids_of(kinds[0]) if len(kinds) == 1 else [i for kind in kinds for i in self._ids_of(kind)]
        for node_id in ids:
            node = self._nodes[node_id]
            if isinstance(node, node_type):
                yield node_id, node

    def edges(self, kind: EdgeKind | None = None) -> list[tuple[str, str, EdgeKind]]:
        """Every edge ``(source, target, kind)``, sorted, optionally of one kind."""
        # The verifier lists the edges after every pass, and most passes add none: the sorted
        # list is kept until the next connect. Filtering it by kind gives what sorting the
        # filtered edges would (the sort is stable), and callers get a list of their own.
        if self._edges is None:
            # The adjacency dicts iterate in the graph's edge order (what edges(data=True) yields)
            # without a view per edge; the cached natural keys, without the insertion number,
            # leave ties in that order.
            found = [(s, t, d["kind"]) for s, targets in self._graph._succ.items() for t, d in targets.items()]
            keys = self._keys
            self._edges = sorted(found, key=lambda e: (keys[e[0]][0], keys[e[1]][0], e[2]))
        return list(self._edges) if kind is None else [e for e in self._edges if e[2] == kind]

    def targets(self, node_id: str, kind: EdgeKind) -> list[str]:
        """Ids reached from ``node_id`` by edges of ``kind``, sorted."""
        # The verifier asks this (and sources) of every node after every pass, and an axis has
        # an edge from every split parameter: reading networkx's adjacency dicts directly (the
        # order out_edges and in_edges iterate) avoids building a view per call and per edge.
        # An unknown id has no edges, as out_edges and in_edges said.
        keys = self._keys
        found = [t for t, d in self._graph._succ.get(node_id, {}).items() if d["kind"] == kind]
        return sorted(found, key=lambda i: keys[i][0])

    def sources(self, node_id: str, kind: EdgeKind) -> list[str]:
        """Ids with an edge of ``kind`` into ``node_id``, sorted."""
        keys = self._keys
        found = [s for s, d in self._graph._pred.get(node_id, {}).items() if d["kind"] == kind]
        return sorted(found, key=lambda i: keys[i][0])

    # -- conveniences for passes and lowering -----------------------------
    def mesh(self) -> MeshNode:
        """The single mesh node."""
        return next(node for _, node in self.items(MeshNode))

    def axes(self) -> list[AxisNode]:
        """Mesh axes, outermost first."""
        return sorted((node for _, node in self.items(AxisNode)), key=lambda a: a.position)

    def axis_id(self, name: str) -> str | None:
        """Id of the first axis called ``name``, or ``None``."""
        # Called once per axis name of every node (builders, resolve-shardings, the verifier),
        # so the answer comes from a table built once per change of the axes.
        if self._axis_ids is None:
            table: dict[str, str] = {}
            for node_id, node in sorted(self.items(AxisNode), key=lambda item: item[1].position):
                table.setdefault(node.name, node_id)
            self._axis_ids = table
        return self._axis_ids.get(name)

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

    def fully_sharded(self) -> FullyShardedNode | None:
        """The fully sharded data-parallel dimension, if the plan has one."""
        return next((node for _, node in self.items(FullyShardedNode)), None)

    def batch_axes(self) -> tuple[str, ...]:
        """Every axis the batch is split over: the data-parallel axes, then the FSDP axes."""
        dp, fsdp = self.data_parallel(), self.fully_sharded()
        return (dp.axes if dp else ()) + (fsdp.axes if fsdp else ())

    def accumulate_steps(self) -> int:
        """Microbatches per device per step (data parallelism's, else FSDP's; 1 without either)."""
        dp, fsdp = self.data_parallel(), self.fully_sharded()
        return dp.accumulate_steps if dp and dp.accumulate_steps > 1 else (fsdp.accumulate_steps if fsdp else 1)

    def tensor_parallel(self) -> TensorParallelNode | None:
        """The tensor-parallel dimension, if the plan has one."""
        return next((node for _, node in self.items(TensorParallelNode)), None)

    def pipeline_parallel(self) -> PipelineParallelNode | None:
        """The pipeline-parallel dimension, if the plan has one."""
        return next((node for _, node in self.items(PipelineParallelNode)), None)

    def activations(self) -> ActivationsNode | None:
        """The activation policy of the stacked blocks, if the plan has one."""
        return next((node for _, node in self.items(ActivationsNode)), None)

    def remat(self) -> str:
        """The remat policy the stacked blocks run under: the pipeline's when it names one, else the plan's."""
        pp, policy = self.pipeline_parallel(), self.activations()
        if pp is not None and pp.remat != "none":
            return pp.remat
        return policy.remat if policy is not None else "none"

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
