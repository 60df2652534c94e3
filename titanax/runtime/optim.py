"""Optimizers: thin, named factories over optax. Any optax transform works with the Engine."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from titanax.errors import OptimizerError
from titanax.lowering import varying_axes

__all__ = [
    "adam",
    "adamw",
    "chain",
    "clip_by_global_norm",
    "global_norm",
    "is_gradient_transformation",
    "learning_rate",
    "sgd",
    "warmup_cosine",
]


def _scheduled(factory: Any, learning_rate: Any, **kwargs: Any) -> optax.GradientTransformation:
    """``factory(learning_rate, **kwargs)``; with a schedule, through ``optax.inject_hyperparams`` so that
    the optimizer state holds the learning rate each step used (:func:`learning_rate` reads it)."""
    if callable(learning_rate):
        return optax.inject_hyperparams(factory)(learning_rate=learning_rate, **kwargs)
    return factory(learning_rate, **kwargs)


def warmup_cosine(
    peak: float, warmup_steps: int, total_steps: int, *, start: float = 0.0, end: float = 0.0
) -> optax.Schedule:
    """A learning-rate schedule: linear warmup from ``start`` to ``peak`` over ``warmup_steps``, then
    cosine decay to ``end`` at ``total_steps`` (``optax.warmup_cosine_decay_schedule``). Example::

        tx.optim.adamw(tx.optim.warmup_cosine(3e-4, warmup_steps=100, total_steps=10_000))
    """
    problems = []
    if not (isinstance(warmup_steps, int) and isinstance(total_steps, int)) or not 0 <= warmup_steps < total_steps:
        problems.append(f"warmup_steps={warmup_steps!r} and total_steps={total_steps!r}: need 0 <= warmup < total")
    if not all(isinstance(v, (int, float)) and v >= 0 for v in (peak, start, end)):
        problems.append(f"peak={peak!r}, start={start!r}, end={end!r}: learning rates are numbers >= 0")
    if problems:
        raise OptimizerError.single(
            "TX402",
            "warmup_cosine: " + "; ".join(problems),
            "write tx.optim.warmup_cosine(3e-4, warmup_steps=100, total_steps=10_000)",
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=start, peak_value=peak, warmup_steps=warmup_steps, decay_steps=total_steps, end_value=end
    )


def learning_rate(opt_state: Any) -> Any:
    """The learning rate the last update used, when the optimizer was built with a schedule (``None`` otherwise).

    It is read from the ``optax.inject_hyperparams`` state that :func:`sgd`, :func:`adam` and
    :func:`adamw` keep when given a schedule (or that a user's own ``inject_hyperparams`` keeps).
    """

    def injected(node: Any) -> bool:
        # optax's InjectHyperparamsState and InjectStatefulHyperparamsState both carry ``hyperparams``.
        return isinstance(getattr(node, "hyperparams", None), dict) and "learning_rate" in node.hyperparams

    found = [
        node.hyperparams["learning_rate"] for node in jax.tree.leaves(opt_state, is_leaf=injected) if injected(node)
    ]
    return found[0] if found else None


def sgd(
    learning_rate: float | optax.Schedule, momentum: float | None = None, nesterov: bool = False
) -> optax.GradientTransformation:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    Example: ``tx.optim.sgd(0.01)``. With a schedule (``tx.optim.warmup_cosine(...)``) the rate each
    step used is kept in the optimizer state and logged by ``fit``.
    """
    return _scheduled(optax.sgd, learning_rate, momentum=momentum, nesterov=nesterov)


def adam(
    learning_rate: float | optax.Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam. Example: ``tx.optim.adam(1e-3)``; a schedule's rate is logged as for :func:`sgd`."""
    return _scheduled(optax.adam, learning_rate, b1=b1, b2=b2, eps=eps)


def adamw(
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
    """Adam with decoupled weight decay. Example: ``tx.optim.adamw(3e-4, weight_decay=0.1)``; a
    schedule's rate is logged as for :func:`sgd`."""
    return _scheduled(optax.adamw, learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


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
