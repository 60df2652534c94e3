"""A small MLP, its data and a pure-JAX single-device training loop: the reference for DP tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import titanax as tx
from titanax import nn

IN, HIDDEN, OUT = 4, 16, 3


def init_mlp(seed: int = 0) -> dict:
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "dense1": {"w": jax.random.normal(k1, (IN, HIDDEN)) * 0.5, "b": jnp.zeros((HIDDEN,))},
        "dense2": {"w": jax.random.normal(k2, (HIDDEN, OUT)) * 0.5, "b": jnp.full((OUT,), 0.1)},
    }


def mlp_loss(params: dict, batch: dict) -> jax.Array:
    h = jnp.tanh(batch["x"] @ params["dense1"]["w"] + params["dense1"]["b"])
    pred = h @ params["dense2"]["w"] + params["dense2"]["b"]
    return jnp.mean((pred - batch["y"]) ** 2)


def make_batches(steps: int, batch_size: int, seed: int = 1) -> list[dict]:
    key = jax.random.PRNGKey(seed)
    batches = []
    for _ in range(steps):
        key, kx, ky = jax.random.split(key, 3)
        batches.append({"x": jax.random.normal(kx, (batch_size, IN)), "y": jax.random.normal(ky, (batch_size, OUT))})
    return batches


def reference_run(optimizer: optax.GradientTransformation, params: dict, batches: list[dict]):
    """Plain single-device JAX: returns (losses, final params)."""
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(mlp_loss)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for batch in batches:
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
    return losses, params


# -- a GPT, written independently of titanax.nn, as the TP reference ------------------
GPT = {"vocab": 64, "seq_len": 16, "d_model": 32, "heads": 8, "d_ff": 64, "layers": 2}


def ref_layer_norm(p: dict, x: jax.Array) -> jax.Array:
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * p["scale"] + p["bias"]


def ref_gpt_loss(params: dict, ids: jax.Array, labels: jax.Array) -> jax.Array:
    """Next-token loss of the GPT in plain jnp: full matrices, explicit softmax, no collectives."""
    seq = ids.shape[1]
    x = params["embed"]["tokens"][ids] + params["pos"][:seq]
    mask = jnp.tril(jnp.ones((seq, seq), bool))
    for name in sorted(params["blocks"], key=int):
        p = params["blocks"][name]
        h = ref_layer_norm(p["ln1"], x)
        w = p["attn"]["qkv"]["w"]
        d, heads, _, hd = w.shape
        qkv = h @ w.reshape(d, -1) + p["attn"]["qkv"]["b"]
        qkv = qkv.reshape(*h.shape[:2], heads, 3, hd)
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(hd)
        att = jax.nn.softmax(jnp.where(mask, att, -1e30), axis=-1)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(*h.shape[:2], heads * hd)
        x = x + ctx @ p["attn"]["out"]["w"].reshape(heads * hd, d) + p["attn"]["out"]["b"]
        h = ref_layer_norm(p["ln2"], x)
        up = jax.nn.gelu(h @ p["mlp"]["up"]["w"] + p["mlp"]["up"]["b"])
        x = x + up @ p["mlp"]["down"]["w"] + p["mlp"]["down"]["b"]
    logits = ref_layer_norm(params["ln_f"], x) @ params["head"]["w"]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def gpt_batches(steps: int, batch_size: int, seed: int = 3) -> list[dict]:
    key = jax.random.PRNGKey(seed)
    batches = []
    for _ in range(steps):
        key, sub = jax.random.split(key)
        ids = jax.random.randint(sub, (batch_size, GPT["seq_len"] + 1), 0, GPT["vocab"])
        batches.append({"ids": ids[:, :-1], "labels": ids[:, 1:]})
    return batches


# -- shared by the numerics tests -------------------------------------------------------
def sgd_reference(value_and_grad, params, batches, lr):
    """Losses and final parameters of plain SGD with ``value_and_grad(params, batch)``, one step per batch."""
    losses = []
    for batch in batches:
        loss, grads = value_and_grad(params, batch)
        losses.append(float(loss))
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return np.array(losses), params


def stacked_gpt_reference(layers):
    """``value_and_grad`` of the reference GPT loss on the per-layer view of stacked parameters."""

    def loss(params, batch):
        unstacked = {
            **params,
            "blocks": {str(i): jax.tree.map(lambda x, i=i: x[i], params["blocks"]) for i in range(layers)},
        }
        return ref_gpt_loss(unstacked, batch["ids"], batch["labels"])

    return jax.jit(jax.value_and_grad(loss))


def max_relative_error(tree, ref):
    """The largest, over leaves, of max |a - b| relative to max |b|."""
    errors = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)), tree, ref)
    return max(jax.tree.leaves(errors))


class Recorder:
    """A logger that keeps every value it is sent, by step."""

    def __init__(self, every=1):
        self.every = every
        self.rows = {}

    def log(self, step, metrics):
        self.rows.setdefault(step, {}).update(metrics)

    def close(self):
        pass


@tx.step_fn
def gpt_pipeline_step(state, batch):
    """One training step of the stacked GPT through ``tx.pipeline.value_and_grad``: pipelined as the
    plan says, or the blocks run in order (under the plan's remat policy) without a pipeline."""
    loss, grads = tx.pipeline.value_and_grad(nn.GPT_PIPELINE, state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def train_against_gpt_reference(step, state, params, batches, lr):
    """Run ``step`` over ``batches`` from ``state``; its losses and final parameters must equal plain SGD on
    the stacked GPT's single-device reference within 1e-5 relative. Returns the final state."""
    losses = []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    layers = jax.tree.leaves(params["blocks"])[0].shape[0]
    ref_losses, ref_params = sgd_reference(stacked_gpt_reference(layers), params, batches, lr)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(jax.device_get(state.params), ref_params) < 1e-5
    return state
