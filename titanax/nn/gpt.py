"""A small GPT built from :mod:`titanax.nn.layers`: init, block, forward pass, loss."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from titanax.nn.layers import (
    attention,
    column_dense,
    gather_sequence,
    layer_norm,
    mlp,
    scatter_sequence,
    vocab_cross_entropy,
    vocab_embed,
)
from titanax.runtime.pipeline import PipelineModel

__all__ = ["GPT_PIPELINE", "gpt_block", "gpt_forward", "gpt_loss", "init_gpt", "init_gpt_block"]

Params = dict[str, Any]


def _norm(d_model: int) -> Params:
    return {"scale": jnp.ones((d_model,)), "bias": jnp.zeros((d_model,))}


def init_gpt_block(key: jax.Array, d_model: int, heads: int, d_ff: int) -> Params:
    """Parameters of one pre-norm transformer block, in the layouts the TP rules expect.

    ``attn/qkv/w`` ``(d_model, heads, 3, head_dim)``, ``attn/qkv/b`` ``(heads*3*head_dim,)``,
    ``attn/out/w`` ``(heads, head_dim, d_model)``, ``attn/out/b`` ``(d_model,)``,
    ``mlp/up/w`` ``(d_model, d_ff)``, ``mlp/up/b`` ``(d_ff,)``, ``mlp/down/w`` ``(d_ff, d_model)``,
    ``mlp/down/b`` ``(d_model,)``, and ``ln1``/``ln2`` with ``scale``/``bias``.
    """
    head_dim = d_model // heads
    k1, k2, k3, k4 = jax.random.split(key, 4)
    std = 0.02
    return {
        "ln1": _norm(d_model),
        "attn": {
            "qkv": {
                "w": jax.random.normal(k1, (d_model, heads, 3, head_dim)) * std,
                "b": jnp.zeros((heads * 3 * head_dim,)),
            },
            "out": {"w": jax.random.normal(k2, (heads, head_dim, d_model)) * std, "b": jnp.zeros((d_model,))},
        },
        "ln2": _norm(d_model),
        "mlp": {
            "up": {"w": jax.random.normal(k3, (d_model, d_ff)) * std, "b": jnp.zeros((d_ff,))},
            "down": {"w": jax.random.normal(k4, (d_ff, d_model)) * std, "b": jnp.zeros((d_model,))},
        },
    }


def gpt_block(params: Params, x: jax.Array) -> jax.Array:
    """``x + attention(ln1(x))``, then ``+ mlp(ln2(.))``. Under sequence parallelism ``x`` is
    this device's slice of the sequence."""
    x = x + attention(params["attn"], layer_norm(params["ln1"], x))
    return x + mlp(params["mlp"], layer_norm(params["ln2"], x))


def init_gpt(
    key: jax.Array,
    *,
    vocab: int,
    seq_len: int,
    d_model: int,
    heads: int,
    d_ff: int,
    layers: int,
    stacked: bool = False,
) -> Params:
    """A GPT: token and position embeddings, ``layers`` blocks, final norm, output head.

    Blocks are ``blocks/0``, ``blocks/1``... or, with ``stacked=True``, one tree whose
    leaves carry a leading layer dimension (what pipeline parallelism splits).
    """
    keys = jax.random.split(key, layers + 3)
    per_layer = [init_gpt_block(keys[i + 3], d_model, heads, d_ff) for i in range(layers)]
    blocks = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer) if stacked else dict(enumerate(per_layer))
    if not stacked:
        blocks = {str(i): block for i, block in blocks.items()}
    return {
        "embed": {"tokens": jax.random.normal(keys[0], (vocab, d_model)) * 0.02},
        "pos": jax.random.normal(keys[1], (seq_len, d_model)) * 0.01,
        "blocks": blocks,
        "ln_f": _norm(d_model),
        "head": {"w": jax.random.normal(keys[2], (d_model, vocab)) * 0.02},
    }


def gpt_forward(params: Params, ids: jax.Array) -> jax.Array:
    """Logits for token ``ids`` of shape ``(batch, seq)``; split over the vocabulary under TP."""
    x = vocab_embed(params["embed"], ids) + scatter_sequence(params["pos"][None, : ids.shape[1]])
    for index in sorted(params["blocks"], key=int):
        x = gpt_block(params["blocks"][index], x)
    x = gather_sequence(layer_norm(params["ln_f"], x))
    return column_dense(params["head"], x)


def gpt_loss(params: Params, ids: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy."""
    return jnp.mean(vocab_cross_entropy(gpt_forward(params, ids), labels))


def _pipeline_first(params: Params, batch: Any) -> jax.Array:
    ids = batch["ids"]
    return vocab_embed(params["embed"], ids) + scatter_sequence(params["pos"][None, : ids.shape[1]])


def _pipeline_last(params: Params, x: jax.Array, batch: Any) -> jax.Array:
    logits = column_dense(params["head"], gather_sequence(layer_norm(params["ln_f"], x)))
    return jnp.mean(vocab_cross_entropy(logits, batch["labels"]))


GPT_PIPELINE = PipelineModel(first=_pipeline_first, block=gpt_block, last=_pipeline_last)
"""The GPT as pipeline stages, for parameters from ``init_gpt(..., stacked=True)`` and batches
``{"ids", "labels"}``: ``tx.pipeline.value_and_grad(nn.GPT_PIPELINE, params, batch)``."""
