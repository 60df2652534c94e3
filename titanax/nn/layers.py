"""Tensor-parallel building blocks: dense layers, attention, MLP, norm, embedding, loss.

The collectives, per layer, when the plan has TP over axis ``m``:

===========================  ============================  ================================
layer                        forward                       backward (derived by JAX)
===========================  ============================  ================================
``column_dense``             none (input marked varying)   all-reduce of the input's cotangent
``row_dense``                all-reduce of partial sums    none
``row_dense`` (seq-parallel) reduce-scatter over sequence  all-gather
``gather_sequence``          all-gather over sequence      reduce-scatter
``vocab_embed``              all-reduce (or reduce-scatter  none (all-gather under SP)
                             over sequence under SP)
``vocab_cross_entropy``      all-reduce max, 2x all-reduce  none
                             sum, of per-token scalars
===========================  ============================  ================================
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from titanax.errors import StepFnError
from titanax.lowering import active_step_context, ensure_varying, varying_axes
from titanax.runtime import collectives

__all__ = [
    "attention",
    "column_dense",
    "gather_sequence",
    "layer_norm",
    "mlp",
    "row_dense",
    "scatter_sequence",
    "sequence_parallel",
    "tp_axis",
    "vocab_cross_entropy",
    "vocab_embed",
]

Params = dict[str, Any]


def tp_axis() -> str | tuple[str, ...] | None:
    """The plan's tensor-parallel axis inside a compiled step; ``None`` outside one or without TP."""
    ctx = active_step_context()
    if ctx is None or not ctx.tp_axes:
        return None
    return ctx.tp_axes[0] if len(ctx.tp_axes) == 1 else ctx.tp_axes


def sequence_parallel() -> bool:
    """Whether the compiled plan asks for sequence parallelism (activations split along the sequence)."""
    ctx = active_step_context()
    return bool(ctx is not None and ctx.tp_axes and ctx.sequence_parallel)


def _names(axis: str | tuple[str, ...]) -> tuple[str, ...]:
    return (axis,) if isinstance(axis, str) else axis


def _split_over(array: Any, axis: str | tuple[str, ...] | None) -> bool:
    """Whether ``array`` is this device's shard along the TP axis (its rule split it), not a whole copy."""
    return axis is not None and set(_names(axis)) <= varying_axes(array)


def _enter_tp_region(x: Any, axis: str | tuple[str, ...]) -> Any:
    # Megatron's "f": identity forward, all-reduce of the cotangent backward. Marking the
    # replicated input varying over the TP axis is exactly that, in check_vma's terms.
    return ensure_varying(x, _names(axis))


def column_dense(params: Params, x: jax.Array) -> jax.Array:
    """``x @ w + b`` with ``w`` of shape ``(d_in, *out)`` split on its first output dimension.

    Under TP each device computes its slice of the outputs; no forward communication.
    ``b`` (optional) is flat, in ``out``'s order, and split the same way.
    """
    axis = tp_axis()
    w = params["w"]
    if _split_over(w, axis):
        x = _enter_tp_region(x, axis)
    y = jnp.tensordot(x, w, axes=1)
    if "b" in params:
        y = y + params["b"].reshape(w.shape[1:])
    return y


def row_dense(params: Params, x: jax.Array, *, in_dims: int = 1) -> jax.Array:
    """``x @ w + b`` with ``w`` of shape ``(*in, d_out)`` split on its first input dimension.

    ``x``'s last ``in_dims`` dimensions are the (local) inputs. Under TP the partial
    sums are all-reduced (reduce-scattered over the sequence under sequence
    parallelism), and the bias is added once, after the reduction.
    """
    axis = tp_axis()
    w = params["w"]
    split = _split_over(w, axis)
    if axis is not None and not split and _split_over(x, axis) and not sequence_parallel():
        raise StepFnError.single(
            "TX510",
            f"row_dense got activations split over {axis!r} (from a column-parallel layer) but a whole weight {w.shape}",
            "give this weight a row rule (its input dimension split over the TP axis), or make the layer before it whole",
        )
    if x.shape[-in_dims:] != w.shape[:in_dims]:
        raise StepFnError.single(
            "TX510",
            f"row_dense input features {x.shape[-in_dims:]} do not match its weight {w.shape}",
            "the weight's input dimensions must be split like the activations: column rule before, row rule here",
        )
    y = jnp.tensordot(x, w, axes=in_dims)
    if split:
        if sequence_parallel():
            _check_sequence(y, axis)
            y = collectives.psum_scatter(y, axis, dim=1)
        else:
            y = collectives.psum(y, axis)
    if "b" in params:
        y = y + params["b"]
    return y


def gather_sequence(x: jax.Array) -> jax.Array:
    """Under sequence parallelism, all-gather ``(batch, seq/tp, d)`` activations into the full sequence."""
    axis = tp_axis()
    if axis is None or not sequence_parallel():
        return x
    return collectives.all_gather(x, axis, dim=1)


