"""The character-level GPT of this example: configuration, training step, and a
``tx.Workload`` entry point for ``titanax compile --model``."""

from __future__ import annotations

import jax

import titanax as tx
from titanax import nn

try:  # run as a script from this folder, or imported as examples.gpt_small.model
    from data import VOCAB
except ImportError:
    from examples.gpt_small.data import VOCAB

CONFIG = {"vocab": len(VOCAB), "seq_len": 64, "d_model": 64, "heads": 8, "d_ff": 256, "layers": 2}
"""96 symbols, 64-character context, 2 blocks of width 64 with 8 heads (about 0.1M parameters)."""


def init_params(seed: int = 0, *, stacked: bool = False) -> dict:
    """Fresh GPT parameters, laid out as ``titanax.nn`` and the plans' TP rules expect;
    ``stacked`` puts the blocks on a leading layer dimension, as pipelining needs."""
    return nn.init_gpt(jax.random.PRNGKey(seed), stacked=stacked, **CONFIG)


@tx.step_fn
def train_step(state, batch):
    """Next-character cross-entropy; the plan decides DP, TP and their collectives."""
    loss, grads = jax.value_and_grad(nn.gpt_loss)(state.params, batch["ids"], batch["labels"])
    return state.apply_gradients(grads=grads), {"loss": loss}


@tx.step_fn(donate_state=False)
def eval_step(state, batch):
    """Loss without an update; the state is not donated, so the caller's stays valid."""
    return state, {"loss": nn.gpt_loss(state.params, batch["ids"], batch["labels"])}


@tx.step_fn
def pipeline_step(state, batch):
    """The same loss over stacked blocks, run as the plan's pipeline schedule (or sequentially)."""
    loss, grads = tx.pipeline.value_and_grad(nn.GPT_PIPELINE, state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


@tx.step_fn(donate_state=False)
def pipeline_eval_step(state, batch):
    """Pipelined loss without an update (the gradients are computed and dropped)."""
    loss, _ = tx.pipeline.value_and_grad(nn.GPT_PIPELINE, state.params, batch)
    return state, {"loss": loss}


def workload(pipelined: bool = False) -> tx.Workload:
    """What ``titanax compile examples/gpt_small/plans/dp_tp.tx --model`` traces."""
    import jax.numpy as jnp

    ids = jnp.zeros((16, CONFIG["seq_len"]), jnp.int32)
    return tx.Workload(
        params=init_params(stacked=pipelined),
        batch={"ids": ids, "labels": ids},
        step=pipeline_step if pipelined else train_step,
        optimizer=tx.optim.adamw(3e-3),
        stacked="blocks" if pipelined else (),
    )


def pipeline_workload() -> tx.Workload:
    """The workload for plans with pipeline parallelism (stacked blocks)."""
    return workload(pipelined=True)


def stacked_workload() -> tx.Workload:
    """The workload for FSDP plans: stacked blocks run through ``tx.pipeline.value_and_grad``, which
    gathers one layer at a time under stage 3."""
    return workload(pipelined=True)
