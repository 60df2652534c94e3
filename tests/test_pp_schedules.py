"""Every pipeline schedule and remat policy against the sequential single-device reference.

GPipe, lockstep 1F1B, interleaved 1F1B (two chunks per device), ZB-H1 (split
backward) and tables users write, each with ``remat = none`` (residuals stashed,
no forward runs twice) and ``remat = full`` (the backward reruns the forward),
train an MLP with SGD: losses and parameters after each step must match plain
JAX within 1e-5, and the schedules must agree with each other. Stages of
different sizes, DP x TP x PP compositions with the new schedules (a GPT), and
the errors of schedule tables and stage splits are checked here too.
"""

import jax
import models
import numpy as np
import pytest
from models import gpt_batches, gpt_pipeline_step, max_relative_error
from test_pp_numerics import (
    GPT_STACKED,
    LR,
    REFERENCE,
    gpt_reference,
    mlp_batches,
    mlp_params,
    run,
    sgd_reference,
)

import titanax as tx
from titanax import nn
from titanax.ir import Op, Schedule, build_schedule, schedule_from_ir
from titanax.passes import Target

SCHEDULES = [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("zbh1", 1)]


def train(schedule, virtual, stages, microbatches, remat, batches, layers=None):
    params = mlp_params(layers or 2 * stages * virtual)
    pp = tx.PP(axis="pipe", microbatches=microbatches, schedule=schedule, virtual_stages=virtual, remat=remat)
    return run(tx.Plan(pipeline_parallel=pp), tx.MeshSpec(devices=stages, axes=("pipe",)), params, batches), params


FAST = [(s, v, p, m, r) for s, v in SCHEDULES for r in ("none", "full") for p, m in ((2, 2), (2, 5))]
FAST += [(s, v, 4, 4, "none") for s, v in SCHEDULES]
SLOW = [(s, v, p, m, r) for s, v in SCHEDULES for r in ("none", "full") for p, m in ((4, 4), (4, 9))]
SLOW = [case for case in SLOW if case not in FAST]


