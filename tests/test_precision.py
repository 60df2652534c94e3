"""Precision policies: compute in bfloat16 over float32 master weights; integers never cast."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models import GPT, gpt_batches

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
    # XLA's CPU backend computes bfloat16 all-reduces in float32, so the HLO moves twice the
    # bytes of the bf16 activation reductions the IR lists (GPU backends keep bf16). The
    # lowering's own collectives (gradients, metrics) are float32 in both.
    user = sum(c.payload_bytes for c in ir.collectives() if c.origin == "user")
    lowering = sum(c.payload_bytes for c in ir.collectives() if c.origin == "lowering")
    assert set(hlo_bytes) == set(ir_bytes) == {"all-reduce"}
    assert hlo_bytes["all-reduce"] == lowering + 2 * user
    assert all("titanax/nn/layers.py" in c.name for c in ir.collectives() if c.origin == "user")
    # Gradients are synchronised in the master dtype, float32.
    local = sum(np.prod(n.local_shape) for n in ir.params()) * 4
    assert next(c for c in ir.collectives() if c.name == "grad_sync").payload_bytes == local


def test_bfloat16_master_weights():
    _, state, _, _ = run(tx.Precision(params="bfloat16", compute="bfloat16"), steps=1)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(state.params))


def test_float16_is_refused_until_loss_scaling_exists():
    with pytest.raises(tx.PlanError, match="TX230.*float16.*loss scaling"):
        run(tx.Precision(compute="float16"), steps=0)
