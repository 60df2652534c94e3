"""The plan IR's indexes: passes stay linear in the number of parameters, and the indexed
reads give exactly what a plain sort of the whole graph gives.

No wall-clock thresholds: the growth test counts work (elements sorted, natural sort keys
computed, nodes visited) while resolving N and 4N parameters, so it fails the same way on
any machine when a per-lookup sort (quadratic in the parameters) comes back.
"""

import re
import sys

import pytest

from titanax.frontend import DP, PP, TP, MeshSpec, Plan
from titanax.ir import (
    AxisNode,
    CollectiveNode,
    DataParallelNode,
    EdgeKind,
    MeshNode,
    Node,
    NodeKind,
    ParamNode,
    PipelineParallelNode,
    PlanIR,
    ShardRuleNode,
    StageNode,
    TensorParallelNode,
    print_ir,
)
from titanax.ir import graph as graph_module
from titanax.ir.printer import format_value
from titanax.passes import CheckStageBalance, PassPipeline, ResolveShardings, Target, compile_plan, verify_after_each

TARGET = Target(device_count=8)
TP_RULES = {
    "**/qkv/w": "column",
    "**/attn/out/w": "row",
    "**/mlp/in/*": "column",
    "**/mlp/out/w": "row",
    "embed/tokens": ("model", None),
    "**/norm/*": "replicated",
}
LEAVES = (
    ("attn/qkv/w", (16, 48)),
    ("attn/out/w", (16, 16)),
    ("mlp/in/w", (16, 64)),
    ("mlp/in/b", (64,)),
    ("mlp/out/w", (64, 16)),
    ("norm/scale", (16,)),
    ("norm/bias", (16,)),
)


def tp_case(layers: int):
    """DP x TP, every role, numbered keys (``layers/10`` after ``layers/9``), a stacked entry,
    and paths whose natural keys tie (``h01`` and ``h1``), so ties must keep insertion order."""
    params = [(f"layers/{i}/{name}", shape) for i in range(layers) for name, shape in LEAVES]
    params += [("embed/tokens", (32, 16)), ("h1/w", (4,)), ("h01/w", (4,)), ("stack/w", (3, 16, 8))]
    plan = Plan(data_parallel=DP(axis="data"), tensor_parallel=TP(axis="model", rules=TP_RULES))
    return MeshSpec(axes=("data", "model"), shape=(2, 4)), plan, tuple(params), ("stack",)


def pp_case(units: int):
    """DP x PP with named stages: the blocks entry is split over the pipeline axis."""
    params = [("embed/w", (8, 8))] + [(f"blocks/unit{i}/w", (8, 4, 4)) for i in range(units)] + [("head/w", (8, 2))]
    stages = [("embed", "blocks[0:2]"), ("blocks[2:4]",), ("blocks[4:6]",), ("blocks[6:8]", "head")]
    plan = Plan(
        data_parallel=DP(axis="data"),
        pipeline_parallel=PP(axis="pipe", microbatches=8, stages=stages, balance_tolerance=100.0),
    )
    return MeshSpec(axes=("data", "pipe"), shape=(2, 4)), plan, tuple(params), ()


def resolve(case) -> PlanIR:
    """What ``Engine.create_state`` runs: the default passes, then resolve-shardings and
    check-stage-balance, with the verifier after every pass."""
    mesh, plan, params, stacked = case
    ir = compile_plan(mesh, plan, target=TARGET)
    passes = [ResolveShardings(parameters=params, stacked=stacked), CheckStageBalance()]
    return PassPipeline(passes, callbacks=(verify_after_each,)).run(ir, TARGET)


# -- growth: work counted, not timed ----------------------------------------------------------
class Work:
    """Counters of the work that grows with the IR."""

    def __init__(self) -> None:
        self.counts = {"sorted elements": 0, "natural keys": 0, "nodes visited": 0}


@pytest.fixture
def work(monkeypatch):
    """Count, in every ``titanax.ir`` and ``titanax.passes`` module: elements passed to
    ``sorted``; natural sort keys computed; nodes ``PlanIR.items``/``ids`` hand out."""
    counter = Work()

    def counting_sorted(iterable, /, **kwargs):
        result = sorted(iterable, **kwargs)
        counter.counts["sorted elements"] += len(result)
        return result

    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith(("titanax.ir.", "titanax.passes.")):
            monkeypatch.setattr(module, "sorted", counting_sorted, raising=False)

    natural_key = graph_module._natural_key

    def counting_natural_key(node_id):
        counter.counts["natural keys"] += 1
        return natural_key(node_id)

    monkeypatch.setattr(graph_module, "_natural_key", counting_natural_key)

    items, ids = PlanIR.items, PlanIR.ids

    def counting_items(self, node_type=Node):
        for item in items(self, node_type):
            counter.counts["nodes visited"] += 1
            yield item

    def counting_ids(self):
        found = ids(self)
        counter.counts["nodes visited"] += len(found)
        return found

    monkeypatch.setattr(PlanIR, "items", counting_items)
    monkeypatch.setattr(PlanIR, "ids", counting_ids)
    return counter


