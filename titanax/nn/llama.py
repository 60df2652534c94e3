"""A Llama-family model built from :mod:`titanax.nn.layers`: RMSNorm, rotary positions, SwiGLU, grouped-query attention.

The layout follows Hugging Face's ``LlamaForCausalLM`` so that its weights map
one to one (see :mod:`titanax.nn.hf`), with each matrix stored input dimension
first, as the tensor-parallel rules expect:

- ``embed/tokens`` ``(vocab, d_model)``; ``head/w`` ``(d_model, vocab)`` (untied);
- per block: ``attn_norm/scale`` and ``mlp_norm/scale`` ``(d_model,)``;
  ``attn/q/w`` ``(d_model, heads, head_dim)``, ``attn/k/w`` and ``attn/v/w``
  ``(d_model, kv_heads, head_dim)``, ``attn/o/w`` ``(heads, head_dim, d_model)``;
  ``mlp/gate/w`` and ``mlp/up/w`` ``(d_model, d_ff)``, ``mlp/down/w`` ``(d_ff, d_model)``;
- ``norm/scale`` ``(d_model,)``. No biases.

Rotary embeddings use Hugging Face's convention: each head's vector is split
into halves ``(x1, x2)`` rotated as ``(x1 cos - x2 sin, x2 cos + x1 sin)`` with
frequencies ``theta ** (-2i / head_dim)``. Under tensor parallelism the query
heads and the key/value heads split over the TP axis (``kv_heads`` must divide
by its size); each device's query heads use its own key/value heads, so the
grouping needs no communication.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from titanax.nn.layers import (
    column_dense,
    gather_sequence,
    row_dense,
    vocab_cross_entropy,
    vocab_embed,
)
from titanax.runtime.pipeline import PipelineModel

__all__ = [
    "LLAMA_PIPELINE",
    "LLAMA_TP_RULES",
    "init_llama",
    "init_llama_block",
    "llama_attention",
    "llama_block",
    "llama_forward",
    "llama_loss",
    "rms_norm",
    "rotary",
    "swiglu",
]

Params = dict[str, Any]

ROPE_THETA = 10000.0
"""Llama's rotary base (Llama 2; Llama 3 uses 500000: pass ``theta``)."""

RMS_EPS = 1e-5
"""The RMSNorm epsilon of Llama 2 and 3 configurations."""


def rms_norm(params: Params, x: jax.Array, *, eps: float = RMS_EPS) -> jax.Array:
    """``x / rms(x) * scale`` over the last dimension, the statistics in float32 (replicated under TP)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return params["scale"] * normed.astype(x.dtype)


def rotary(x: jax.Array, positions: jax.Array, *, theta: float = ROPE_THETA) -> jax.Array:
    """Rotary position embedding of ``x`` ``(batch, seq, heads, head_dim)`` at ``positions`` ``(seq,)``."""
    half = x.shape[-1] // 2
    inverse = theta ** (-jnp.arange(0, half, dtype=jnp.float32) * 2 / x.shape[-1])
    angles = positions.astype(jnp.float32)[:, None] * inverse[None, :]  # (seq, half)
    cos = jnp.cos(angles)[None, :, None, :]
    sin = jnp.sin(angles)[None, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def llama_attention(params: Params, x: jax.Array, *, theta: float = ROPE_THETA) -> jax.Array:
    """Causal grouped-query self-attention with rotary positions; heads split over the TP axis.

    ``q/w`` ``(d_model, heads, head_dim)``, ``k/w`` and ``v/w`` ``(d_model, kv_heads, head_dim)``
    column-parallel; ``o/w`` ``(heads, head_dim, d_model)`` row-parallel.
    """
    x = gather_sequence(x)
    q = column_dense(params["q"], x)  # (batch, seq, local heads, head_dim)
    k = column_dense(params["k"], x)  # (batch, seq, local kv heads, head_dim)
    v = column_dense(params["v"], x)
    seq, head_dim = x.shape[1], q.shape[-1]
    positions = jnp.arange(seq)
    q, k = rotary(q, positions, theta=theta), rotary(k, positions, theta=theta)
    batch, kv_heads = q.shape[0], k.shape[2]
    # Query head h uses key/value head h // group (Hugging Face's repeat_kv), written as a grouping of
    # the query heads rather than a copy of the keys and values: no key or value is duplicated.
    grouped = q.reshape(batch, seq, kv_heads, q.shape[2] // kv_heads, head_dim)
    # Scores and softmax in float32 whatever the compute dtype (see titanax.nn.attention).
    scores = jnp.einsum("bskgd,btkd->bkgst", grouped, k).astype(jnp.float32) / math.sqrt(head_dim)
    causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
    scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    context = jnp.einsum("bkgst,btkd->bskgd", weights, v).reshape(batch, seq, q.shape[2], head_dim)
    return row_dense(params["o"], context, in_dims=2)


def swiglu(params: Params, x: jax.Array) -> jax.Array:
    """``down(silu(gate(x)) * up(x))``: ``gate`` and ``up`` column-parallel, ``down`` row-parallel."""
    x = gather_sequence(x)
    return row_dense(params["down"], jax.nn.silu(column_dense(params["gate"], x)) * column_dense(params["up"], x))


def llama_block(params: Params, x: jax.Array) -> jax.Array:
    """``x + attention(norm(x))``, then ``+ swiglu(norm(.))``; under sequence parallelism ``x`` is this
    device's slice of the sequence."""
    x = x + llama_attention(params["attn"], rms_norm(params["attn_norm"], x))
    return x + swiglu(params["mlp"], rms_norm(params["mlp_norm"], x))


