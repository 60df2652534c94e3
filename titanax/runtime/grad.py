"""``tx.value_and_grad``: ``jax.value_and_grad`` that applies the plan's float16 loss scaling.

Under a float16 policy small gradients underflow unless the loss is multiplied
by a large scale before differentiation. Inside a ``@tx.step_fn`` this function
multiplies by the state's current scale; ``apply_gradients`` divides it out and
skips a step whose gradients overflowed. Without loss scaling, and outside a
step, it is exactly ``jax.value_and_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from titanax.errors import StepFnError
from titanax.lowering import active_step_context

__all__ = ["loss_scaled_value_and_grad", "value_and_grad"]


def value_and_grad(
    fn: Callable[..., Any], argnums: int | Sequence[int] = 0, *, has_aux: bool = False
) -> Callable[..., tuple[Any, Any]]:
    """Like ``jax.value_and_grad``; under float16 loss scaling the returned gradients are scaled.

    The value (the loss, and ``aux`` with ``has_aux=True``) is returned unscaled.
    Pass the gradients straight to ``state.apply_gradients``, which unscales them.
    Example::

        loss, grads = tx.value_and_grad(loss_fn)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}
    """

    def wrapped(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        ctx = active_step_context()
        if ctx is not None and ctx.fsdp is not None:
            return loss_scaled_value_and_grad(_gathering(fn, ctx, argnums, args), ctx, argnums, has_aux)(
                *args, **kwargs
            )
        return loss_scaled_value_and_grad(fn, ctx, argnums, has_aux)(*args, **kwargs)

    return wrapped


def _gathering(fn: Callable[..., Any], ctx: Any, argnums: int | Sequence[int], args: tuple[Any, ...]) -> Callable:
    """``fn`` with the FSDP shards of its parameter argument gathered first (FSDP stage 3).

    The parameter argument is the differentiated one shaped like the state's parameters; the
    gathers' backward reduce-scatters its gradients. Stacked layers are gathered one at a time by
    ``tx.pipeline.value_and_grad`` only.
    """
    fsdp = ctx.fsdp
    positions = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    expected = ctx.param_structure
    found = next((k for k in positions if k < len(args) and jax.tree.structure(args[k]) == expected), None)
    if found is None:
        raise StepFnError.single(
            "TX519",
            "the plan shards parameters (FSDP stage 3), but tx.value_and_grad is not differentiating state.params",
            "differentiate the loss with respect to state.params: tx.value_and_grad(loss_fn)(state.params, batch)",
        )
    if any(kind == "layer" for kind in fsdp.gather_kind.values()):
        raise StepFnError.single(
            "TX519",
            "the parameters have stacked layers that FSDP stage 3 gathers one at a time, which only "
            "tx.pipeline.value_and_grad does",
            "run the model as a tx.PipelineModel: loss, grads = tx.pipeline.value_and_grad(model, state.params, batch)",
        )
    ctx.fsdp_gathered = True

    def gathered(*inner: Any, **kwargs: Any) -> Any:
        inner = list(inner)
        inner[found] = fsdp.gather_for_step(inner[found])
        return fn(*inner, **kwargs)

    return gathered


def loss_scaled_value_and_grad(
    fn: Callable[..., Any], ctx: Any, argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., tuple[Any, Any]]:
    """``jax.value_and_grad`` of ``fn``, the loss scaled by the step's (``ctx``'s) float16 loss scale when
    it has one; no FSDP gathering (for callers that gathered the shards themselves)."""

    def wrapped(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        scale = ctx.loss_scale if ctx is not None else None
        if scale is None:
            return jax.value_and_grad(fn, argnums, has_aux=has_aux)(*args, **kwargs)

        def scaled(*inner_args: Any, **inner_kwargs: Any) -> tuple[Any, Any]:
            out = fn(*inner_args, **inner_kwargs)
            loss, aux = out if has_aux else (out, None)
            return loss * scale.astype(loss.dtype), (loss, aux)

        (_, (loss, aux)), grads = jax.value_and_grad(scaled, argnums, has_aux=True)(*args, **kwargs)
        ctx.loss_scaled = True
        return ((loss, aux) if has_aux else loss), grads

    return wrapped