def scatter_sequence(x: jax.Array) -> jax.Array:
    """Under sequence parallelism, keep this device's slice of the sequence (dimension 1); no communication."""
    axis = tp_axis()
    if axis is None or not sequence_parallel():
        return x
    _check_sequence(x, axis)
    size = x.shape[1] // lax.axis_size(axis)
    start = collectives.axis_index(axis) * size
    return lax.dynamic_slice_in_dim(_enter_tp_region(x, axis), start, size, axis=1)


def _check_sequence(x: jax.Array, axis: str | tuple[str, ...]) -> None:
    parts = math.prod(lax.axis_size(a) for a in _names(axis))
    if x.ndim < 2 or x.shape[1] % parts:
        raise StepFnError.single(
            "TX511",
            f"sequence parallelism splits dimension 1 of activations {x.shape} over {axis!r} ({parts} devices), "
            f"which does not divide it",
            f"use a sequence length that is a multiple of {parts}, or turn sequence_parallel off",
        )


def layer_norm(params: Params, x: jax.Array, *, eps: float = 1e-5) -> jax.Array:
    """Layer norm over the last dimension with ``scale`` and ``bias`` (replicated under TP)."""
    # Statistics in float32: in float16, rsqrt's derivative at small variances overflows.
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    normed = ((x32 - mean) * lax.rsqrt(var + eps)).astype(x.dtype)
    return normed * params["scale"] + params["bias"]


def attention(params: Params, x: jax.Array) -> jax.Array:
    """Causal multi-head self-attention; heads are split over the TP axis.

    ``qkv/w``: ``(d_model, heads, 3, head_dim)``, column-parallel (whole heads per device);
    ``qkv/b``: flat ``heads * 3 * head_dim``; ``out/w``: ``(heads, head_dim, d_model)``,
    row-parallel; ``out/b``: ``(d_model,)``, replicated.
    """
    x = gather_sequence(x)
    qkv = column_dense(params["qkv"], x)  # (batch, seq, local heads, 3, head_dim)
    q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    seq, head_dim = x.shape[1], q.shape[-1]
    # The softmax runs in float32 whatever the compute dtype: in float16 the masked scores
    # (the dtype's minimum) overflow in its backward, and bfloat16 loses the small weights.
    scores = jnp.einsum("bshd,bthd->bhst", q, k).astype(jnp.float32) / math.sqrt(head_dim)
    causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
    scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    context = jnp.einsum("bhst,bthd->bshd", weights, v)
    return row_dense(params["out"], context, in_dims=2)


def mlp(params: Params, x: jax.Array) -> jax.Array:
    """``down(gelu(up(x)))``: ``up`` column-parallel ``(d_model, d_ff)``, ``down`` row-parallel ``(d_ff, d_model)``."""
    x = gather_sequence(x)
    return row_dense(params["down"], jax.nn.gelu(column_dense(params["up"], x)))


def vocab_embed(params: Params, ids: jax.Array) -> jax.Array:
    """Look up ``ids`` in ``tokens`` of shape ``(vocab, d_model)``, split over the vocabulary under TP.

    Each device looks up the ids in its slice of the vocabulary, others give zeros, and
    one all-reduce (a reduce-scatter over the sequence under sequence parallelism) sums them.
    """
    table = params["tokens"]
    axis = tp_axis()
    if not _split_over(table, axis):
        return scatter_sequence(table[ids])
    local = table.shape[0]
    offset = ids - collectives.axis_index(axis) * local
    inside = (offset >= 0) & (offset < local)
    rows = table[jnp.clip(offset, 0, local - 1)] * inside[..., None].astype(table.dtype)
    if sequence_parallel():
        _check_sequence(rows, axis)
        return collectives.psum_scatter(rows, axis, dim=1)
    return collectives.psum(rows, axis)


def vocab_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-token cross-entropy of ``logits`` (..., vocab) split over the vocabulary under TP.

    The full logits never exist on one device: a max, a sum of exponentials and the
    target's logit are reduced over the TP axis as per-token scalars.
    """
    axis = tp_axis()
    if not _split_over(logits, axis):  # whole logits on every device: the plain loss
        return -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[..., None], axis=-1)[..., 0]
    local = logits.shape[-1]
    # pmax has no derivative; the max only stabilises the exponentials, so stop its gradient first.
    top = collectives.pmax(lax.stop_gradient(jnp.max(logits, axis=-1)), axis)
    shifted = logits - top[..., None]
    sum_exp = collectives.psum(jnp.sum(jnp.exp(shifted), axis=-1), axis)
    offset = labels - collectives.axis_index(axis) * local
    inside = (offset >= 0) & (offset < local)
    picked = jnp.take_along_axis(shifted, jnp.clip(offset, 0, local - 1)[..., None], axis=-1)[..., 0]
    target = collectives.psum(jnp.where(inside, picked, 0.0), axis)
    return jnp.log(sum_exp) - target
