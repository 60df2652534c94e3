"""Optimizers: thin, named factories over optax. Any optax transform works with the Engine."""

from __future__ import annotations

from typing import Any

import optax

__all__ = ["adam", "adamw", "is_gradient_transformation", "sgd"]


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
