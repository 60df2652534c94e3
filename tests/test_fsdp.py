"""Fully sharded data parallelism: numerics against one device, layouts, the HLO audit, errors, checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from models import (
    GPT,
    gpt_batches,
    gpt_pipeline_step,
    init_mlp,
    make_batches,
    max_relative_error,
    mlp_loss,
    stacked_gpt_reference,
)

import titanax as tx
from titanax import nn
from titanax.errors import PlanError, StepFnError

LR = 0.1
SLOW = pytest.mark.slow


def gpt_params(layers: int = 2) -> dict:
    return nn.init_gpt(jax.random.PRNGKey(0), **{**GPT, "layers": layers}, stacked=True)


def optax_reference(optimizer, value_and_grad, params, batches):
    """Losses, first-step gradients and final parameters of ``optimizer`` on one device."""
    opt_state = optimizer.init(params)
    losses, first_grads = [], None
    for batch in batches:
        loss, grads = value_and_grad(params, batch)
        first_grads = grads if first_grads is None else first_grads
        losses.append(float(loss))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return np.array(losses), first_grads, params


def run_steps(step, state, batches):
    """``state`` after ``step`` on each batch in turn, the losses, and the last step's metrics."""
    losses, metrics = [], {}
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses, metrics


def keep_gradients() -> optax.GradientTransformation:
    """An optimizer that changes nothing and keeps the gradients it was given as its state, so a
    test reads the step's synchronised gradients exactly (in the optimizer state's layout)."""

    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        return jax.tree.map(jnp.zeros_like, grads), grads

    return optax.GradientTransformation(init, update)


TP_RULES = tx.TP(axis="model", rules=nn.GPT_TP_RULES)
PLANS = {
    "fsdp8": (("fsdp",), (8,), {}),
    "hsdp2x4": (("data", "fsdp"), (2, 4), {"data_parallel": tx.DP(axis="data")}),
    "fsdp4xtp2": (("fsdp", "model"), (4, 2), {"tensor_parallel": TP_RULES}),
    "fsdp2xtp2xpp2": (
        ("fsdp", "model", "pipe"),
        (2, 2, 2),
        {"tensor_parallel": TP_RULES, "pipeline_parallel": tx.PP(axis="pipe", microbatches=2, schedule="1f1b")},
    ),
    "fsdp4xpp2-zbh1": (
        ("fsdp", "pipe"),
        (4, 2),
        {"pipeline_parallel": tx.PP(axis="pipe", microbatches=4, schedule="zbh1")},
    ),
}


def fsdp_engine(plan_name, optimizer, *, stage=3, accumulate=1, **fsdp):
    axes, shape, others = PLANS[plan_name]
    plan = tx.Plan(
        fully_sharded=tx.FSDP(axis="fsdp", stage=stage, min_size=64, accumulate_steps=accumulate, **fsdp), **others
    )
    return tx.Engine(mesh=tx.MeshSpec(axes=axes, shape=shape), plan=plan, optimizer=optimizer)