def check_against_reference(schedule, virtual, stages, microbatches, remat):
    batches = mlp_batches(2, 2 * microbatches)
    (losses, _, state), params = train(schedule, virtual, stages, microbatches, remat, batches)
    got = jax.device_get(state.engine.params_in_model_order(state))
    ref_losses, ref_params = sgd_reference(REFERENCE, params, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(got, ref_params) < 1e-5
    return got


def ids(cases):
    return [f"{s}{'-v' + str(v) if v > 1 else ''}-p{p}-m{m}-{r}" for s, v, p, m, r in cases]


@pytest.mark.parametrize(("schedule", "virtual", "stages", "microbatches", "remat"), FAST, ids=ids(FAST))
def test_schedule_and_remat_match_the_sequential_reference(schedule, virtual, stages, microbatches, remat):
    check_against_reference(schedule, virtual, stages, microbatches, remat)


@pytest.mark.slow
@pytest.mark.parametrize(("schedule", "virtual", "stages", "microbatches", "remat"), SLOW, ids=ids(SLOW))
def test_schedule_and_remat_match_the_sequential_reference_p4(schedule, virtual, stages, microbatches, remat):
    check_against_reference(schedule, virtual, stages, microbatches, remat)


def test_every_schedule_gives_the_same_parameters():
    batches = mlp_batches(1, 8)
    results = {}
    for schedule, virtual in SCHEDULES:
        (_, _, state), _ = train(schedule, virtual, 2, 4, "none", batches, layers=4)
        results[schedule] = jax.device_get(state.engine.params_in_model_order(state))
    for schedule, got in results.items():
        assert max_relative_error(got, results["gpipe"]) < 1e-6, schedule


# -- schedules users write ---------------------------------------------------------------------
def user_table(path, p, m):
    """A valid table no builder makes: lockstep 1F1B with every backward of device 0 one tick later."""
    table = build_schedule("1f1b", p, m)
    late = tuple(Op(o.tick + (o.kind == "B" and o.stage == 0), o.stage, o.kind, o.microbatch) for o in table.ops)
    path.write_text(Schedule("user", p, m, tuple(sorted(late))).timeline())
    return str(path)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_a_user_table_runs_and_matches_the_reference(tmp_path, remat):
    p, m = 2, 5
    batches = mlp_batches(2, 2 * m)
    params = mlp_params(4)
    pp = tx.PP(axis="pipe", microbatches=m, table=user_table(tmp_path / "late.sched", p, m), remat=remat)
    assert pp.schedule == "user"
    losses, got, _ = run(tx.Plan(pipeline_parallel=pp), tx.MeshSpec(devices=p, axes=("pipe",)), params, batches)
    ref_losses, ref_params = sgd_reference(REFERENCE, params, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(got, ref_params) < 1e-5


def test_a_zero_bubble_table_written_out_runs_as_a_user_table(tmp_path):
    table = tmp_path / "zb.sched"
    table.write_text(build_schedule("zbh1", 2, 4).timeline())
    text = f'mesh {{ devices = 2, pipe = 2 }}\npipeline over pipe {{ microbatches = 4 table = "{table}" }}\n'
    loaded = tx.load_plan(text=text)
    schedule = schedule_from_ir(loaded.compile(target=Target(device_count=2)))
    assert schedule.split_backward and schedule.ops == build_schedule("zbh1", 2, 4).ops
    batches, params = mlp_batches(1, 8), mlp_params(4)
    _, got, _ = run(loaded.plan, loaded.mesh, params, batches)
    assert max_relative_error(got, sgd_reference(REFERENCE, params, batches)[1]) < 1e-5


def table_errors(tmp_path, rows, microbatches=2):
    (tmp_path / "t.sched").write_text(rows)
    plan = tmp_path / "p.tx"
    plan.write_text(f'mesh {{ pipe = 2 }}\npipeline over pipe {{ microbatches = {microbatches} table = "t.sched" }}\n')
    with pytest.raises(tx.TitanaxError) as info:
        tx.load_plan(plan).compile(target=Target(device_count=2))
    return info.value.diagnostics


def test_a_wrong_table_names_the_cells(tmp_path):
    # B0 on device 0 at tick 2 comes before B0 on device 1 (tick 3); F1 and B1 on device 1 never run.
    found = table_errors(tmp_path, "0 | F0 F1 B0 B1\n1 | .  F0 .  B0\n")
    assert {d.code for d in found} == {"TX237"}
    (early,) = [d for d in found if "runs before" in d.message]
    assert "B(0, mb 0) at tick 2 runs before B(1, mb 0) at tick 3" in early.message
    assert (early.location.line, early.location.column) == (1, 11) and early.location.path.endswith("t.sched")
    missing = [d for d in found if "never runs" in d.message]
    assert {d.message.split(": ")[1] for d in missing} == {"F(1, mb 1) never runs", "B(1, mb 1) never runs"}
    assert all(d.location.path.endswith("p.tx") for d in missing)  # no cell to point at: the pipeline statement


def test_malformed_tables_are_located(tmp_path):
    (d,) = table_errors(tmp_path, "0 | F0 X1\n1 | . F0\n")
    assert d.code == "TX236" and (d.location.line, d.location.column) == (1, 8)
    (d,) = table_errors(tmp_path, "0 | F0 F0+F1\n1 | . F0\n")
    assert d.code == "TX236" and "two F ops" in d.message
    (d,) = table_errors(tmp_path, "0 | F0\n0 | F1\n")
    assert d.code == "TX236" and "second row" in d.message
    (d,) = table_errors(tmp_path, "0 | F0 F1 . B0 B1\n1 | . F0 B0+F1 B1\n2 | F0\n")
    assert d.code == "TX237" and "row for device 2" in d.message
    (d,) = table_errors(tmp_path, "0 | F0 F1 . B0 B1 F2\n1 | . F0 B0+F1 B1\n")
    assert d.code == "TX237" and "outside the table" in d.message


def test_a_table_and_a_built_schedule_cannot_both_be_named():
    with pytest.raises(tx.PlanError, match="TX204.*both say which schedule runs"):
        tx.PP(axis="pipe", microbatches=4, schedule="gpipe", table="t.sched")


# -- stages of different sizes -----------------------------------------------------------------
UNEVEN = [("1f1b", (4, 3)), ("zbh1", (4, 3)), ("gpipe", (2, 3, 2))]


@pytest.mark.parametrize(("schedule", "counts"), UNEVEN, ids=[f"{s}-{'+'.join(map(str, c))}" for s, c in UNEVEN])
def test_stages_of_different_sizes_match_the_reference(schedule, counts):
    starts = np.cumsum((0, *counts))
    stages = [[f"blocks[{a}:{b}]"] for a, b in zip(starts[:-1], starts[1:], strict=True)]
    stages[0].insert(0, "embed")
    stages[-1].append("head")
    p, m = len(counts), 4
    pp = tx.PP(axis="pipe", microbatches=m, schedule=schedule, stages=stages, balance_tolerance=2.0)
    params, batches = mlp_params(sum(counts)), mlp_batches(2, 2 * m)
    losses, _, state = run(tx.Plan(pipeline_parallel=pp), tx.MeshSpec(devices=p, axes=("pipe",)), params, batches)
    # Stored padded: every device holds the largest stage's rows, the smaller stages' last rows zero.
    stored = state.params["blocks"]["w"]
    assert stored.shape == (p * max(counts), *params["blocks"]["w"].shape[1:])
    assert stored.addressable_shards[0].data.shape[0] == max(counts)
    got = jax.device_get(state.engine.params_in_model_order(state))
    assert got["blocks"]["w"].shape == params["blocks"]["w"].shape
    ref_losses, ref_params = sgd_reference(REFERENCE, params, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(got, ref_params) < 1e-5
    padding = [r for s, n in enumerate(counts) for r in range(s * max(counts) + n, (s + 1) * max(counts))]
    assert not np.any(np.asarray(stored)[padding])


def test_stage_lines_must_tile_the_stack_in_order():
    text = "mesh { pipe = 2 }\npipeline over pipe { microbatches = 2 stage [embed, blocks[0:4]] stage [blocks[5:7], head] }"
    from titanax.passes import CheckStageBalance, PassPipeline, ResolveShardings

    ir = tx.load_plan(text=text).compile(target=Target(device_count=2))
    resolve = ResolveShardings(parameters=(("embed/w", (4, 16)), ("blocks/w", (7, 16, 16)), ("head/w", (16, 2))))
    with pytest.raises(tx.PlanError) as info:
        PassPipeline([resolve, CheckStageBalance()]).run(ir, Target(device_count=2))
    assert [d.code for d in info.value.diagnostics] == ["TX226"]  # the lines run 6 layers, the stack has 7
    resolve = ResolveShardings(parameters=(("embed/w", (4, 16)), ("blocks/w", (6, 16, 16)), ("head/w", (16, 2))))
    with pytest.raises(tx.PlanError) as info:
        PassPipeline([resolve, CheckStageBalance()]).run(ir, Target(device_count=2))
    (d,) = [d for d in info.value.diagnostics if d.code == "TX227"]
    assert "stage 1 runs ['blocks[5:7]', 'head']" in d.message and "must run blocks[4:6]" in d.message


# -- the new schedules composed with DP and TP -------------------------------------------------
COMPOSED = [
    ("zbh1", 1, "none", False),
    ("interleaved", 2, "none", True),
    pytest.param("1f1b", 1, "dots", True, marks=pytest.mark.slow),
    pytest.param("zbh1", 1, "full", True, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("schedule", "virtual", "remat", "sequence_parallel"), COMPOSED)
def test_dp_x_tp_x_pp_with_the_new_schedules_match_the_gpt_reference(schedule, virtual, remat, sequence_parallel):
    params = nn.init_gpt(jax.random.PRNGKey(0), stacked=True, **GPT_STACKED)
    batches = gpt_batches(2, 8)
    plan = tx.Plan(
        data_parallel=tx.DP(axis="data"),
        tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES, sequence_parallel=sequence_parallel),
        pipeline_parallel=tx.PP(axis="pipe", microbatches=4, schedule=schedule, virtual_stages=virtual, remat=remat),
    )
    mesh = tx.MeshSpec(axes=("data", "model", "pipe"), shape=(2, 2, 2))
    losses, _, state = run(plan, mesh, params, batches, step=gpt_pipeline_step)
    got = jax.device_get(state.engine.params_in_model_order(state))
    ref_losses, ref_params = models.sgd_reference(gpt_reference(), params, batches, LR)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(got, ref_params) < 1e-5


def test_interleaved_chunks_must_divide_the_stack():
    plan = tx.Plan(pipeline_parallel=tx.PP(axis="pipe", microbatches=4, schedule="interleaved", virtual_stages=2))
    engine = tx.Engine(mesh=tx.MeshSpec(devices=4, axes=("pipe",)), plan=plan, optimizer=tx.optim.sgd(LR))
    for layers in (4, 12):  # 4 or 12 layers do not split into 4 devices x 2 chunks
        with pytest.raises(tx.PlanError) as info:
            engine.create_state(mlp_params(layers))
        found = info.value.diagnostics
        assert {d.code for d in found} == {"TX226"} and len(found) == 2  # blocks/b and blocks/w
        assert "the 8 model stages (4 devices of axis 'pipe' x 2 chunks)" in found[0].message
