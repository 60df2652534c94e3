"""Precision policies: compute in bfloat16 over float32 master weights; integers never cast."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models import GPT, gpt_batches
from tests_helpers_pp import tiny_engine_and_step

import titanax as tx
from titanax import nn
from titanax.lowering import collectives_in_hlo

SEEN_DTYPES = []


@tx.step_fn
def step(state, batch):
    loss, grads = jax.value_and_grad(nn.gpt_loss)(state.params, batch["ids"], batch["labels"])
    SEEN_DTYPES.append((batch["ids"].dtype, batch["x"].dtype))
    return state.apply_gradients(grads=grads), {"loss": loss}


def run(precision, steps=5):
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(2, 4)),
        plan=tx.Plan(
            data_parallel=tx.DP(axis="data"),
            tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES),
            precision=precision,
        ),
        optimizer=tx.optim.sgd(0.5),
    )
    state = engine.create_state(nn.init_gpt(jax.random.PRNGKey(0), **GPT))
    batch = {**gpt_batches(1, 8)[0], "x": jnp.ones((8, 3))}
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return np.array(losses), state, metrics, batch


def test_bfloat16_compute_tracks_float32_with_float32_master_weights():
    reference, _, _, _ = run(None)
    losses, state, metrics, batch = run(tx.Precision(params="float32", compute="bfloat16", output="float32"))
    np.testing.assert_allclose(losses, reference, rtol=2e-2)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    assert metrics["loss"].dtype == jnp.float32
    hlo = step.lower(state, batch).compile().as_text()
    assert "bf16[" in hlo
    assert SEEN_DTYPES[-1] == (jnp.int32, jnp.bfloat16)  # floating inputs cast, integer ids never


def test_under_a_policy_the_ir_still_lists_every_collective_byte():
    _, state, _, batch = run(tx.Precision(compute="bfloat16"), steps=1)
    ir = step.plan_ir(state, batch)
    hlo_bytes, ir_bytes = Counter(), Counter()
    for c in collectives_in_hlo(step.lower(state, batch).compile().as_text()):
        hlo_bytes[c.op] += c.result_bytes
    for c in ir.collectives():
        ir_bytes[c.op] += c.payload_bytes
    # XLA's CPU backend computes bfloat16 all-reduces in float32; the IR, annotated for this
    # backend, says so (GPU backends keep bf16), so its bytes are the compiled program's.
    assert set(hlo_bytes) == set(ir_bytes) == {"all-reduce"}
    assert hlo_bytes == ir_bytes
    assert all(c.dtypes == ("float32",) for c in ir.collectives())
    assert all("titanax/nn/layers.py" in c.name for c in ir.collectives() if c.origin == "user")
    # Gradients are synchronised in the master dtype, float32.
    local = sum(np.prod(n.local_shape) for n in ir.params()) * 4
    assert next(c for c in ir.collectives() if c.name == "grad_sync").payload_bytes == local


def test_bfloat16_master_weights():
    _, state, _, _ = run(tx.Precision(params="bfloat16", compute="bfloat16"), steps=1)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(state.params))


@tx.step_fn
def scaled_step(state, batch):
    loss, grads = tx.value_and_grad(nn.gpt_loss)(state.params, batch["ids"], batch["labels"])
    return state.apply_gradients(grads=grads), {"loss": loss}


def test_float16_with_dynamic_loss_scaling_tracks_float32():
    reference, _, _, _ = run(None)
    engine_losses = []
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(2, 4)),
        plan=tx.Plan(
            data_parallel=tx.DP(axis="data"),
            tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES),
            precision=tx.Precision(compute="float16"),
        ),
        optimizer=tx.optim.sgd(0.5),
    )
    state = engine.create_state(nn.init_gpt(jax.random.PRNGKey(0), **GPT))
    batch = {**gpt_batches(1, 8)[0], "x": jnp.ones((8, 3))}
    for _ in range(5):
        state, metrics = scaled_step(state, batch)
        engine_losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(engine_losses, reference, rtol=2e-2)
    assert float(metrics["loss_scale"]) == 2.0**15  # no overflow, no growth yet
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    hlo = scaled_step.lower(state, batch).compile().as_text()
    assert "f16[" in hlo
    # Split gradients differ across TP shards: one declared all-reduce makes every device agree on overflow.
    finite = [c for c in engine.ir.collectives() if c.name == "grad_finite"]
    assert [(c.axes, c.reduction, c.operand) for c in finite] == [(("model",), "sum", "nonfinite_count")]
    assert any(c.op == "all-reduce" and c.result_bytes == 4 and c.group_size == 4 for c in collectives_in_hlo(hlo))


@tx.step_fn
def boosted_step(state, batch):
    def loss_fn(params):
        out = batch["x"] @ params["w"]
        # Only the first model shard's loss (and gradients) blows up: every device must still skip.
        boost = jnp.where(tx.collectives.axis_index("model") == 0, batch["boost"][0], 1.0)
        return tx.collectives.pmean(jnp.mean(out**2) * boost, "model")

    loss, grads = tx.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}


@pytest.mark.parametrize("tensor_parallel", [False, True], ids=["dp8", "dp2xtp4"])
def test_an_overflowing_step_keeps_the_parameters_and_halves_the_scale(tensor_parallel):
    mesh = tx.MeshSpec(axes=("data", "model"), shape=(2, 4) if tensor_parallel else (8, 1))
    plan = tx.Plan(
        data_parallel=tx.DP(axis="data"),
        tensor_parallel=tx.TP(axis="model", rules={"w": "column"}) if tensor_parallel else None,
        precision=tx.Precision(compute="float16", loss_scale_init=1024.0, loss_scale_growth_interval=2),
    )
    engine = tx.Engine(mesh=mesh, plan=plan, optimizer=tx.optim.sgd(0.1))
    state = engine.create_state({"w": jnp.full((4, 8), 0.1)})
    x = jnp.ones((16, 4))
    history = []
    for boost in (1.0, 1.0, 1.0, 1e4, 1.0):
        before = np.asarray(state.params["w"])
        state, metrics = boosted_step(state, {"x": x, "boost": jnp.full((16,), boost)})
        unchanged = np.array_equal(before, np.asarray(state.params["w"]))
        history.append((float(metrics["loss_scale"]), unchanged, int(state.step)))
    # Two finite steps double the scale; the overflow (loss x scale > 65504) skips the update and halves it.
    assert history == [
        (1024.0, False, 1),
        (2048.0, False, 2),
        (2048.0, False, 3),
        (1024.0, True, 4),
        (1024.0, False, 5),
    ]
    assert int(state.loss_scale.good_steps) == 1


def test_float16_without_tx_value_and_grad_is_explained():
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data"), precision=tx.Precision(compute="float16")),
        optimizer=tx.optim.sgd(0.1),
    )

    @tx.step_fn
    def unscaled(state, batch):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((batch["x"] @ p["w"]) ** 2))(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss}

    state = engine.create_state({"w": jnp.ones((4, 2))})
    with pytest.raises(tx.StepFnError, match="TX513.*tx.value_and_grad"):
        unscaled(state, {"x": jnp.ones((8, 4))})


def test_float16_master_weights_are_refused():
    with pytest.raises(tx.PlanError, match="TX233.*master weights"):
        tx.Engine(
            mesh=tx.MeshSpec(axes=("data",)),
            plan=tx.Plan(data_parallel=tx.DP(axis="data"), precision=tx.Precision(params="float16")),
            optimizer=tx.optim.sgd(0.1),
        )


def test_loss_scale_settings_are_checked():
    with pytest.raises(tx.PlanError, match="TX204.*loss_scale_init"):
        tx.Precision(compute="float16", loss_scale_init=0)
    with pytest.raises(tx.PlanError, match="TX204.*loss_scale_growth_interval"):
        tx.Precision(compute="float16", loss_scale_growth_interval=1.5)


def test_float16_pipeline_scales_the_loss_and_tracks_float32():
    """tx.pipeline.value_and_grad seeds the backward with the scale; the overflow count crosses the pipe axis."""
    batch = {"x": jax.random.normal(jax.random.PRNGKey(5), (8, 4)), "y": jnp.ones((8, 2))}
    runs = {}
    for name, precision in (("f32", None), ("f16", tx.Precision(compute="float16", loss_scale_init=256.0))):
        engine, pp_step, params = tiny_engine_and_step(precision=precision, microbatches=2)
        state = engine.create_state(params)
        losses = []
        for _ in range(3):
            state, metrics = pp_step(state, batch)
            losses.append(float(metrics["loss"]))
        runs[name] = (losses, engine, metrics)
    np.testing.assert_allclose(runs["f16"][0], runs["f32"][0], rtol=1e-2)
    assert float(runs["f16"][2]["loss_scale"]) == 256.0 and float(runs["f16"][2]["overflow"]) == 0.0
    finite = [c for c in runs["f16"][1].ir.collectives() if c.name == "grad_finite"]
    assert [c.axes for c in finite] == [("pipe",)]
