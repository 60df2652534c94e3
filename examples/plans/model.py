"""The model the plans in this folder are written for: a 12-block GPT from ``titanax.nn``.

Each plan names it with ``model "examples.plans.model:workload"`` (``pipeline_workload`` for the
plans with a pipeline), so that, from the repository root,

    titanax compile examples/plans/dp_tp.tx --model

lays its parameters out under the plan and traces one training step, listing every collective with
its bytes. The GPT is narrow (width 32) so that tracing takes seconds; it has no data and no training
script. ``examples/gpt_small`` trains a GPT under plans of the same shape.

Parameter entries (what the plans' rules and stages name): ``embed/tokens``, ``pos``, ``blocks``
(``blocks/0/attn/qkv/w``... or, stacked for a pipeline, ``blocks/attn/qkv/w`` with a leading layer
dimension of 12), ``ln_f`` and ``head/w``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import titanax as tx
from titanax import nn

CONFIG = {"vocab": 128, "seq_len": 32, "d_model": 32, "heads": 4, "d_ff": 128, "layers": 12}
"""128 symbols, context 32, 12 blocks of width 32 with 4 heads (about 0.16M parameters)."""

BATCH = 16
"""Sequences per step: a multiple of every plan's DP size x microbatches (2 x 8 under dp_pp.tx)."""


@tx.step_fn
def train_step(state, batch):
    """Next-token cross-entropy over the unstacked blocks."""
    loss, grads = jax.value_and_grad(nn.gpt_loss)(state.params, batch["ids"], batch["labels"])
    return state.apply_gradients(grads=grads), {"loss": loss}


@tx.step_fn
def pipeline_step(state, batch):
    """The same loss over stacked blocks, run as the plan's pipeline schedule."""
    loss, grads = tx.pipeline.value_and_grad(nn.GPT_PIPELINE, state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def workload(pipelined: bool = False) -> tx.Workload:
    """What ``titanax compile --model`` traces for ``dp.tx`` and ``dp_tp.tx``."""
    ids = jnp.zeros((BATCH, CONFIG["seq_len"]), jnp.int32)
    return tx.Workload(
        params=nn.init_gpt(jax.random.PRNGKey(0), stacked=pipelined, **CONFIG),
        batch={"ids": ids, "labels": ids},
        step=pipeline_step if pipelined else train_step,
        optimizer=tx.optim.adamw(3e-4),
    )


def pipeline_workload() -> tx.Workload:
    """The workload for ``dp_pp.tx`` and ``3d.tx``: the blocks stacked under ``blocks``."""
    return workload(pipelined=True)
