"""Pipeline schedules as IR: properties of the tables, the verifier, validation errors, the timeline."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import titanax as tx
from titanax.cli import main
from titanax.ir import Op, Schedule, ScheduleOpNode, build_schedule, print_ir, schedule_from_ir, schedule_problems
from titanax.ir.schedule import closed_form_modelled_time
from titanax.passes import Target, compile_plan

settings_for_tables = settings(max_examples=80, deadline=None)
NAMES = ["gpipe", "1f1b", "interleaved", "zbh1"]


@st.composite
def built(draw):
    """A built schedule: (p, m, v, name) with m >= p where the schedule needs it."""
    name = draw(st.sampled_from(NAMES))
    p = draw(st.integers(1, 6))
    m = draw(st.integers(1, 12))
    v = draw(st.integers(2, 3)) if name == "interleaved" else 1
    if name != "gpipe":
        m = max(m, p)
    return build_schedule(name, p, m, v)


@settings_for_tables
@given(built())
def test_every_built_schedule_verifies_with_its_closed_form_cost_and_bounded_in_flight(table):
    p, m, v = table.stages, table.microbatches, table.virtual_stages
    assert schedule_problems(table) == []
    closed = closed_form_modelled_time(table.name, p, m, v)
    if table.name in ("gpipe", "1f1b") or (table.name == "zbh1") or (table.name == "interleaved" and m % p == 0):
        assert closed is not None
        assert table.modelled_time() == pytest.approx(closed)
    if table.name in ("gpipe", "1f1b"):
        assert table.bubble_fraction() == pytest.approx((p - 1) / (m + p - 1))
        assert table.modelled_time(recompute=1.0) == pytest.approx(4 * (m + p - 1))
    if table.name == "interleaved" and m % p == 0:
        assert table.bubble_fraction() == pytest.approx((p - 1) / (v * m + p - 1))
    if table.name == "1f1b":
        assert table.ticks == m + 2 * p - 1
    for s in range(p):
        bound = table.in_flight_bound(s)
        if table.name == "gpipe":
            assert bound is None and table.in_flight(s) == m
        else:
            assert table.in_flight(s) <= bound  # a function of p (and v), never of m
            assert bound <= 2 * v * p


def test_the_issue_targets_hold_in_the_cost_model():
    assert build_schedule("1f1b", 4, 32).modelled_over_ideal() <= 1.12
    assert build_schedule("interleaved", 4, 32, 2).modelled_over_ideal() <= 1.08
    assert build_schedule("zbh1", 4, 32).modelled_over_ideal() <= 1.06
    assert build_schedule("1f1b", 4, 8).modelled_over_ideal() <= 1.45
    # Recompute shows as cost: the same 1F1B table with remat = full models at 4/3 of it.
    assert build_schedule("1f1b", 4, 32).modelled_over_ideal(recompute=1.0) == pytest.approx(4 * 35 / 96)


@settings_for_tables
@given(built(), st.data())
def test_dropping_an_op_is_rejected(table, data):
    dropped = data.draw(st.sampled_from(table.ops))
    broken = replace_ops(table, [op for op in table.ops if op != dropped])
    assert any("never runs" in problem for problem in schedule_problems(broken))


def replace_ops(table, ops):
    return Schedule(table.name, table.stages, table.microbatches, tuple(sorted(ops)), table.virtual_stages)


@settings_for_tables
@given(built(), st.data())
def test_swapping_two_dependent_ops_is_rejected(table, data):
    p, n = table.stages, table.model_stages
    where = {(op.kind, op.model_stage(p), op.microbatch): op for op in table.ops}
    # A dependent pair: F(s, i) -> F(s+1, i), F(s, i) -> B(s, i), B(s+1, i) -> B(s, i), or B(s, i) -> W(s, i).
    kinds = ["FB"] + (["FF", "BB"] if n > 1 else []) + (["BW"] if table.split_backward else [])
    kind = data.draw(st.sampled_from(kinds))
    s = data.draw(st.integers(0, n - 2)) if kind in ("FF", "BB") else data.draw(st.integers(0, n - 1))
    i = data.draw(st.integers(0, table.microbatches - 1))
    before, after = {
        "FF": (("F", s, i), ("F", s + 1, i)),
        "FB": (("F", s, i), ("B", s, i)),
        "BB": (("B", s + 1, i), ("B", s, i)),
        "BW": (("B", s, i), ("W", s, i)),
    }[kind]
    a, b = where[before], where[after]
    if kind == "BW" and a.tick == b.tick:
        # A W may share its B's tick; move it to the tick before its B instead.
        moved = Op(a.tick - 1, b.stage, "W", b.microbatch, b.chunk)
        ops = [moved if op == b else op for op in table.ops]
    else:
        ops = [
            Op(b.tick, a.stage, a.kind, a.microbatch, a.chunk)
            if op == a
            else Op(a.tick, b.stage, b.kind, b.microbatch, b.chunk)
            if op == b
            else op
            for op in table.ops
        ]
    problems = schedule_problems(replace_ops(table, ops))
    assert any("runs before" in problem or "runs two" in problem or "outside" in problem for problem in problems)


def test_a_w_before_its_b_is_named_with_its_cells():
    table = build_schedule("zbh1", 2, 4)
    w = next(op for op in table.ops if op.kind == "W" and op.stage == 1 and op.microbatch == 3)
    b = next(op for op in table.ops if op.kind == "B" and op.stage == 1 and op.microbatch == 3)
    ops = [Op(b.tick - 1, 1, "W", 3) if op == w else op for op in table.ops]
    problems = schedule_problems(replace_ops(table, ops))
    assert f"W(1, mb 3) at tick {b.tick - 1} runs before B(1, mb 3) at tick {b.tick}" in problems


def test_slots_follow_the_live_intervals():
    from titanax.lowering.pipeline_tables import PipelineTables

    for p, m in ((4, 16), (4, 32), (2, 9)):
        lockstep = PipelineTables.build(build_schedule("1f1b", p, m))
        # Device 0's in-flight microbatches and one more (a slot a backward frees is taken the next tick), never m.
        assert lockstep.res_slots == 2 * p
        assert lockstep.act_slots == 1 and lockstep.cot_slots == 1  # consumed the tick after they arrive
        assert PipelineTables.build(build_schedule("gpipe", p, m)).res_slots == m
        zero_bubble = PipelineTables.build(build_schedule("zbh1", p, m))
        assert zero_bubble.res_slots == 2 * p and zero_bubble.wres_slots <= 2 * p


def test_the_schedule_is_in_the_ir_and_reads_back():
    plan = tx.Plan(data_parallel=tx.DP(axis="data"), pipeline_parallel=tx.PP(axis="pipe", microbatches=4))
    ir = compile_plan(tx.MeshSpec(axes=("data", "pipe"), shape=(2, 2)), plan, target=Target(device_count=4))
    ops = list(ir.items(ScheduleOpNode))
    assert len(ops) == 2 * 2 * 4
    assert schedule_from_ir(ir) == build_schedule("1f1b", 2, 4)
    text = print_ir(ir)
    assert '%schedule.1.1 = schedule_op {tick = 1, stage = 1, op = "forward", microbatch = 0, chunk = 0}' in text
    assert "%schedule.1.1 -runs-> %stage.1" in text and "%schedule.1.1 -next-> %schedule.1.2.F" in text
    names = {c.name for c in ir.collectives()}
    assert {"pp_activations", "pp_cotangents", "pp_replicated_grads", "pp_loss", "grad_sync"} <= names


def test_timeline_and_svg(tmp_path, capsys):
    plan = tmp_path / "pp.tx"
    plan.write_text("mesh { pipe = 4 }\npipeline over pipe { schedule = gpipe microbatches = 4 }\n")
    svg = tmp_path / "schedule.svg"
    assert main(["compile", str(plan), "--schedule", "--schedule-svg", str(svg)]) == 0
    out = capsys.readouterr().out
    assert "gpipe: 4 stages, 4 microbatches, 14 ticks; modelled time 21 over ideal 12 = 1.750, bubble 42.9%" in out
    assert "    3 | .  .  .  F0 F1 F2 F3 B0 B1 B2 B3 .  .  .  " in out
    picture = svg.read_text()
    assert picture.startswith("<svg") and picture.count("<title>tick") == 32


def test_schedule_of_a_plan_without_pipeline_is_an_error(tmp_path, capsys):
    plan = tmp_path / "dp.tx"
    plan.write_text("mesh { data = 8 }\ndata_parallel over data\n")
    assert main(["compile", str(plan), "--schedule"]) == 1
    assert "error[TX232]" in capsys.readouterr().err


# -- validation before any JAX work ------------------------------------------------
def pipeline_errors(text, devices=8):
    with pytest.raises(tx.TitanaxError) as info:
        tx.load_plan(text=text, name="pp.tx").compile(target=Target(device_count=devices))
    return {d.code: d.message for d in info.value.diagnostics}


def test_stage_count_must_equal_the_pipeline_axis():
    errors = pipeline_errors("mesh { data = 2, pipe = 4 }\npipeline over pipe { microbatches = 8 stage [a] stage [b] }")
    assert "the pipeline has 2 stages but axis 'pipe' has size 4" in errors["TX212"]


def test_1f1b_needs_as_many_microbatches_as_stages():
    errors = pipeline_errors("mesh { data = 2, pipe = 4 }\npipeline over pipe { schedule = 1f1b microbatches = 2 }")
    assert "2 microbatches, 4 stages" in errors["TX213"]


def test_gpipe_accepts_fewer_microbatches_than_stages():
    plan = tx.load_plan(text="mesh { pipe = 4 }\npipeline over pipe { schedule = gpipe microbatches = 2 }")
    assert schedule_from_ir(plan.compile(target=Target(device_count=4))).ticks == 2 * (2 + 4 - 1)


def test_batch_must_split_into_microbatches_on_every_replica():
    import jax.numpy as jnp
    from tests_helpers_pp import tiny_engine_and_step

    engine, step, params = tiny_engine_and_step()
    state = engine.create_state(params)
    with pytest.raises(tx.BatchError, match="(?s)TX304.*multiple of 8"):
        step(state, {"x": jnp.ones((12, 4)), "y": jnp.ones((12, 2))})


def test_stage_balance_and_layout_are_checked_against_the_parameters():
    import jax.numpy as jnp

    text = (
        "mesh { devices = 2, pipe = 2 }\n"
        "pipeline over pipe { microbatches = 2 stage [embed, blocks[0:1]] stage [blocks[1:2], head] }"
    )
    loaded = tx.load_plan(text=text, name="pp.tx")
    engine = tx.Engine(mesh=loaded.mesh, plan=loaded.plan, optimizer=tx.optim.sgd(0.1))
    heavy_embed = {
        "embed": {"w": jnp.ones((64, 16))},
        "blocks": {"w": jnp.ones((2, 16, 16))},
        "head": {"w": jnp.ones((16, 2))},
    }
    with pytest.raises(tx.PlanError) as info:
        engine.create_state(heavy_embed)
    assert info.value.code == "TX228"
    assert "stage 0: 1,280, stage 1: 288" in str(info.value) and "balance_tolerance 1.25" in str(info.value)
    with pytest.raises(tx.PlanError, match="TX226"):
        engine.create_state({**heavy_embed, "blocks": {"w": jnp.ones((3, 16, 16))}})


def test_a_pipeline_plan_whose_step_skips_the_pipeline_is_a_clear_error():
    import jax
    import jax.numpy as jnp
    from tests_helpers_pp import tiny_engine_and_step

    engine, _, params = tiny_engine_and_step()

    @tx.step_fn
    def plain(state, batch):
        def loss(p):
            x = batch["x"] @ p["embed"]["w"]
            x = jax.lax.scan(lambda h, layer: (jnp.tanh(h @ layer["w"]), None), x, p["blocks"])[0]
            return jnp.mean((x @ p["head"]["w"] - batch["y"]) ** 2)

        value, grads = jax.value_and_grad(loss)(state.params)
        return state.apply_gradients(grads=grads), {"loss": value}

    with pytest.raises(tx.StepFnError, match="TX512.*tx.pipeline.value_and_grad"):
        plain(engine.create_state(params), {"x": jnp.ones((8, 4)), "y": jnp.ones((8, 2))})


def test_scalar_batch_leaves_cannot_be_split_into_microbatches():
    import jax.numpy as jnp
    from tests_helpers_pp import tiny_engine_and_step

    engine, step, params = tiny_engine_and_step()
    with pytest.raises(tx.BatchError, match="TX303"):
        step(engine.create_state(params), {"x": jnp.ones((8, 4)), "y": jnp.ones((8, 2)), "scale": jnp.float32(2.0)})


def test_missing_prerequisites_hint_is_a_runnable_pipeline(capsys):
    plan = "examples/plans/dp.tx"
    assert (
        main(["compile", plan, "--passes", "check-mesh,check-tensor-parallel,infer-mesh-shape,check-stage-balance"])
        == 1
    )
    hint = capsys.readouterr().err.split("--passes ")[1].split()[0]
    assert main(["compile", plan, "--devices", "8", "--passes", hint]) == 0


def test_stacked_layers_that_do_not_split_report_only_that():
    from titanax.passes import CheckStageBalance, PassPipeline, ResolveShardings

    loaded = tx.load_plan(
        text="mesh { pipe = 2 }\npipeline over pipe { microbatches = 2 stage [embed, blocks[0:1]] stage [blocks[1:3], head] }"
    )
    ir = loaded.compile(target=Target(device_count=2))
    # The stage lines run 3 layers (1 + 2, stored padded) but the stack has 4.
    resolve = ResolveShardings(parameters=(("embed/w", (4, 16)), ("blocks/w", (4, 16, 16)), ("head/w", (16, 2))))
    with pytest.raises(tx.PlanError) as info:
        PassPipeline([resolve, CheckStageBalance()]).run(ir, Target(device_count=2))
    assert [d.code for d in info.value.diagnostics] == ["TX226"]


def test_stage_flops_from_cost_analysis_must_be_balanced():
    import jax.numpy as jnp
    from tests_helpers_pp import tiny_engine_and_step

    engine, step, params = tiny_engine_and_step()
    batch = {"x": jnp.ones((8, 4)), "y": jnp.ones((8, 2))}
    state, _ = step(engine.create_state(params), batch)
    flops = step.trace(state, batch).stage_flops
    assert len(flops) == 2 and flops[0] > 0 and max(flops) / min(flops) <= 1.25

    heavy = tx.PipelineModel(  # the first stage also runs a 256-wide layer: far more work
        first=lambda o, mb: jnp.tanh(mb["x"] @ o["embed"]["w"]) @ o["embed"]["v"],
        block=lambda layer, x: jnp.tanh(x @ layer["w"]),
        last=lambda o, x, mb: jnp.mean((x @ o["head"]["w"] - mb["y"]) ** 2),
    )

    @tx.step_fn
    def heavy_step(state, batch):
        loss, grads = tx.pipeline.value_and_grad(heavy, state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    params = {**params, "embed": {"w": jnp.ones((4, 256)), "v": jnp.ones((256, 8)) / 256}}
    with pytest.raises(tx.PlanError, match=r"TX228.*forward FLOPs per microbatch stage 0: .*XLA cost analysis") as info:
        heavy_step(engine.create_state(params), batch)
    assert "move work out of the model's first function" in str(info.value)
