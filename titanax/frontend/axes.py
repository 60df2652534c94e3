"""Shared checks for the front end's axis arguments."""

from __future__ import annotations

from titanax.errors import PlanError

__all__ = ["axes_tuple"]


def axes_tuple(value: object, what: str) -> tuple[str, ...]:
    """Return ``value`` as a non-empty tuple of axis names, or raise TX204 naming ``what``."""
    axes = (value,) if isinstance(value, str) else value
    if not isinstance(axes, (tuple, list)) or not axes or not all(isinstance(a, str) for a in axes):
        raise PlanError.single(
            "TX204",
            f"{what} must be an axis name or a tuple of axis names, got {value!r}",
            'write axis="data" or axis=("data", "replica")',
        )
    return tuple(axes)
