"""The audit: every plan's compiled HLO communicates exactly what its IR lists, row by row
(kind, mesh axes, reduction, permute pairs, runs per step, bytes and dtypes)."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from models import GPT, gpt_batches, gpt_pipeline_step, init_mlp, make_batches, mlp_loss

import titanax as tx
from titanax import nn
from titanax.ir import CollectiveNode, build_schedule
from titanax.lowering import audit_collectives, trace

GPT_STACKED = {**GPT, "layers": 4}


@tx.step_fn
def mlp_step(state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


@tx.step_fn
def gpt_step(state, batch):
    loss, grads = tx.value_and_grad(nn.gpt_loss)(state.params, batch["ids"], batch["labels"])
    return state.apply_gradients(grads=grads), {"loss": loss}


def mlp_audit(accumulate_steps=1):
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data", accumulate_steps=accumulate_steps)),
        optimizer=tx.optim.sgd(0.1),
    )
    return mlp_step.audit(engine.create_state(init_mlp()), make_batches(1, 32)[0])


def gpt_audit(shape, *, sequence_parallel=False, precision=None, optimizer=None, accumulate_steps=1):
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=shape),
        plan=tx.Plan(
            data_parallel=tx.DP(axis="data", accumulate_steps=accumulate_steps),
            tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES, sequence_parallel=sequence_parallel),
            precision=precision,
        ),
        optimizer=optimizer or tx.optim.sgd(0.1),
    )
    state = engine.create_state(nn.init_gpt(jax.random.PRNGKey(0), **GPT))
    return gpt_step.audit(state, gpt_batches(1, 8)[0])


def pipeline_audit(shape, schedule, *, sequence_parallel=False, precision=None, virtual_stages=1, remat="none"):
    pp = tx.PP(axis="pipe", microbatches=4, schedule=schedule, virtual_stages=virtual_stages, remat=remat)
    plan = tx.Plan(
        data_parallel=tx.DP(axis="data"),
        tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES, sequence_parallel=sequence_parallel),
        pipeline_parallel=pp,
        precision=precision,
    )
    devices = shape[0] * shape[1] * shape[2]
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model", "pipe"), shape=shape, devices=devices),
        plan=plan,
        optimizer=tx.optim.sgd(0.1),
    )
    state = engine.create_state(nn.init_gpt(jax.random.PRNGKey(0), stacked=True, **GPT_STACKED))
    return gpt_pipeline_step.audit(state, gpt_batches(1, 8)[0])


def rows(audit):
    """``{(op, axes, reduction, runs per step): HLO bytes}`` of the rows that cross devices."""
    return {(r.op, r.axes, r.reduction, r.executions): r.hlo_bytes for r in audit.rows if not r.trivial}


def assert_ok(audit):
    assert audit.ok, "\n" + audit.table()


def test_dp_audit_rows():
    audit = mlp_audit()
    assert_ok(audit)
    param_bytes = sum(x.size * 4 for x in jax.tree.leaves(init_mlp()))
    assert rows(audit) == {("all-reduce", ("data",), "sum", 1): param_bytes + 4}


def test_dp_with_accumulation_syncs_once_per_step():
    audit = mlp_audit(accumulate_steps=4)
    assert_ok(audit)
    assert [r.executions for r in audit.rows] == [1]


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp", "tp+sp"])
def test_tp_audit(sequence_parallel):
    audit = gpt_audit((2, 4), sequence_parallel=sequence_parallel)
    assert_ok(audit)
    kinds = {(op, axes) for op, axes, _, _ in rows(audit)}
    expected = {("all-reduce", ("data",)), ("all-reduce", ("model",))}
    if sequence_parallel:
        expected |= {("all-gather", ("model",)), ("reduce-scatter", ("model",))}
    assert kinds == expected


def test_bfloat16_with_adamw_and_clipping_bytes_are_the_backends():
    optimizer = tx.optim.chain(tx.optim.clip_by_global_norm(1.0), tx.optim.adamw(1e-3))
    audit = gpt_audit((4, 2), precision=tx.Precision(compute="bfloat16"), optimizer=optimizer)
    assert_ok(audit)
    # XLA:CPU moves bfloat16 collectives as float32; the IR annotated for CPU says the same.
    assert all(r.ir_dtypes == {"float32"} for r in audit.rows)


def test_float16_under_tp_lists_the_overflow_count():
    audit = gpt_audit((2, 4), precision=tx.Precision(compute="float16"))
    assert_ok(audit)
    count = [r for r in audit.rows if "int32" in r.ir_dtypes]
    assert [(r.op, r.axes, r.reduction, r.executions) for r in count] == [("all-reduce", ("model",), "sum", 1)]
    assert "collective.grad_finite" in count[0].ir_nodes


@pytest.mark.slow
def test_tp_with_accumulation_runs_user_collectives_once_per_microbatch():
    audit = gpt_audit((2, 4), accumulate_steps=2)
    assert_ok(audit)
    assert {r.executions for r in audit.rows if r.axes == ("model",)} == {2}


def test_dp_x_tp_x_pp_1f1b_audit():
    audit = pipeline_audit((2, 2, 2), "1f1b")
    assert_ok(audit)
    ticks = 4 + 2 * 2 - 1  # lockstep 1F1B: m + 2p - 1
    permutes = {r.moves: r.executions for r in audit.rows if r.op == "collective-permute"}
    assert permutes == {((0, 1),): ticks, ((1, 0),): ticks}


@pytest.mark.parametrize(("schedule", "virtual"), [("zbh1", 1), ("interleaved", 2)], ids=["zbh1", "interleaved-v2"])
def test_dp_x_tp_x_pp_new_schedules_audit(schedule, virtual):
    audit = pipeline_audit((2, 2, 2), schedule, virtual_stages=virtual)
    assert_ok(audit)
    ticks = build_schedule(schedule, 2, 4, virtual).ticks
    permutes = [(r.moves, r.executions) for r in audit.rows if r.op == "collective-permute"]
    if virtual == 1:
        assert sorted(permutes) == [(((0, 1),), ticks), (((1, 0),), ticks)]
    else:  # chunks go round the devices: both permutes also wrap, so their pairs are the same ring
        assert {executions for _, executions in permutes} == {ticks}
        assert {pair for moves, _ in permutes for pair in moves} == {(0, 1), (1, 0)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "schedule", "sequence_parallel", "precision", "remat"),
    [
        ((1, 1, 4), "gpipe", False, None, "none"),
        ((1, 1, 4), "1f1b", False, None, "none"),
        ((1, 1, 4), "zbh1", False, None, "none"),
        ((1, 1, 4), "1f1b", False, None, "full"),
        ((2, 2, 2), "gpipe", False, None, "none"),
        ((2, 2, 2), "1f1b", True, None, "dots"),
        ((1, 2, 2), "1f1b", False, "float16", "none"),
    ],
    ids=["gpipe-pp4", "1f1b-pp4", "zbh1-pp4", "1f1b-pp4-remat-full", "3d-gpipe", "3d-1f1b-sp-dots", "tp2xpp2-float16"],
)
def test_pipeline_audits(shape, schedule, sequence_parallel, precision, remat):
    policy = tx.Precision(compute=precision) if precision else None
    audit = pipeline_audit(shape, schedule, sequence_parallel=sequence_parallel, precision=policy, remat=remat)
    assert_ok(audit)
    p = shape[2]
    ticks = build_schedule(schedule, p, 4).ticks
    forward = tuple((s, s + 1) for s in range(p - 1))
    assert {r.moves: r.executions for r in audit.rows if r.op == "collective-permute"} == {
        forward: ticks,
        tuple(sorted((b, a) for a, b in forward)): ticks,
    }


C = tx.collectives


@tx.step_fn
def every_collective(state, batch):
    rank = C.axis_index("model").astype(jnp.float32)
    pieces = jnp.arange(4.0) * (rank + 1)
    ring = [(i, (i + 1) % 4) for i in range(4)]
    metrics = {
        "psum": C.psum(rank, "model"),
        # Distinct operands: XLA merges identical collectives (CSE), which the audit would report.
        "pmean": C.pmean(rank * 2, "model"),
        "pmax": C.pmax(lax.stop_gradient(rank), "model"),
        "pmin": C.pmin(lax.stop_gradient(rank), "model"),
        "gathered": C.pmean(jnp.sum(C.all_gather(rank[None], "model")), "model"),
        "scattered": C.psum(C.psum_scatter(pieces, "model")[0], "model"),
        "ring": C.psum(C.ppermute(rank, "model", ring), "model"),
        "exchanged": C.psum(C.all_to_all(pieces[:, None], "model", split_dim=0, concat_dim=1)[0, 0], "model"),
    }
    return state, metrics


def test_user_code_calling_every_collective_kind():
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(2, 4)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model")),
        optimizer=tx.optim.sgd(0.1),
    )
    audit = every_collective.audit(engine.create_state({"w": jnp.ones((2,))}), {"x": jnp.arange(8.0)})
    assert_ok(audit)
    assert {r.op for r in audit.rows} == {
        "all-reduce",
        "all-gather",
        "reduce-scatter",
        "collective-permute",
        "all-to-all",
    }
    ring = next(r for r in audit.rows if r.op == "collective-permute")
    assert ring.moves == ((0, 1), (1, 2), (2, 3), (3, 0))


# -- mutations: the audit must fail ----------------------------------------------------
def audit_with_ir(state, batch, step, edit_ir):
    ir = edit_ir(step.plan_ir(state, batch))
    hlo = step.lower(state, batch).compile().as_text()
    return audit_collectives(ir, hlo, state.engine.mesh.shape)


def dp_tp_state():
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(2, 4)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES)),
        optimizer=tx.optim.sgd(0.1),
    )
    return engine.create_state(nn.init_gpt(jax.random.PRNGKey(0), **GPT)), gpt_batches(1, 8)[0]


def test_gradients_synced_over_the_wrong_axes_fail_the_audit(monkeypatch):
    """The emitter syncs gradients over every axis (a group of 8, not 2): the trace check stops it
    first (TX903), and with that check disabled the audit still sees it."""
    from titanax.lowering import collectives

    real = collectives._emit_leaf

    def wrong_axes(node_id, node, x):
        if node.operand == "gradients":
            return lax.pmean(collectives.ensure_varying(x, ("data", "model")), ("data", "model"))
        return real(node_id, node, x)

    monkeypatch.setattr(collectives, "_emit_leaf", wrong_axes)
    state, batch = dp_tp_state()
    with pytest.raises(tx.TitanaxError, match="TX903.*grad_sync"):
        gpt_step.plan_ir(state, batch)
    monkeypatch.setattr(trace, "check_emitted", lambda traced, ir: None)
    monkeypatch.setattr("titanax.lowering.step.check_emitted", lambda traced, ir: None)
    audit = gpt_step.audit(*dp_tp_state())
    assert not audit.ok
    assert any(r.axes == ("data", "model") and not r.ir_nodes for r in audit.rows)


def test_a_collective_missing_from_the_ir_fails_the_audit():
    state, batch = dp_tp_state()

    def hide_one_user_collective(ir):
        # The IR now says nothing about one of the step's all-reduces over 'model' (its bytes are
        # listed, wrongly, over 'data'): the HLO's 'model' row has a collective the IR lacks.
        victim, node = next((i, n) for i, n in ir.items(CollectiveNode) if n.origin == "user")
        ir.replace(victim, dataclasses.replace(node, axes=("data",)))
        return ir

    audit = audit_with_ir(state, batch, gpt_step, hide_one_user_collective)
    assert not audit.ok
    assert any(not r.ok for r in audit.rows)
    assert "MISMATCH" in audit.table()


def test_a_permute_in_the_wrong_direction_fails_the_audit():
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model", "pipe"), shape=(1, 1, 4), devices=4),
        plan=tx.Plan(pipeline_parallel=tx.PP(axis="pipe", microbatches=4)),
        optimizer=tx.optim.sgd(0.1),
    )
    state = engine.create_state(nn.init_gpt(jax.random.PRNGKey(0), stacked=True, **GPT_STACKED))
    batch = gpt_batches(1, 8)[0]

    def reverse_activations(ir):
        node = ir.node("collective.pp_activations")
        ir.replace("collective.pp_activations", dataclasses.replace(node, permutation=((1, 0), (2, 1), (3, 2))))
        return ir

    assert gpt_pipeline_step.audit(state, batch).ok
    audit = audit_with_ir(state, batch, gpt_pipeline_step, reverse_activations)
    assert not audit.ok


# -- titanax audit ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "plan",
    [
        "gpt_small/plans/3d",
        pytest.param("gpt_small/plans/dp", marks=pytest.mark.slow),
        pytest.param("gpt_small/plans/tp", marks=pytest.mark.slow),
        pytest.param("gpt_small/plans/dp_tp", marks=pytest.mark.slow),
        pytest.param("gpt_small/plans/dp_tp_sp", marks=pytest.mark.slow),
        pytest.param("gpt_small/plans/dp_pp", marks=pytest.mark.slow),
        pytest.param("gpt_small/plans/fsdp", marks=pytest.mark.slow),
        pytest.param("gpt_small/plans/fsdp_tp", marks=pytest.mark.slow),
        pytest.param("llama_small/plans/3d", marks=pytest.mark.slow),
        pytest.param("llama_small/plans/fsdp_tp", marks=pytest.mark.slow),
    ],
)
def test_every_example_plan_passes_the_audit(plan, capsys):
    from titanax.cli import main

    assert main(["audit", f"examples/{plan}.tx"]) == 0
    out = capsys.readouterr().out
    assert "ok: the compiled step communicates exactly what the IR lists" in out
    assert "all-reduce" in out and "HLO bytes" in out


def test_audit_command_exits_1_and_names_the_row(monkeypatch, capsys):
    from titanax.cli import main
    from titanax.lowering import AuditRow, CollectiveAudit
    from titanax.runtime.step_fn import StepFn

    bad = AuditRow(op="all-reduce", axes=("data",), reduction="sum", moves=(), executions=1, hlo_bytes=64)
    monkeypatch.setattr(StepFn, "audit", lambda self, state, batch: CollectiveAudit(rows=(bad,)))
    assert main(["audit", "examples/gpt_small/plans/dp.tx"]) == 1
    captured = capsys.readouterr()
    assert "NOT IN IR" in captured.out
    assert "error[TX904]" in captured.err and "1 row(s)" in captured.err