def check_against_reference(plan_name, optimizer, *, steps=5, **fsdp):
    """Train the stacked GPT ``steps`` steps; losses, first-step gradients and parameters must equal
    the single-device reference within 1e-5 relative."""
    params = gpt_params()
    batches = gpt_batches(steps, 16)
    reference = stacked_gpt_reference(2)
    ref_losses, ref_grads, ref_params = optax_reference(optimizer, reference, params, batches)
    probe = fsdp_engine(plan_name, keep_gradients(), **fsdp)
    kept, _ = gpt_pipeline_step(probe.create_state(params, stacked="blocks"), batches[0])
    assert max_relative_error(jax.device_get(kept.opt_state), ref_grads) < 1e-5
    engine = fsdp_engine(plan_name, optimizer, **fsdp)
    state = engine.create_state(params, stacked="blocks")
    state, losses, _ = run_steps(gpt_pipeline_step, state, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(jax.device_get(state.params), ref_params) < 1e-5
    return engine, state


@pytest.mark.parametrize(
    ("plan_name", "fsdp"),
    [
        ("fsdp8", {"stage": 3}),
        ("fsdp8", {"stage": 1}),
        ("fsdp8", {"stage": 2, "accumulate": 2}),
        ("hsdp2x4", {"stage": 3}),
        ("fsdp4xtp2", {"stage": 3}),
        ("fsdp2xtp2xpp2", {"stage": 3}),
    ],
    ids=["stage3", "stage1", "stage2-accumulate2", "hsdp-stage3", "fsdp4xtp2-stage3", "fsdp2xtp2xpp2-stage3"],
)
def test_fsdp_matches_one_device_with_sgd(plan_name, fsdp):
    check_against_reference(plan_name, tx.optim.sgd(LR), **fsdp)


# eps = 1e-4: some GPT gradients are exactly zero in exact arithmetic (the key bias: softmax ignores a
# constant added to every key) and float noise in float32; Adam's default eps (1e-8) turns that noise
# into updates of +-lr whose sign depends on summation order, in any two implementations (DP too). The
# SGD tests are the ones that catch a missing or doubled reduction; these check the sharded moments.
ADAMW = optax.adamw(1e-2, eps=1e-4, weight_decay=0.1)


@pytest.mark.parametrize(
    ("plan_name", "fsdp"),
    [
        pytest.param("fsdp8", {"stage": 3}, marks=SLOW),
        ("hsdp2x4", {"stage": 1}),
    ],
    ids=["stage3", "hsdp-stage1"],
)
def test_fsdp_matches_one_device_with_adamw(plan_name, fsdp):
    check_against_reference(plan_name, ADAMW, **fsdp)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("plan_name", "optimizer", "fsdp"),
    [
        ("fsdp8", ADAMW, {"stage": 1}),
        ("fsdp8", ADAMW, {"stage": 2}),
        ("fsdp8", tx.optim.sgd(LR), {"stage": 2}),
        ("fsdp8", tx.optim.sgd(LR), {"stage": 1, "accumulate": 2}),
        ("fsdp8", tx.optim.sgd(LR), {"stage": 3, "accumulate": 2}),
        ("fsdp8", tx.optim.sgd(LR), {"stage": 3, "reshard_after_forward": False}),
        ("hsdp2x4", tx.optim.sgd(LR), {"stage": 2, "accumulate": 2}),
        ("hsdp2x4", ADAMW, {"stage": 3}),
        ("fsdp4xtp2", ADAMW, {"stage": 3}),
        ("fsdp4xtp2", tx.optim.sgd(LR), {"stage": 1}),
        ("fsdp4xtp2", tx.optim.sgd(LR), {"stage": 2, "accumulate": 2}),
        ("fsdp2xtp2xpp2", ADAMW, {"stage": 3}),
        ("fsdp2xtp2xpp2", tx.optim.sgd(LR), {"stage": 1}),
        ("fsdp4xpp2-zbh1", tx.optim.sgd(LR), {"stage": 3}),
        ("fsdp4xpp2-zbh1", tx.optim.sgd(LR), {"stage": 2}),
    ],
)
def test_every_stage_and_composition_matches_one_device(plan_name, optimizer, fsdp):
    check_against_reference(plan_name, optimizer, **fsdp)


