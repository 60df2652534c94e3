"""A character-level transformer written with stock Flax NNX layers, trained by Titanax.

Everything is ``nnx.Linear``, ``nnx.LayerNorm`` and ``nnx.Embed`` except the two row-parallel
projections (attention's output and the MLP's ``down``), which are
:class:`titanax.nn.nnx_layers.RowParallelLinear`: ``nnx.Linear`` with the tensor-parallel
reduction placed before its bias. The recipe:

- ``graphdef, params = nnx.split(model)``: Titanax trains ``params`` (an ``nnx.State``; its paths
  read ``blocks/0/attn/q/kernel``, the variables' ``.value`` dropped);
- inside the step, ``nnx.merge(graphdef, params)`` rebuilds the model from the step's parameters.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import titanax as tx
from titanax.nn.nnx_layers import RowParallelLinear

try:  # run as a script (train.py puts examples/gpt_small on the path), or imported as examples.flax_nnx.model
    from data import VOCAB
except ImportError:
    from examples.gpt_small.data import VOCAB

CONFIG = {"vocab": len(VOCAB), "d_model": 64, "heads": 8, "d_ff": 256, "layers": 2}
SEQ_LEN = 64


class Attention(nnx.Module):
    """Causal multi-head self-attention; each projection's output columns are whole heads."""

    def __init__(self, d_model: int, heads: int, *, rngs: nnx.Rngs):
        self.head_dim = d_model // heads
        self.q = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)
        self.k = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)
        self.v = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)
        self.out = RowParallelLinear(d_model, d_model, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, seq, _ = x.shape

        q, k, v = (self._heads(proj(x)) for proj in (self.q, self.k, self.v))
        scores = jnp.einsum("bshd,bthd->bhst", q, k) / math.sqrt(q.shape[-1])
        scores = jnp.where(jnp.tril(jnp.ones((seq, seq), bool)), scores, jnp.finfo(scores.dtype).min)
        context = jnp.einsum("bhst,bthd->bshd", jax.nn.softmax(scores, axis=-1), v)
        return self.out(context.reshape(batch, seq, -1))

    def _heads(self, y: jax.Array) -> jax.Array:
        # Under tensor parallelism y holds this device's columns: whole heads of head_dim each.
        return y.reshape(*y.shape[:2], -1, self.head_dim)


class Block(nnx.Module):
    """Pre-norm block: ``x + attention(norm(x))``, then ``+ mlp(norm(.))``."""

    def __init__(self, d_model: int, heads: int, d_ff: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.attn = Attention(d_model, heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.up = nnx.Linear(d_model, d_ff, rngs=rngs)
        self.down = RowParallelLinear(d_ff, d_model, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class Transformer(nnx.Module):
    """Token and position embeddings, the blocks, a final norm and the output head."""

    def __init__(self, vocab: int, d_model: int, heads: int, d_ff: int, layers: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d_model, rngs=rngs)
        self.pos = nnx.Embed(SEQ_LEN, d_model, rngs=rngs)
        self.blocks = nnx.List([Block(d_model, heads, d_ff, rngs=rngs) for _ in range(layers)])
        self.norm = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, vocab, use_bias=False, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.embed(ids) + self.pos(jnp.arange(ids.shape[1]))[None]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def build(seed: int = 0) -> tuple[Any, nnx.State]:
    """The model split into its graph definition and its parameters (what the Engine lays out)."""
    return nnx.split(Transformer(**CONFIG, rngs=nnx.Rngs(seed)))


GRAPHDEF, _ = build()


def loss_fn(params: nnx.State, batch: dict[str, jax.Array]) -> jax.Array:
    """Mean next-character cross-entropy of the model rebuilt from ``params``."""
    logits = nnx.merge(GRAPHDEF, params)(batch["ids"])
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, batch["labels"][..., None], axis=-1))


@tx.step_fn
def train_step(state, batch):
    """One training step; the plan decides DP, TP and their collectives."""
    loss, grads = tx.value_and_grad(loss_fn)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


@tx.step_fn(donate_state=False)
def eval_step(state, batch):
    """The loss without an update."""
    return state, {"loss": loss_fn(state.params, batch)}


def workload() -> tx.Workload:
    """What ``titanax compile examples/flax_nnx/plans/dp_tp.tx --model`` traces."""
    ids = jnp.zeros((16, SEQ_LEN), jnp.int32)
    return tx.Workload(
        params=build()[1], batch={"ids": ids, "labels": ids}, step=train_step, optimizer=tx.optim.adamw(3e-3)
    )
