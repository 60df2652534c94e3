"""Hypothesis: for random valid meshes and plans, every pass leaves a valid IR, printing is
deterministic, and the declared collectives follow from the mesh."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from titanax.frontend import DP, MeshSpec, Plan
from titanax.ir import build_ir, print_ir
from titanax.passes import DEFAULT_PASSES, PassEvent, Target, compile_plan, verify_after_each

NAMES = ("data", "model", "pipe", "replica", "expert")


@st.composite
def meshes_and_plans(draw):
    devices = draw(st.integers(1, 8))
    sizes, rest = [], devices
    for _ in range(draw(st.integers(1, 4)) - 1):
        size = draw(st.sampled_from([d for d in range(1, rest + 1) if rest % d == 0]))
        sizes.append(size)
        rest //= size
    sizes.append(rest)
    sizes = draw(st.permutations(sizes))
    names = draw(st.permutations(NAMES))[: len(sizes)]
    infer = draw(st.none() | st.integers(0, len(sizes) - 1))
    shape = tuple(-1 if i == infer else s for i, s in enumerate(sizes))
    dp_axes = tuple(draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names))))
    accumulate = draw(st.integers(1, 4))
    plan = Plan(data_parallel=DP(axis=dp_axes, accumulate_steps=accumulate) if dp_axes else None)
    batch = draw(st.integers(1, 64))
    return MeshSpec(axes=tuple(names), shape=shape), plan, devices, batch


@settings(max_examples=150, deadline=None)
@given(meshes_and_plans())
def test_every_pass_leaves_a_verified_ir(case):
    mesh, plan, devices, _ = case
    seen = []

    def record(event: PassEvent) -> None:
        verify_after_each(event)
        seen.append(event.pass_.name)

    ir = compile_plan(mesh, plan, target=Target(device_count=devices), callbacks=(record,))
    assert seen == list(DEFAULT_PASSES)
    assert math.prod(ir.axis_sizes().values()) == devices == ir.mesh().device_count


@settings(max_examples=100, deadline=None)
@given(meshes_and_plans())
def test_printer_is_deterministic(case):
    mesh, plan, devices, _ = case
    first = print_ir(compile_plan(mesh, plan, target=Target(device_count=devices)))
    again = print_ir(compile_plan(mesh, plan, target=Target(device_count=devices)))
    assert first == again
    assert print_ir(build_ir(mesh, plan)) == print_ir(build_ir(mesh, plan))


@settings(max_examples=100, deadline=None)
@given(meshes_and_plans())
def test_dp_declares_one_gradient_and_one_metric_reduction(case):
    mesh, plan, devices, _ = case
    ir = compile_plan(mesh, plan, target=Target(device_count=devices))
    dp = plan.data_parallel
    if dp is None:
        assert ir.collectives() == []
        return
    group = math.prod(ir.axis_sizes()[a] for a in dp.axes)
    grads, metrics = ir.collectives("gradients"), ir.collectives("metrics")
    assert [(c.op, c.reduction, c.axes, c.group_size) for c in grads] == [("all-reduce", "mean", dp.axes, group)]
    assert [(c.op, c.axes) for c in metrics] == [("all-reduce", dp.axes)]


@settings(max_examples=100, deadline=None)
@given(meshes_and_plans(), st.integers(1, 8))
def test_wrong_device_count_is_always_reported(case, other):
    mesh, plan, devices, _ = case
    if -1 in mesh.shape or other == devices:
        return
    try:
        compile_plan(mesh, plan, target=Target(device_count=other))
    except Exception as err:  # noqa: BLE001 - the assertion below checks the type
        assert type(err).__name__ == "MeshError" and "TX103" in str(err)
    else:
        raise AssertionError("a mesh that does not fit the devices was accepted")