@pytest.mark.parametrize(("make", "small"), [(tp_case, 30), (pp_case, 200)], ids=["tp", "pp"])
def test_work_grows_linearly_with_the_parameters(work, make, small):
    measured = []
    for size in (small, 4 * small):
        case = make(size)
        work.counts = dict.fromkeys(work.counts, 0)
        ir = resolve(case)
        assert len(ir.params()) == len(case[2])
        measured.append(dict(work.counts))
    for what in work.counts:
        few, many = measured[0][what], measured[1][what]
        assert few > 0, what
        # Linear work a + b*N grows less than 4x when N does; one sort per lookup gives ~16x.
        assert many <= 4.4 * few, f"{what}: {few} for N params, {many} for 4N (quadratic?)"


# -- the indexes give what a plain sort of the graph gives -------------------------------------
def _natural(node_id: str) -> tuple[object, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", node_id))


def _reference_ids(ir: PlanIR) -> list[str]:
    """Every id by kind, then natural id; ties in the graph's insertion order (a stable sort)."""
    order = {kind: i for i, kind in enumerate(NodeKind)}
    nodes = ir.graph.nodes
    return sorted(nodes, key=lambda i: (order[nodes[i]["node"].kind], _natural(i)))


def _reference_edges(ir: PlanIR) -> list[tuple[str, str, EdgeKind]]:
    edges = [(s, t, k) for s, t, k in ir.graph.edges(data="kind")]
    return sorted(edges, key=lambda e: (_natural(e[0]), _natural(e[1]), e[2]))


def _reference_print(ir: PlanIR) -> str:
    """``print_ir`` re-derived from the raw graph, without any of ``PlanIR``'s indexes."""
    nodes = ir.graph.nodes
    lines = ["plan_ir {"]
    for node_id in _reference_ids(ir):
        node = nodes[node_id]["node"]
        attrs = ", ".join(f"{k} = {format_value(v)}" for k, v in node.attributes().items())
        lines.append(f"  %{node_id} = {node.type_name} {{{attrs}}}")
    lines += [f"  %{s} -{k}-> %{t}" for s, t, k in _reference_edges(ir)]
    return "\n".join([*lines, "}"]) + "\n"


def _assert_reads_match_reference(ir: PlanIR) -> None:
    nodes = ir.graph.nodes
    reference = _reference_ids(ir)
    assert ir.ids() == reference
    edges = _reference_edges(ir)
    listed = ir.edges()
    assert listed == edges
    listed.clear()  # the caller's list is its own, not the IR's cache
    assert ir.edges() == edges
    for kind in EdgeKind:
        assert ir.edges(kind) == [e for e in edges if e[2] == kind]
    types = (Node, MeshNode, AxisNode, DataParallelNode, TensorParallelNode, PipelineParallelNode)
    for node_type in (*types, ShardRuleNode, ParamNode, StageNode, CollectiveNode):
        expected = [(i, nodes[i]["node"]) for i in reference if isinstance(nodes[i]["node"], node_type)]
        assert list(ir.items(node_type)) == expected, node_type.__name__
    axes = sorted(((i, nodes[i]["node"]) for i in reference if nodes[i]["node"].kind == NodeKind.AXIS),
                  key=lambda item: item[1].position)  # fmt: skip
    for name in {axis.name for _, axis in axes} | {"missing"}:
        assert ir.axis_id(name) == next((i for i, axis in axes if axis.name == name), None)
    for node_id in reference:
        for kind in EdgeKind:
            out = [t for _, t, k in ir.graph.out_edges(node_id, data="kind") if k == kind]
            into = [s for s, _, k in ir.graph.in_edges(node_id, data="kind") if k == kind]
            assert ir.targets(node_id, kind) == sorted(out, key=_natural)
            assert ir.sources(node_id, kind) == sorted(into, key=_natural)


@pytest.mark.parametrize("make", [tp_case, pp_case], ids=["tp", "pp"])
def test_resolved_ir_prints_as_the_plain_sort_does(make):
    ir = resolve(make(12))
    assert print_ir(ir) == _reference_print(ir)
    _assert_reads_match_reference(ir)
    paths = [node.path for node in ir.params()]
    if make is tp_case:  # numbers compare as numbers; natural-key ties keep insertion order
        assert paths.index("layers/9/attn/out/w") < paths.index("layers/10/attn/out/w")
        assert paths.index("h1/w") < paths.index("h01/w")


def test_indexes_follow_additions_replacements_and_copies():
    ir = resolve(tp_case(3))
    before = print_ir(ir)
    other = ir.copy()
    # The copy's additions and replacements must not leak into the original's indexes, nor the reverse.
    other.add("param.layers/0/extra", ParamNode(path="layers/0/extra", shape=(2,), spec=(None,), local_shape=(2,)))
    other.connect("rule.default", "param.layers/0/extra", EdgeKind.LAYS_OUT)
    model_id = other.axis_id("model")
    other.replace(model_id, AxisNode(name="tensor", size=4, position=1))
    assert other.axis_id("model") is None and other.axis_id("tensor") == model_id
    assert print_ir(ir) == before and ir.axis_id("model") == model_id
    ir.add("stage.0", StageNode(index=0, layers=("embed",)))
    assert "stage.0" not in other and "stage.0" in ir.ids()
    _assert_reads_match_reference(ir)
    _assert_reads_match_reference(other)
    # A replacement that changes a node's kind moves it between the kind indexes.
    other.replace("param.layers/0/extra", StageNode(index=1, layers=("head",)))
    assert "param.layers/0/extra" not in [i for i, _ in other.items(ParamNode)]
    assert ("param.layers/0/extra", other.node("param.layers/0/extra")) in list(other.items(StageNode))
    _assert_reads_match_reference(other)