def test_a_plain_model_under_stage3_gathers_once_per_step():
    """A model that is not a PipelineModel: tx.value_and_grad gathers every shard before the loss."""
    params = init_mlp()
    batches = make_batches(4, 16)
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("fsdp",), shape=(8,)),
        plan=tx.Plan(fully_sharded=tx.FSDP(axis="fsdp", min_size=16)),
        optimizer=tx.optim.sgd(LR),
    )

    @tx.step_fn
    def step(state, batch):
        loss, grads = tx.value_and_grad(mlp_loss)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    state = engine.create_state(params)
    dims = {node.path: node.fsdp_dim for node in engine.ir.params()}
    # (4, 16) splits its 16 columns; (16, 3) its 16 rows; the 16-bias splits; the 3-bias stays whole.
    assert dims == {"dense1/w": 1, "dense1/b": 0, "dense2/w": 0, "dense2/b": None}
    ref_losses, _, ref_params = optax_reference(tx.optim.sgd(LR), jax.value_and_grad(mlp_loss), params, batches)
    state, losses, _ = run_steps(step, state, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(jax.device_get(state.params), ref_params) < 1e-5
    assert step.audit(state, batches[0]).ok


def test_stage3_holds_one_eighth_of_every_sharded_parameter_and_moment():
    engine = fsdp_engine("fsdp8", optax.adam(1e-3))
    state = engine.create_state(gpt_params(), stacked="blocks")
    nodes = {node.path: node for node in engine.ir.params()}
    moments = state.opt_state[0]
    for path, node in nodes.items():
        keys = path.split("/")
        param, mu = state.params, moments.mu
        for key in keys:
            param, mu = param[key], mu[key]
        local = param.addressable_shards[0].data.shape
        assert local == node.local_shape == mu.addressable_shards[0].data.shape
        whole = int(np.prod(node.shape))
        if node.fsdp_dim is None:
            assert whole // (node.shape[0] if path.startswith("blocks/") else 1) < 64  # only small ones stay whole
            assert local == node.shape
        else:
            assert int(np.prod(local)) * 8 == whole
            assert node.spec[node.fsdp_dim] == "fsdp"


def test_stages_1_and_2_keep_parameters_whole_and_shard_the_optimizer_state():
    engine = fsdp_engine("fsdp8", optax.adam(1e-3), stage=1)
    state = engine.create_state(gpt_params(), stacked="blocks")
    up = state.params["blocks"]["mlp"]["up"]["w"]
    mu = state.opt_state[0].mu["blocks"]["mlp"]["up"]["w"]
    assert up.addressable_shards[0].data.shape == (2, 32, 64)
    assert mu.addressable_shards[0].data.shape == (2, 32, 8)
    node = next(n for n in engine.ir.params() if n.path == "blocks/mlp/up/w")
    assert node.fsdp_dim == 2 and node.spec == (None, None, None)


@pytest.mark.parametrize(
    ("plan_name", "stage"),
    [
        ("fsdp8", 3),
        ("hsdp2x4", 1),
        ("fsdp4xtp2", 3),
        pytest.param("fsdp8", 1, marks=SLOW),
        pytest.param("hsdp2x4", 3, marks=SLOW),
        pytest.param("fsdp4xtp2", 1, marks=SLOW),
    ],
)
def test_the_compiled_step_moves_exactly_the_ir_collectives(plan_name, stage):
    engine = fsdp_engine(plan_name, tx.optim.sgd(LR), stage=stage)
    state = engine.create_state(gpt_params(), stacked="blocks")
    batch = gpt_batches(1, 16)[0]
    audit = gpt_pipeline_step.audit(state, batch)
    assert audit.ok, audit
    kinds = {(row.op, row.axes) for row in audit.rows}
    assert ("reduce-scatter", ("fsdp",)) in kinds and ("all-gather", ("fsdp",)) in kinds
    # No whole-gradient all-reduce over the FSDP axis: only the small whole parameters and the metrics.
    whole = [n for n in engine.ir.params() if n.fsdp_dim is None]
    small = sum(int(np.prod(n.shape)) * 4 for n in whole)
    reduced = sum(row.hlo_bytes for row in audit.rows if row.op == "all-reduce" and "fsdp" in row.axes)
    assert reduced <= small + 64


def test_stage3_gathers_each_layer_twice_and_scatters_it_once_per_step():
    engine = fsdp_engine("fsdp8", tx.optim.sgd(LR))
    engine.create_state(gpt_params(layers=4), stacked="blocks")
    nodes = {node.name: node for node in engine.ir.collectives()}
    assert nodes["fsdp_gather_layers"].executions == 4 and nodes["fsdp_regather_layers"].executions == 4
    assert nodes["fsdp_scatter_layers"].executions == 4 and nodes["fsdp_scatter_layers"].reduction == "mean"
    assert str(nodes["fsdp_gather_layers"].cadence) == "layer"
    assert nodes["fsdp_gather"].executions == 1  # embeddings and head, once per step
    keep = fsdp_engine("fsdp8", tx.optim.sgd(LR), reshard_after_forward=False)
    keep.create_state(gpt_params(layers=4), stacked="blocks")
    assert "fsdp_regather_layers" not in {node.name for node in keep.ir.collectives()}


def test_stage2_under_accumulation_scatters_each_microbatch():
    engine = fsdp_engine("fsdp8", tx.optim.sgd(LR), stage=2, accumulate=2)
    engine.create_state(gpt_params(), stacked="blocks")
    scatter = next(node for node in engine.ir.collectives() if node.name == "fsdp_scatter")
    assert str(scatter.cadence) == "microbatch" and scatter.executions == 2
    once = fsdp_engine("fsdp8", tx.optim.sgd(LR), stage=1, accumulate=2)
    once.create_state(gpt_params(), stacked="blocks")
    scatter = next(node for node in once.ir.collectives() if node.name == "fsdp_scatter")
    assert str(scatter.cadence) == "step" and scatter.executions == 1


@pytest.mark.parametrize("compute", ["float16", pytest.param("bfloat16", marks=SLOW)])
def test_precision_policies_match_plain_dp_under_the_same_policy(compute):
    """The shards are cast before they are gathered (the gathers move the compute dtype) and, under
    float16, the loss is scaled and the overflow count summed over the FSDP axis too. Against DP with
    the same policy: losses within 2e-3 and parameters within 1e-2 relative after 4 SGD steps (the
    reduce-scatter sums gradients in the compute dtype, in another order than DP's all-reduce)."""
    params = gpt_params()
    batches = gpt_batches(4, 16)
    policy = tx.Precision(compute=compute)
    runs = {}
    for name, mesh, plan in (
        ("dp", tx.MeshSpec(axes=("data",), shape=(8,)), tx.Plan(data_parallel=tx.DP(axis="data"), precision=policy)),
        (
            "fsdp",
            tx.MeshSpec(axes=("fsdp",), shape=(8,)),
            tx.Plan(fully_sharded=tx.FSDP(axis="fsdp", min_size=64), precision=policy),
        ),
    ):
        engine = tx.Engine(mesh=mesh, plan=plan, optimizer=tx.optim.sgd(LR))
        state = engine.create_state(params, stacked="blocks")
        state, losses, metrics = run_steps(gpt_pipeline_step, state, batches)
        runs[name] = (losses, jax.device_get(state.params), metrics, engine, state)
    np.testing.assert_allclose(runs["fsdp"][0], runs["dp"][0], rtol=2e-3)
    assert max_relative_error(runs["fsdp"][1], runs["dp"][1]) < 1e-2
    _, _, metrics, engine, state = runs["fsdp"]
    if compute == "float16":
        assert "loss_scale" in metrics
        finite = next(node for node in engine.ir.collectives() if node.name == "grad_finite")
        assert finite.axes == ("fsdp",)
    gathers = [n for n in gpt_pipeline_step.plan_ir(state, batches[0]).collectives() if n.name == "fsdp_gather_layers"]
    assert gathers and gpt_pipeline_step.audit(state, batches[0]).ok


@pytest.mark.slow
def test_clip_by_global_norm_counts_sharded_gradients_whole():
    optimizer = tx.optim.chain(tx.optim.clip_by_global_norm(0.05), tx.optim.sgd(LR))
    check_against_reference("hsdp2x4", optimizer, steps=2)


# -- errors ----------------------------------------------------------------------------------
def plan_error(params, **fsdp) -> PlanError:
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("fsdp", "model"), shape=(4, 2)),
        plan=tx.Plan(
            fully_sharded=tx.FSDP(axis="fsdp", **fsdp),
            tensor_parallel=tx.TP(axis="model", rules={"w": "column"}),
        ),
        optimizer=tx.optim.sgd(LR),
    )
    with pytest.raises(PlanError) as err:
        engine.create_state(params)
    return err.value


