"""The character-level Llama of this example: configuration, training and evaluation steps, and the
``tx.Workload`` entry point for ``titanax compile --model`` and ``titanax audit``.

The blocks are always stacked on a leading layer dimension and run through
``tx.pipeline.value_and_grad``: one step serves every plan (a pipeline runs its
schedule over them, FSDP gathers one layer at a time, and otherwise they run in
order inside a scan).
"""

from __future__ import annotations

import jax

import titanax as tx
from titanax import nn

try:  # run as a script (train.py puts examples/gpt_small on the path), or imported as examples.llama_small.model
    from data import VOCAB
except ImportError:
    from examples.gpt_small.data import VOCAB

CONFIG = {"vocab": len(VOCAB), "d_model": 64, "heads": 8, "kv_heads": 4, "d_ff": 176, "layers": 2}
"""96 symbols, 2 blocks of width 64: 8 query heads sharing 4 key/value heads, SwiGLU of 176 (about 0.1M
parameters). Sequences are 64 characters; rotary positions need no table."""

SEQ_LEN = 64


def init_params(seed: int = 0) -> dict:
    """The model's parameters, blocks stacked under ``blocks``."""
    return nn.init_llama(jax.random.PRNGKey(seed), stacked=True, **CONFIG)


@tx.step_fn
def train_step(state, batch):
    """Next-character cross-entropy through the plan's pipeline (or the blocks in order)."""
    loss, grads = tx.pipeline.value_and_grad(nn.LLAMA_PIPELINE, state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


@tx.step_fn(donate_state=False)
def eval_step(state, batch):
    """The loss without an update (the gradients are computed and dropped); the state stays valid."""
    loss, _ = tx.pipeline.value_and_grad(nn.LLAMA_PIPELINE, state.params, batch)
    return state, {"loss": loss}


def workload() -> tx.Workload:
    """What ``titanax compile examples/llama_small/plans/dp_tp.tx --model`` traces."""
    import jax.numpy as jnp

    ids = jnp.zeros((16, SEQ_LEN), jnp.int32)
    return tx.Workload(
        params=init_params(),
        batch={"ids": ids, "labels": ids},
        step=train_step,
        optimizer=tx.optim.adamw(3e-3),
        stacked="blocks",
    )
