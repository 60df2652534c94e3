"""Hypothesis: for random valid meshes and plans, every pass leaves a valid IR, printing is
deterministic, and the declared collectives follow from the mesh."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from titanax.frontend import DP, MeshSpec, Plan
from titanax.ir import build_ir, build_schedule, print_ir
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


@st.composite
def precision_plans(draw):
    """Meshes over data/model/pipe with any policy: TP over model and PP over pipe when drawn."""
    from titanax.frontend import PP, TP, Precision

    sizes = {name: draw(st.sampled_from([1, 2])) for name in ("data", "model", "pipe")}
    use_tp, use_pp = draw(st.booleans()), draw(st.booleans())
    dtypes = st.sampled_from(["float32", "bfloat16", "float16"])
    # float16 master weights are refused (TX233); any dtype may be computed or returned in.
    master = st.sampled_from(["float32", "bfloat16"])
    policy = Precision(params=draw(master), compute=draw(dtypes), output=draw(dtypes))
    plan = Plan(
        data_parallel=DP(axis="data"),
        tensor_parallel=TP(axis="model", rules={"*/w": "column"}) if use_tp else None,
        pipeline_parallel=PP(axis="pipe", microbatches=2 * sizes["pipe"], schedule="gpipe") if use_pp else None,
        precision=policy,
    )
    mesh = MeshSpec(axes=tuple(sizes), shape=tuple(sizes.values()))
    return mesh, plan, math.prod(sizes.values())


@settings(max_examples=100, deadline=None)
@given(precision_plans())
def test_the_overflow_count_is_reduced_exactly_where_gradients_are_split(case):
    mesh, plan, devices = case
    ir = compile_plan(mesh, plan, target=Target(device_count=devices))
    policy = ir.precision()
    assert policy.loss_scaling == ("dynamic" if plan.precision.compute == "float16" else "none")
    split_axes = (("model",) if plan.tensor_parallel else ()) + (("pipe",) if plan.pipeline_parallel else ())
    finite = ir.collectives("nonfinite_count")
    if policy.loss_scaling == "dynamic" and split_axes:
        assert [(c.axes, c.reduction, c.group_size) for c in finite] == [
            (split_axes, "sum", math.prod(mesh.shape[mesh.axes.index(a)] for a in split_axes))
        ]
    else:
        assert finite == []


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), max_size=20), st.integers(1, 5), st.sampled_from([1.0, 2.0**10, 2.0**23]))
def test_loss_scale_follows_the_dynamic_rule(finite_steps, interval, initial):
    """Against a plain-Python model: halve on overflow (not below 1), double after ``interval``
    finite steps in a row (not above 2**24), and count finite steps since the last change."""
    import jax.numpy as jnp

    from titanax.lowering import LossScale

    state = LossScale.initial(initial)
    scale, good = initial, 0
    for finite in finite_steps:
        state = state.adjust(jnp.asarray(finite), interval)
        if not finite:
            scale, good = max(scale / 2, 1.0), 0
        elif good + 1 >= interval:
            scale, good = min(scale * 2, 2.0**24), 0
        else:
            good += 1
        assert (float(state.scale), int(state.good_steps)) == (scale, good)


@st.composite
def full_plans(draw):
    """Random meshes over data/model/pipe (sizes 1-4, up to 8 devices) with DP, TP, PP, precision."""
    from titanax.frontend import PP, TP, Precision

    sizes = {}
    budget = 8
    for name in ("data", "model", "pipe"):
        size = draw(st.sampled_from([s for s in (1, 2, 4) if s <= budget]))
        sizes[name] = size
        budget //= size
    use_dp, use_tp, use_pp = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    schedule = draw(st.sampled_from(["gpipe", "1f1b"]))
    microbatches = draw(st.integers(sizes["pipe"], 3 * sizes["pipe"]))
    plan = Plan(
        data_parallel=DP(axis="data", accumulate_steps=draw(st.integers(1, 3))) if use_dp else None,
        tensor_parallel=TP(axis="model", rules={"*/w": "column"}) if use_tp else None,
        pipeline_parallel=PP(axis="pipe", microbatches=microbatches, schedule=schedule) if use_pp else None,
        precision=Precision(compute=draw(st.sampled_from(["float32", "bfloat16", "float16"]))),
    )
    return MeshSpec(axes=tuple(sizes), shape=tuple(sizes.values())), plan, sizes


@settings(max_examples=150, deadline=None)
@given(full_plans())
def test_collective_groups_follow_the_mesh_in_every_plan(case):
    """Group sizes, permute pairs and runs per step against figures computed from the mesh alone."""
    from titanax.ir import Cadence, CollectiveNode

    mesh, plan, sizes = case
    ir = compile_plan(mesh, plan, target=Target(device_count=math.prod(sizes.values())))
    p = sizes["pipe"] if plan.pipeline_parallel else 1
    for node_id, node in ir.items(CollectiveNode):
        assert node.group_size == math.prod(sizes[a] for a in node.axes), node_id
        if node.op == "collective-permute":
            forward = [(s, s + 1) for s in range(p - 1)]
            expected = forward if node.operand == "stage_activations" else [(t, s) for s, t in forward]
            assert sorted(node.permutation) == sorted(expected)
            assert node.cadence == Cadence.TICK
            pp = plan.pipeline_parallel
            assert node.executions == build_schedule(pp.schedule, p, pp.microbatches, pp.virtual_stages).ticks
        else:
            assert (node.permutation, node.cadence, node.executions) == ((), Cadence.STEP, 1)
    kinds = {node.operand for node in ir.collectives()}
    assert ("gradients" in kinds) == bool(plan.data_parallel)
    assert ("stage_activations" in kinds) == bool(plan.pipeline_parallel and p > 1)
    split = (plan.tensor_parallel is not None) or (plan.pipeline_parallel is not None)
    assert ("nonfinite_count" in kinds) == (plan.precision.compute == "float16" and split)
