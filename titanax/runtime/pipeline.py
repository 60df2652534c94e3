"""``tx.pipeline``: train a model given as stages under the plan's pipeline schedule.

A pipelined model is three functions over one parameter tree whose entry
``blocks`` (the name the plan gives) stacks identical layers on a leading
dimension:

- ``first(params, microbatch) -> x``: the embedding (every entry but the blocks);
- ``block(layer_params, x) -> x``: one layer;
- ``last(params, x, microbatch) -> loss``: the head and the mean loss of the microbatch.

Inside a ``@tx.step_fn`` whose plan has pipeline parallelism,
:func:`value_and_grad` runs the plan's pipeline schedule: the blocks split
evenly over the stages, the first stage also runs ``first``, the last also
runs ``last``. Without pipeline parallelism it is plain ``jax.value_and_grad``
of the sequential model, so one training step serves every plan; with tensor
but no pipeline parallelism, create the state with
``engine.create_state(params, stacked="blocks")`` so that shard rules apply to
each layer rather than to the stack.

Example::

    model = tx.PipelineModel(first=embed, block=gpt_block, last=head_loss)

    @tx.step_fn
    def step(state, batch):
        loss, grads = tx.pipeline.value_and_grad(model, state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax

from titanax.errors import StepFnError
from titanax.lowering import active_step_context
from titanax.lowering.pipeline import sequential_loss
from titanax.lowering.residuals import apply_remat
from titanax.runtime.grad import loss_scaled_value_and_grad
from titanax.runtime.grad import value_and_grad as scaled_value_and_grad

__all__ = ["PipelineModel", "value_and_grad"]


@dataclass(frozen=True, kw_only=True)
class PipelineModel:
    """A model as stages: ``first``, a stack of identical ``block``s, ``last`` (which returns the loss)."""

    first: Callable[[Any, Any], Any]
    """``(params without the blocks, microbatch) -> activations``."""
    block: Callable[[Any, Any], Any]
    """``(one layer's params, activations) -> activations``."""
    last: Callable[[Any, Any, Any], Any]
    """``(params without the blocks, activations, microbatch) -> mean loss`` (a scalar)."""
    blocks: str = "blocks"
    """The parameter entry holding the stacked layers (the plan's ``blocks`` must agree)."""


def value_and_grad(model: PipelineModel, params: dict[str, Any], batch: Any) -> tuple[Any, Any]:
    """The mean loss of ``batch`` and its gradients, pipelined as the plan says.

    The gradients have the structure of ``params``; pass them to ``state.apply_gradients``.
    Under a float16 policy the loss is scaled before the backward, as :func:`tx.value_and_grad` does.
    """
    if not isinstance(params, dict) or model.blocks not in params:
        keys = list(params) if isinstance(params, dict) else type(params).__name__
        raise StepFnError.single(
            "TX508",
            f"a PipelineModel needs a parameter dict with the stacked blocks under '{model.blocks}', got {keys}",
            f"put the layers' parameters, stacked on a leading dimension, under params['{model.blocks}']",
        )
    ctx = active_step_context()
    program = ctx.pipeline if ctx is not None else None
    if program is None:
        # Without a pipeline, each block runs under the plan's remat policy (jax.checkpoint).
        block = apply_remat(model.block, ctx.remat if ctx is not None else "none")
        fsdp = ctx.fsdp if ctx is not None else None
        if fsdp is None:
            return scaled_value_and_grad(
                lambda p: sequential_loss(model.first, block, model.last, model.blocks, p, batch)
            )(params)
        # FSDP stage 3: the stacked layers are gathered one at a time inside the scan, the rest once.
        one_layer = jax.tree.map(lambda x: x[0], params[model.blocks])
        layer_block = fsdp.layer(lambda named, x: block(named[model.blocks], x), {model.blocks: one_layer})
        ctx.fsdp_gathered = True

        def loss(p: dict[str, Any]) -> Any:
            gathered = fsdp.gather_for_step(p)
            return sequential_loss(
                model.first,
                lambda layer, x: layer_block({model.blocks: layer}, x),
                model.last,
                model.blocks,
                gathered,
                batch,
            )

        return loss_scaled_value_and_grad(loss, ctx)(params)
    if program.blocks != model.blocks:
        raise StepFnError.single(
            "TX508",
            f"the plan pipelines the blocks under '{program.blocks}' but the model stacks them under '{model.blocks}'",
            f"set blocks = {model.blocks} in the plan's pipeline, or PipelineModel(blocks='{program.blocks}')",
        )
    ctx.pipeline_used = True
    result = program.value_and_grad(model.first, model.block, model.last, params, batch, loss_scale=ctx.loss_scale)
    ctx.loss_scaled = True
    return result
