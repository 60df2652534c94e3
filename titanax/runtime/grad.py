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

from titanax.lowering import active_step_context

__all__ = ["value_and_grad"]


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
