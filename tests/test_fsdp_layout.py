"""The FSDP layout pass: which dimension each parameter is sharded on, as a property over random trees and
meshes, and the .tx statement that declares it."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

import titanax as tx
from titanax.errors import PlanError
from titanax.ir import print_ir
from titanax.passes import PassPipeline, ResolveShardings, Target, compile_plan

DIMS = st.sampled_from([1, 2, 3, 4, 6, 8, 12, 16, 24])


@st.composite
def trees_and_meshes(draw):
    fsdp, model = draw(st.sampled_from([1, 2, 4, 8])), draw(st.sampled_from([1, 2, 4]))
    count = draw(st.integers(1, 8))
    parameters, rules = [], {}
    for index in range(count):
        shape = tuple(draw(st.lists(DIMS, min_size=0, max_size=3)))
        path = f"p{index}/w"
        parameters.append((path, shape))
        if shape and draw(st.booleans()):
            dim = draw(st.integers(0, len(shape) - 1))
            if shape[dim] % model == 0:  # a TP split that fits, so the FSDP choice is what is tested
                rules[path] = tuple("model" if d == dim else None for d in range(len(shape)))
    return fsdp, model, parameters, rules, draw(st.sampled_from([0, 4, 16])), draw(st.sampled_from([1, 3]))


@settings(max_examples=80, deadline=None)
@given(trees_and_meshes())
def test_the_chosen_dimension_divides_and_never_is_a_tp_dimension(case):
    fsdp, model, parameters, rules, min_size, stage = case
    mesh = tx.MeshSpec(axes=("fsdp", "model"), shape=(fsdp, model))
    plan = tx.Plan(
        fully_sharded=tx.FSDP(axis="fsdp", stage=stage, min_size=min_size),
        tensor_parallel=tx.TP(axis="model", rules=rules) if rules else None,
    )
    target = Target(device_count=fsdp * model)
    ir = compile_plan(mesh, plan, target=target)
    try:
        ir = PassPipeline([ResolveShardings(parameters=tuple(parameters))]).run(ir, target)
    except PlanError as err:
        # Only a parameter above min_size whose TP-free dimensions all fail to divide is refused.
        shapes = dict(parameters)
        for diagnostic in err.diagnostics:
            assert diagnostic.code == "TX240", diagnostic
            path = diagnostic.message.split()[1]
            shape, spec = shapes[path], rules.get(path, (None,) * len(shapes[path]))
            free = [n for n, entry in zip(shape, spec, strict=True) if entry is None]
            assert free and math.prod(shape) >= min_size and all(n % fsdp for n in free)
        return
    for node in ir.params():
        tp_spec = rules.get(node.path, (None,) * len(node.shape))
        if node.fsdp_dim is None:
            free = [n for n, entry in zip(node.shape, tp_spec, strict=True) if entry is None]
            assert math.prod(node.shape) < min_size or not free
            continue
        assert node.shape[node.fsdp_dim] % fsdp == 0
        assert tp_spec[node.fsdp_dim] is None  # TP and FSDP never split the same dimension
        sharded = node.spec[node.fsdp_dim] == "fsdp"
        assert sharded == (stage == 3)
        assert math.prod(node.local_shape) * (fsdp if stage == 3 else 1) * (model if node.path in rules else 1) == (
            math.prod(node.shape)
        )


FILE_PLAN = """
mesh { data = 2, fsdp = 4 }
data_parallel over data
fully_sharded over fsdp {
  stage = 2
  min_size = 0
  reshard_after_forward = false
  "blocks/ln*/**" = none
  "embed/tokens" = 1
}
"""


def test_the_statement_builds_the_same_ir_as_python(tmp_path):
    path = tmp_path / "plan.tx"
    path.write_text(FILE_PLAN)
    loaded = tx.load_plan(str(path))
    python = tx.Plan(
        data_parallel=tx.DP(axis="data"),
        fully_sharded=tx.FSDP(
            axis="fsdp",
            stage=2,
            min_size=0,
            reshard_after_forward=False,
            rules={"blocks/ln*/**": None, "embed/tokens": 1},
        ),
    )
    assert loaded.plan == python
    target = Target(device_count=8)
    assert print_ir(compile_plan(loaded.mesh, loaded.plan, target=target)) == print_ir(
        compile_plan(tx.MeshSpec(axes=("data", "fsdp"), shape=(2, 4)), python, target=target)
    )


def test_statement_errors_are_located(tmp_path):
    path = tmp_path / "plan.tx"
    path.write_text('mesh { fsdp = 8 }\nfully_sharded over fsdp { stage = 5, "w" = column, shard = 1 }\n')
    try:
        tx.load_plan(str(path))
    except tx.TitanaxError as err:
        found = {(d.code, d.location.line, d.location.column) for d in err.diagnostics}
    # Every problem of the statement at once: the rule's value, the unknown setting, the stage.
    assert found == {("TX609", 2, 44), ("TX608", 2, 52), ("TX238", 2, 1)}
    path.write_text("mesh { fsdp = 8 }\nfully_sharded over fsdp { stage = 5 }\n")
    try:
        tx.load_plan(str(path))
    except tx.TitanaxError as err:
        assert [(d.code, d.location.line) for d in err.diagnostics] == [("TX238", 2)]


def test_overrides_reach_the_statement(tmp_path):
    path = tmp_path / "plan.tx"
    path.write_text("mesh { fsdp = 8 }\nfully_sharded over fsdp\n")
    loaded = tx.load_plan(str(path), overrides=["fully_sharded.stage=1", "fully_sharded.min_size=0"])
    assert loaded.plan.fully_sharded.stage == 1 and loaded.plan.fully_sharded.min_size == 0