def init_llama_block(key: jax.Array, d_model: int, heads: int, kv_heads: int, d_ff: int) -> Params:
    """One block's parameters in the layouts the TP rules expect (normal(0, 0.02) matrices, unit norms)."""
    head_dim = d_model // heads
    kq, kk, kv, ko, kg, ku, kd = jax.random.split(key, 7)
    std = 0.02

    def normal(k: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return jax.random.normal(k, shape) * std

    return {
        "attn_norm": {"scale": jnp.ones((d_model,))},
        "attn": {
            "q": {"w": normal(kq, (d_model, heads, head_dim))},
            "k": {"w": normal(kk, (d_model, kv_heads, head_dim))},
            "v": {"w": normal(kv, (d_model, kv_heads, head_dim))},
            "o": {"w": normal(ko, (heads, head_dim, d_model))},
        },
        "mlp_norm": {"scale": jnp.ones((d_model,))},
        "mlp": {
            "gate": {"w": normal(kg, (d_model, d_ff))},
            "up": {"w": normal(ku, (d_model, d_ff))},
            "down": {"w": normal(kd, (d_ff, d_model))},
        },
    }


def init_llama(
    key: jax.Array,
    *,
    vocab: int,
    d_model: int,
    heads: int,
    kv_heads: int,
    d_ff: int,
    layers: int,
    stacked: bool = False,
) -> Params:
    """A Llama: token embedding, ``layers`` blocks, final RMSNorm, untied output head.

    Blocks are ``blocks/0``, ``blocks/1``... or, with ``stacked=True``, one tree whose leaves carry a
    leading layer dimension (what pipeline parallelism and FSDP's per-layer gathers need).
    """
    if d_model % heads or heads % kv_heads:
        raise ValueError(f"d_model={d_model} must divide by heads={heads}, and heads by kv_heads={kv_heads}")
    keys = jax.random.split(key, layers + 2)
    per_layer = [init_llama_block(keys[i + 2], d_model, heads, kv_heads, d_ff) for i in range(layers)]
    if stacked:
        blocks: Any = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
    else:
        blocks = {str(i): block for i, block in enumerate(per_layer)}
    return {
        "embed": {"tokens": jax.random.normal(keys[0], (vocab, d_model)) * 0.02},
        "blocks": blocks,
        "norm": {"scale": jnp.ones((d_model,))},
        "head": {"w": jax.random.normal(keys[1], (d_model, vocab)) * 0.02},
    }


def _head_logits(params: Params, x: jax.Array) -> jax.Array:
    return column_dense(params["head"], gather_sequence(rms_norm(params["norm"], x)))


def llama_forward(params: Params, ids: jax.Array) -> jax.Array:
    """Logits for token ``ids`` ``(batch, seq)``; split over the vocabulary under TP."""
    x = vocab_embed(params["embed"], ids)
    blocks = params["blocks"]
    if all(isinstance(k, str) and k.isdigit() for k in blocks):
        for index in sorted(blocks, key=int):
            x = llama_block(blocks[index], x)
    else:  # stacked on a leading layer dimension
        x = lax.scan(lambda h, layer: (llama_block(layer, h), None), x, blocks)[0]
    return _head_logits(params, x)


def llama_loss(params: Params, ids: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy."""
    return jnp.mean(vocab_cross_entropy(llama_forward(params, ids), labels))


def _pipeline_first(params: Params, batch: Any) -> jax.Array:
    return vocab_embed(params["embed"], batch["ids"])


def _pipeline_last(params: Params, x: jax.Array, batch: Any) -> jax.Array:
    return jnp.mean(vocab_cross_entropy(_head_logits(params, x), batch["labels"]))


LLAMA_PIPELINE = PipelineModel(first=_pipeline_first, block=llama_block, last=_pipeline_last)
"""The Llama as pipeline stages, for parameters from ``init_llama(..., stacked=True)`` and batches
``{"ids", "labels"}``: ``tx.pipeline.value_and_grad(nn.LLAMA_PIPELINE, params, batch)``."""

LLAMA_TP_RULES: dict[str, str] = {
    "**/attn/q/w": "column",
    "**/attn/k/w": "column",
    "**/attn/v/w": "column",
    "**/attn/o/w": "row",
    "**/mlp/gate/w": "column",
    "**/mlp/up/w": "column",
    "**/mlp/down/w": "row",
    "embed/tokens": "row",
    "head/w": "column",
}
"""Rules for ``tx.TP(axis=..., rules=LLAMA_TP_RULES)``: query and key/value heads and the SwiGLU hidden
units split Megatron-style, the embedding and the head split over the vocabulary, norms replicated."""
