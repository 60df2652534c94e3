"""The Llama of titanax.nn against a Llama written independently in plain jnp, alone and under every plan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models import max_relative_error, sgd_reference

import titanax as tx
from titanax import nn
from titanax.errors import PlanError

LLAMA = {"vocab": 64, "d_model": 32, "heads": 8, "kv_heads": 4, "d_ff": 48, "layers": 2}
SEQ = 16
LR = 0.1


def ref_rms_norm(scale, x):
    return scale * x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-5)


def ref_rope(x, theta=10000.0):
    """Hugging Face's rotate_half convention, on (batch, seq, heads, head_dim)."""
    seq, dim = x.shape[1], x.shape[-1]
    freqs = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    angles = np.outer(np.arange(seq), freqs)
    emb = np.concatenate([angles, angles], axis=-1)  # (seq, dim)
    cos, sin = jnp.asarray(np.cos(emb))[None, :, None], jnp.asarray(np.sin(emb))[None, :, None]
    rotated_half = jnp.concatenate([-x[..., dim // 2 :], x[..., : dim // 2]], axis=-1)
    return x * cos + rotated_half * sin


def ref_llama_loss(params, ids, labels):
    """Next-token loss in plain jnp: full matrices, keys and values repeated per query head (repeat_kv)."""
    seq = ids.shape[1]
    x = params["embed"]["tokens"][ids]
    mask = jnp.tril(jnp.ones((seq, seq), bool))
    for name in sorted(params["blocks"], key=int):
        p = params["blocks"][name]
        h = ref_rms_norm(p["attn_norm"]["scale"], x)
        d, heads, hd = p["attn"]["q"]["w"].shape
        kv_heads = p["attn"]["k"]["w"].shape[1]
        q = ref_rope((h @ p["attn"]["q"]["w"].reshape(d, -1)).reshape(*h.shape[:2], heads, hd))
        k = ref_rope((h @ p["attn"]["k"]["w"].reshape(d, -1)).reshape(*h.shape[:2], kv_heads, hd))
        v = (h @ p["attn"]["v"]["w"].reshape(d, -1)).reshape(*h.shape[:2], kv_heads, hd)
        k, v = jnp.repeat(k, heads // kv_heads, axis=2), jnp.repeat(v, heads // kv_heads, axis=2)  # repeat_kv
        att = jnp.einsum("bqhd,bthd->bhqt", q, k) / jnp.sqrt(hd)
        att = jax.nn.softmax(jnp.where(mask, att, -1e30), axis=-1)
        ctx = jnp.einsum("bhqt,bthd->bqhd", att, v).reshape(*h.shape[:2], heads * hd)
        x = x + ctx @ p["attn"]["o"]["w"].reshape(heads * hd, d)
        h = ref_rms_norm(p["mlp_norm"]["scale"], x)
        x = x + (jax.nn.silu(h @ p["mlp"]["gate"]["w"]) * (h @ p["mlp"]["up"]["w"])) @ p["mlp"]["down"]["w"]
    logits = ref_rms_norm(params["norm"]["scale"], x) @ params["head"]["w"]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def unstack(params, layers):
    return {**params, "blocks": {str(i): jax.tree.map(lambda x, i=i: x[i], params["blocks"]) for i in range(layers)}}


def reference(stacked):
    def loss(params, batch):
        tree = unstack(params, LLAMA["layers"]) if stacked else params
        return ref_llama_loss(tree, batch["ids"], batch["labels"])

    return jax.jit(jax.value_and_grad(loss))


def batches(steps, size=16, seed=5):
    key = jax.random.PRNGKey(seed)
    out = []
    for _ in range(steps):
        key, sub = jax.random.split(key)
        ids = jax.random.randint(sub, (size, SEQ + 1), 0, LLAMA["vocab"])
        out.append({"ids": ids[:, :-1], "labels": ids[:, 1:]})
    return out


def init(stacked=False):
    return nn.init_llama(jax.random.PRNGKey(0), **LLAMA, stacked=stacked)


@tx.step_fn
def plain_step(state, batch):
    loss, grads = tx.value_and_grad(nn.llama_loss)(state.params, batch["ids"], batch["labels"])
    return state.apply_gradients(grads=grads), {"loss": loss}


@tx.step_fn
def stacked_step(state, batch):
    loss, grads = tx.pipeline.value_and_grad(nn.LLAMA_PIPELINE, state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def test_the_model_alone_equals_the_reference():
    params = init()
    batch = batches(1)[0]
    ours = nn.llama_loss(params, batch["ids"], batch["labels"])
    theirs = ref_llama_loss(params, batch["ids"], batch["labels"])
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6)
    stacked = init(stacked=True)
    np.testing.assert_allclose(float(nn.llama_loss(stacked, batch["ids"], batch["labels"])), float(theirs), rtol=1e-6)


PLANS = {
    "dp2xtp4": (("data", "model"), (2, 4), {"data_parallel": tx.DP(axis="data")}, "tp", False),
    "dp2xtp4-sp": (("data", "model"), (2, 4), {"data_parallel": tx.DP(axis="data")}, "sp", False),
    "dp2xtp2xpp2": (
        ("data", "model", "pipe"),
        (2, 2, 2),
        {"data_parallel": tx.DP(axis="data"), "pipeline_parallel": tx.PP(axis="pipe", microbatches=2)},
        "tp",
        True,
    ),
    "fsdp4xtp2": (
        ("fsdp", "model"),
        (4, 2),
        {"fully_sharded": tx.FSDP(axis="fsdp", min_size=64)},
        "tp",
        True,
    ),
}


@pytest.mark.parametrize(
    "name",
    [
        "dp2xtp4",
        pytest.param("dp2xtp4-sp", marks=pytest.mark.slow),
        pytest.param("dp2xtp2xpp2", marks=pytest.mark.slow),
        "fsdp4xtp2",
    ],
)
def test_llama_under_each_plan_matches_the_reference_with_sgd(name):
    axes, shape, dims, tp, stacked = PLANS[name]
    plan = tx.Plan(tensor_parallel=tx.TP(axis="model", rules=nn.LLAMA_TP_RULES, sequence_parallel=tp == "sp"), **dims)
    engine = tx.Engine(mesh=tx.MeshSpec(axes=axes, shape=shape), plan=plan, optimizer=tx.optim.sgd(LR))
    params = init(stacked)
    state = engine.create_state(params, stacked="blocks" if stacked else ())
    step = stacked_step if stacked else plain_step
    data = batches(3)
    losses = []
    for batch in data:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    ref_losses, ref_params = sgd_reference(reference(stacked), params, data, LR)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(jax.device_get(state.params), ref_params) < 1e-5
    if name == "dp2xtp4":
        # Each device holds 1 of the 4 key/value heads and 2 of the 8 query heads.
        assert state.params["blocks"]["0"]["attn"]["k"]["w"].addressable_shards[0].data.shape == (32, 1, 4)
        assert state.params["blocks"]["0"]["attn"]["q"]["w"].addressable_shards[0].data.shape == (32, 2, 4)
        assert step.audit(state, data[0]).ok


def test_key_value_heads_that_do_not_split_over_tp_are_a_located_error():
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("model",), shape=(8,)),
        plan=tx.Plan(tensor_parallel=tx.TP(axis="model", rules=nn.LLAMA_TP_RULES)),
        optimizer=tx.optim.sgd(LR),
    )
    with pytest.raises(PlanError) as err:
        engine.create_state(init())  # 4 key/value heads over 8 devices
    assert {d.code for d in err.value.diagnostics} == {"TX223"}
    assert "blocks/0/attn/k/w" in str(err.value)
