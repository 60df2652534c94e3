"""``titanax.nn``: small functional layers whose tensor parallelism is written out.

Every layer is a pure function ``layer(params, x)`` over a dict of arrays. Inside
a ``@tx.step_fn`` whose plan has tensor parallelism, a layer reads the TP axis
from the compiled plan, expects its parameters already split as the plan's
shard rules say (``column``/``row``), and performs the Megatron collectives
itself through :mod:`tx.collectives`: nothing in the forward pass communicates
that the code does not show, and the backward collectives are the transposes
JAX derives from them. Outside a step, or without TP, the same functions are
plain single-device math, which is what the tests compare against.

Layouts (input dimension first, heads before the per-head dimension, so that a
``column`` split divides whole heads): see :func:`init_gpt_block` and, for the
Llama family (RMSNorm, rotary positions, SwiGLU, grouped-query attention),
:mod:`titanax.nn.llama`.
"""

from titanax.nn.gpt import GPT_PIPELINE, gpt_block, gpt_forward, gpt_loss, init_gpt, init_gpt_block
from titanax.nn.layers import (
    attention,
    column_dense,
    gather_sequence,
    layer_norm,
    mlp,
    row_dense,
    scatter_sequence,
    tp_axis,
    vocab_cross_entropy,
    vocab_embed,
)
from titanax.nn.llama import (
    LLAMA_PIPELINE,
    LLAMA_TP_RULES,
    init_llama,
    init_llama_block,
    llama_attention,
    llama_block,
    llama_forward,
    llama_loss,
    rms_norm,
    rotary,
    swiglu,
)
from titanax.nn.rules import GPT_TP_RULES

__all__ = [
    "GPT_PIPELINE",
    "GPT_TP_RULES",
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
    "attention",
    "column_dense",
    "gather_sequence",
    "gpt_block",
    "gpt_forward",
    "gpt_loss",
    "init_gpt",
    "init_gpt_block",
    "layer_norm",
    "mlp",
    "row_dense",
    "scatter_sequence",
    "tp_axis",
    "vocab_cross_entropy",
    "vocab_embed",
]
