"""The IR, its printers, its verifier and the pass pipeline (no JAX needed)."""

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from titanax.errors import IRVerificationError, PlanError
from titanax.frontend import DP, MeshSpec, Plan
from titanax.ir import AxisNode, CollectiveNode, EdgeKind, build_ir, ir_to_dot, ir_to_json, print_ir, verify_ir
from titanax.passes import (
    DEFAULT_PASSES,
    PassPipeline,
    PassTimings,
    Target,
    compile_plan,
    passes_by_name,
    print_after_each,
    verify_after_each,
)

GOLDEN = Path(__file__).parent / "golden"
MESH = MeshSpec(axes=("data", "model"), shape=(-1, 2))
PLAN = Plan(data_parallel=DP(axis="data", accumulate_steps=2))


def compiled(passes=DEFAULT_PASSES, callbacks=(verify_after_each,)):
    return compile_plan(MESH, PLAN, target=Target(device_count=8), passes=passes, callbacks=callbacks)


@pytest.mark.parametrize("last_pass", DEFAULT_PASSES)
def test_ir_after_each_pass_matches_golden(last_pass):
    """One golden dump per pass of the default pipeline (xdsl-style filecheck)."""
    passes = DEFAULT_PASSES[: DEFAULT_PASSES.index(last_pass) + 1]
    expected = (GOLDEN / f"dp_4x2.after.{last_pass}.ir").read_text()
    assert print_ir(compiled(passes)) == expected


def test_print_after_all_shows_each_pass_in_order():
    stream = io.StringIO()
    compiled(callbacks=(verify_after_each, print_after_each(stream)))
    headers = [line for line in stream.getvalue().splitlines() if line.startswith("// -----")]
    assert headers == [f"// ----- IR after {name} -----" for name in DEFAULT_PASSES]


def test_pass_timings_callback_records_every_pass():
    timings = PassTimings()
    compiled(callbacks=(verify_after_each, timings))
    assert [name for name, _ in timings.seconds] == list(DEFAULT_PASSES)


def test_json_and_dot_renderings():
    ir = compiled()
    data = json.loads(ir_to_json(ir))
    grad = next(n for n in data["nodes"] if n["id"] == "collective.grad_sync")
    assert grad["axes"] == ["data"] and grad["group_size"] == 4
    assert {"source": "dp", "target": "collective.grad_sync", "kind": "requires"} in data["edges"]
    dot = ir_to_dot(ir)
    assert dot.startswith("digraph plan_ir {") and '"dp" -> "collective.grad_sync" [label="requires"]' in dot


def test_pipeline_does_not_mutate_its_input():
    ir = build_ir(MESH, PLAN)
    before = print_ir(ir)
    after = PassPipeline(passes_by_name(DEFAULT_PASSES)).run(ir, Target(device_count=8))
    assert print_ir(ir) == before != print_ir(after)


def test_verifier_rejects_an_all_reduce_without_a_known_reduction():
    ir = compiled()
    ir.replace("collective.grad_sync", replace(ir.node("collective.grad_sync"), reduction="product"))
    with pytest.raises(IRVerificationError, match="has reduction 'product'"):
        verify_ir(ir)


def test_verifier_rejects_an_edge_between_wrong_kinds():
    ir = compiled()
    ir.connect("collective.grad_sync", "mesh", EdgeKind.REQUIRES)
    with pytest.raises(IRVerificationError, match="TX901.*joins collective to mesh"):
        verify_ir(ir, after="test")


def test_verifier_rejects_a_missing_over_edge():
    ir = build_ir(MESH, PLAN)
    ir.add(
        "collective.x",
        CollectiveNode(
            name="x", op="all-reduce", reduction="sum", axes=("model",), operand="metrics", origin="user", group_size=2
        ),
    )
    with pytest.raises(IRVerificationError, match="names axes \\('model',\\) but its over edges reach \\[\\]"):
        verify_ir(ir)


def test_verifier_rejects_a_wrong_group_size_and_names_the_pass():
    ir = compiled()
    node = ir.node("collective.grad_sync")
    ir.replace("collective.grad_sync", replace(node, group_size=3))
    with pytest.raises(IRVerificationError, match="after pass 'my-pass'.*group_size 3, axes give 4"):
        verify_ir(ir, after="my-pass")


def test_verifier_rejects_unrequired_lowering_collective_and_unknown_op():
    ir = compiled()
    ir.add(
        "collective.y",
        CollectiveNode(name="y", op="broadcast", reduction=None, axes=(), operand="x", origin="lowering", group_size=1),
    )
    with pytest.raises(IRVerificationError) as info:
        verify_ir(ir)
    text = str(info.value)
    assert "unknown op 'broadcast'" in text and "no dimension or policy requires it" in text


def test_verifier_rejects_bad_axis_positions():
    ir = build_ir(MESH, PLAN)
    ir.replace("axis.model", AxisNode(name="model", size=2, position=5))
    with pytest.raises(IRVerificationError, match="positions must be 0..1"):
        verify_ir(ir)


def test_unknown_pass_name():
    with pytest.raises(PlanError, match="TX206.*'no-such-pass'"):
        compiled(passes=("no-such-pass",))


def test_builder_keeps_duplicate_axes_for_the_pass_to_report():
    ir = build_ir(MeshSpec(axes=("data", "data"), shape=(2, 4)), Plan())
    assert [a.name for a in ir.axes()] == ["data", "data"]
    verify_ir(ir)