def test_layout_errors_are_located_before_any_compile():
    params = {"w": jnp.zeros((6, 8)), "v": jnp.zeros((6, 6))}
    codes = {d.code for d in plan_error(params, min_size=0).diagnostics}
    assert codes == {"TX240"}  # v: no dimension divides over 4
    err = plan_error(params, min_size=0, rules={"w": 1, "v": 5, "u": 0})
    messages = {d.code: d.message for d in err.diagnostics}
    assert "split over tensor-parallel axis 'model'" in messages["TX241"]
    assert any("has no dimension 5" in d.message for d in err.diagnostics)
    assert "'u' matches no parameter" in messages["TX242"]
    # A rule keeping v whole, and w's dimension 0 (6) does not divide over 4 either.
    err = plan_error(params, min_size=0, rules={"v": None, "w": 0})
    assert [d.code for d in err.diagnostics] == ["TX241"] and "does not split over 4" in err.diagnostics[0].message


def test_bad_settings_are_refused():
    for kwargs, code in (
        ({"stage": 4}, "TX238"),
        ({"min_size": -1}, "TX239"),
        ({"accumulate_steps": 0}, "TX203"),
        ({"rules": {"w": -1}}, "TX241"),
        ({"rules": {"w": "x"}}, "TX241"),
    ):
        with pytest.raises(PlanError) as err:
            tx.FSDP(axis="fsdp", **kwargs)
        assert err.value.diagnostics[0].code == code
    with pytest.raises(PlanError) as err:
        tx.Plan(data_parallel=tx.DP(axis="d", accumulate_steps=2), fully_sharded=tx.FSDP(axis="f", accumulate_steps=2))
    assert err.value.diagnostics[0].code == "TX204"


