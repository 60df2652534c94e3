"""The step body as small stages: each one job, each testable on its own.

After the gradients are produced (once, per accumulation microbatch, or by the
pipeline program) a training step runs a chain of these, in order:

1. :func:`sync_gradients`: the IR's gradient collectives (the DP all-reduce);
2. :func:`unscale_gradients`: divide by the float16 loss scale;
3. :func:`count_nonfinite`: count Inf and NaN values, summed over the axes
   that split gradients (the IR's ``grad_finite``), so every device agrees;
4. :func:`apply_optimizer`: the optax update on each device's shards;
5. :func:`keep_where`: the new parameters and optimizer state only where a
   flag holds (a skipped overflow or a non-finite loss keeps the old ones);
6. :func:`reduce_metrics`: the output dtype and the IR's metric collectives;
7. :func:`state_is_finite`: under ``nonfinite="skip"``, whether the updated
   parameters and optimizer state hold no Inf or NaN, so that an update that
   overflowed is refused although its loss was finite.

Each takes and returns plain values (no step object), in the style of optax's
transformations; ``CompiledStep`` wires them together.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from titanax.lowering.collectives import IRCollective, ensure_varying
from titanax.lowering.context import StepState
from titanax.lowering.loss_scale import nonfinite_count

__all__ = [
    "apply_optimizer",
    "cast_floating",
    "count_nonfinite",
    "emit_all",
    "keep_where",
    "reduce_metrics",
    "state_is_finite",
    "sync_gradients",
    "unscale_gradients",
]


def emit_all(collectives: tuple[IRCollective, ...], tree: Any) -> Any:
    """Pass ``tree`` through each of ``collectives`` in order."""
    for collective in collectives:
        tree = collective(tree)
    return tree


def cast_floating(tree: Any, dtype: str | None) -> Any:
    """Floating arrays of ``tree`` cast to ``dtype`` (a precision policy's); integers (ids, labels)
    stay as they are. ``None`` leaves the tree untouched."""
    if dtype is None:
        return tree
    target = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def sync_gradients(collectives: tuple[IRCollective, ...], grads: Any) -> Any:
    """The gradients after the IR's gradient collectives (a mean over the DP axes; none without DP)."""
    return emit_all(collectives, grads)


def unscale_gradients(grads: Any, scale: jax.Array) -> Any:
    """Gradients of a loss multiplied by ``scale``, divided back to the loss's own."""
    return jax.tree.map(lambda g: g / scale.astype(g.dtype), grads)


def count_nonfinite(grads: Any, collectives: tuple[IRCollective, ...]) -> jax.Array:
    """Inf and NaN values in ``grads``, summed over the devices ``collectives`` span (int32)."""
    count = nonfinite_count(grads)
    for collective in collectives:
        # Split gradients differ across TP shards and pipeline stages: every device must agree.
        count = collective(ensure_varying(count, collective.node.axes))
    return count


def apply_optimizer(state: StepState, grads: Any) -> StepState:
    """``state`` after the optimizer applied ``grads`` (already synchronised; communicates nothing)."""
    return state.apply_update(grads)


def keep_where(keep_new: jax.Array, new: StepState, old: StepState) -> StepState:
    """``new``'s parameters and optimizer state where ``keep_new`` holds, else ``old``'s; every
    other field of ``new`` (step, loss scale) is kept."""

    def pick(a: Any, b: Any) -> Any:
        return jax.tree.map(lambda x, y: jnp.where(keep_new, x, y), a, b)

    return new.replace(params=pick(new.params, old.params), opt_state=pick(new.opt_state, old.opt_state))


def reduce_metrics(collectives: tuple[IRCollective, ...], metrics: Any, output_dtype: str | None) -> Any:
    """Floating metrics in the output dtype, through the IR's metric collectives (a DP mean)."""
    return emit_all(collectives, cast_floating(metrics, output_dtype))


def state_is_finite(state: StepState) -> jax.Array:
    """Whether the floating arrays of ``state``'s parameters and optimizer state hold no Inf or NaN.

    One max-of-absolute-values reduction per array (``max`` propagates NaN, and Inf is its own
    maximum), the cheapest exact check XLA:CPU ran. It reads this device's shards only and
    communicates nothing: where the state is split over tensor or pipeline axes the result
    differs across devices, and its type says it varies along them.
    """
    leaves = jax.tree.leaves((state.params, state.opt_state))
    largest = [jnp.max(jnp.abs(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact) and x.size]
    return jnp.all(jnp.isfinite(jnp.stack(largest))) if largest else jnp.asarray(True)
