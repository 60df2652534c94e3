"""Optimizers: thin, named factories over optax. Any optax transform works with the Engine."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from titanax.lowering import varying_axes

__all__ = ["adam", "adamw", "chain", "clip_by_global_norm", "global_norm", "is_gradient_transformation", "sgd"]


def sgd(
    learning_rate: float | optax.Schedule, momentum: float | None = None, nesterov: bool = False
) -> optax.GradientTransformation:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    Example: ``tx.optim.sgd(0.01)``.
    """
    return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)


def adam(
    learning_rate: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam. Example: ``tx.optim.adam(1e-3)``."""
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def adamw(
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
    """Adam with decoupled weight decay. Example: ``tx.optim.adamw(3e-4, weight_decay=0.1)``."""
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def is_gradient_transformation(obj: Any) -> bool:
    """True when ``obj`` behaves as an optax transform (callable ``init`` and ``update``)."""
    return callable(getattr(obj, "init", None)) and callable(getattr(obj, "update", None))


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of every array in ``tree`` taken whole, also when they are split over devices.

    Inside a step, each leaf's sum of squares is summed over the axes it is split
    over (the ones it varies along), so tensor- and pipeline-split gradients count
    once each and the result is the same on every device. ``optax.global_norm``
    would give each device the norm of its own shards only.
    """
    total = jnp.zeros((), jnp.float32)
    for leaf in jax.tree.leaves(tree):
        squares = jnp.sum(jnp.square(leaf.astype(jnp.float32)))
        axes = tuple(sorted(varying_axes(squares)))
        total = total + (lax.psum(squares, axes) if axes else squares)
    return jnp.sqrt(total)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale updates down so that their global norm is at most ``max_norm``, counting split
    parameters whole (see :func:`global_norm`). Use it instead of ``optax.clip_by_global_norm``
    under tensor or pipeline parallelism. Example::

        tx.optim.chain(tx.optim.clip_by_global_norm(1.0), tx.optim.adamw(3e-4))
    """

    def init(params: Any) -> optax.EmptyState:
        return optax.EmptyState()

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        norm = global_norm(updates)
        scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
        return jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


chain = optax.chain
"""``optax.chain``, re-exported so a whole optimizer can be written with ``tx.optim``."""