@pytest.mark.slow
def test_an_interleaved_pipeline_under_fsdp_matches_one_device():
    params = gpt_params(layers=4)
    batches = gpt_batches(3, 16)
    ref_losses, _, ref_params = optax_reference(tx.optim.sgd(LR), stacked_gpt_reference(4), params, batches)
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("fsdp", "pipe"), shape=(4, 2)),
        plan=tx.Plan(
            fully_sharded=tx.FSDP(axis="fsdp", min_size=64),
            pipeline_parallel=tx.PP(axis="pipe", microbatches=4, schedule="interleaved", virtual_stages=2),
        ),
        optimizer=tx.optim.sgd(LR),
    )
    state = engine.create_state(params, stacked="blocks")
    state, losses, _ = run_steps(gpt_pipeline_step, state, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(jax.device_get(engine.params_in_model_order(state)), ref_params) < 1e-5


def test_under_a_pipeline_each_stage_gathers_its_own_blocks_once_per_step():
    engine = fsdp_engine("fsdp2xtp2xpp2", tx.optim.sgd(LR))
    state = engine.create_state(gpt_params(), stacked="blocks")
    up = next(node for node in engine.ir.params() if node.path == "blocks/mlp/up/w")
    # Layers over the pipeline, the hidden units over model (column), d_model over fsdp.
    assert up.spec == ("pipe", "fsdp", "model") and up.local_shape == (1, 16, 32) and up.fsdp_gather == "step"
    names = {node.name: node for node in engine.ir.collectives()}
    assert "fsdp_gather_layers" not in names and names["fsdp_gather"].executions == 1
    assert gpt_pipeline_step.audit(state, gpt_batches(1, 16)[0]).ok


def test_stage3_gradients_taken_without_the_gathers_are_refused():
    engine = fsdp_engine("fsdp8", tx.optim.sgd(LR))
    state = engine.create_state(init_mlp() | {"x": jnp.zeros((64,))})

    @tx.step_fn
    def raw(state, batch):
        grads = jax.tree.map(jnp.zeros_like, state.params)
        return state.apply_gradients(grads=grads), {}

    with pytest.raises(StepFnError) as err:
        raw(state, make_batches(1, 16)[0])
    assert err.value.diagnostics[0].code == "TX519"


def test_stacked_layers_need_the_pipeline_value_and_grad():
    engine = fsdp_engine("fsdp8", tx.optim.sgd(LR))
    state = engine.create_state(gpt_params(), stacked="blocks")

    @tx.step_fn
    def plain(state, batch):
        loss, grads = tx.value_and_grad(lambda p: jnp.sum(p["pos"]))(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss}

    with pytest.raises(StepFnError) as err:
        plain(state, gpt_batches(1, 16)[0])
    assert err.value.diagnostics[0].code == "TX519" and "tx.pipeline.value_and_grad" in err.value.diagnostics[0].hint


# -- checkpoints -------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_checkpoint_round_trips_fsdp8_to_dp2xtp4_and_back_bit_for_bit(tmp_path):
    """Saved under FSDP-8, restored under DP2 x TP4 bit for bit, trained a step there, saved, and restored
    under FSDP-8 bit for bit."""
    params = gpt_params()
    batches = gpt_batches(2, 16)

    def engine_for(mesh, plan):
        return tx.Engine(mesh=mesh, plan=plan, optimizer=optax.adam(1e-3), checkpoint=tx.Checkpoint(tmp_path))

    fsdp_mesh = tx.MeshSpec(axes=("fsdp",), shape=(8,))
    fsdp_plan = tx.Plan(fully_sharded=tx.FSDP(axis="fsdp", min_size=64))
    first = engine_for(fsdp_mesh, fsdp_plan)
    state = first.create_state(params, stacked="blocks")
    for batch in batches:
        state, _ = gpt_pipeline_step(state, batch)
    first.save(state)
    first.close()
    saved = jax.device_get((state.params, state.opt_state))

    tp = engine_for(
        tx.MeshSpec(axes=("data", "model"), shape=(2, 4)),
        tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES)),
    )
    moved = tp.restore(tp.create_state(params, stacked="blocks"))
    for a, b in zip(
        jax.tree.leaves(saved), jax.tree.leaves(jax.device_get((moved.params, moved.opt_state))), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    moved, _ = gpt_pipeline_step(moved, batches[0])  # a step under the new plan, then back
    tp.save(moved)
    tp.close()
    saved = jax.device_get((moved.params, moved.opt_state))

    back = engine_for(fsdp_mesh, fsdp_plan)
    again = back.restore(back.create_state(params, stacked="blocks"))
    assert again.params["blocks"]["mlp"]["up"]["w"].addressable_shards[0].data.shape == (2, 32, 8)
    for a, b in zip(
        jax.tree.leaves(saved), jax.tree.leaves(jax.device_get((again.params, again.opt_state))), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    back.close()


def test_resharding_after_forward_keeps_no_gathered_layer_for_the_backward():
    """Under reshard_after_forward the backward gathers each layer again, so the compiled step's temporaries
    hold about two whole layers at once; keeping the gathered layers holds every one of them."""
    layers = 6
    params = nn.init_gpt(jax.random.PRNGKey(0), **{**GPT, "d_model": 64, "d_ff": 256, "layers": layers}, stacked=True)
    layer_bytes = sum(x[0].nbytes for x in jax.tree.leaves(params["blocks"]))
    batch = gpt_batches(1, 16)[0]
    temps = {}
    for reshard in (True, False):
        engine = fsdp_engine("fsdp8", tx.optim.sgd(LR), reshard_after_forward=reshard)
        state = engine.create_state(params, stacked="blocks")
        temps[reshard] = gpt_pipeline_step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
    assert temps[False] - temps[True] >= (layers - 2) * layer_bytes, (temps, layer_bytes)
