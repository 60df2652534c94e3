"""``tx.collectives``: explicit collectives over named mesh axes, for use inside step functions.

Each is a thin, checked wrapper over the ``jax.lax`` primitive of the same
meaning. They exist so that a step's communication reads as plainly as the
plan: ``tx.collectives.psum(partial, "model")``. Every call shows up in the
step's IR (``step.plan_ir(state, batch)``) with its axis and bytes. Called
outside a ``@tx.step_fn`` or with an axis the mesh lacks, they raise a
located error instead of JAX's unbound-axis error.

Example::

    @tx.step_fn
    def step(state, batch):
        rank = tx.collectives.axis_index("model")
        ...
"""

from __future__ import annotations

import difflib
from typing import Any

from jax import lax

from titanax.errors import StepFnError
from titanax.lowering import active_step_context

__all__ = ["all_gather", "all_to_all", "axis_index", "pmax", "pmean", "pmin", "ppermute", "psum", "psum_scatter"]

Axis = str | tuple[str, ...]


def _checked(axis: Axis, what: str) -> Axis:
    ctx = active_step_context()
    if ctx is None:
        raise StepFnError.single(
            "TX504",
            f"tx.collectives.{what} was called outside a @tx.step_fn",
            "collectives need the mesh of a compiled step; call it inside a function decorated with @tx.step_fn",
        )
    for name in (axis,) if isinstance(axis, str) else axis:
        if name not in ctx.mesh_axes:
            close = difflib.get_close_matches(name, list(ctx.mesh_axes), n=1)
            raise StepFnError.single(
                "TX505",
                f"tx.collectives.{what} over axis '{name}', which is not in the mesh {ctx.mesh_axes}",
                (f"did you mean '{close[0]}'?" if close else f"use one of {ctx.mesh_axes}"),
            )
    return axis


def psum(x: Any, axis: Axis) -> Any:
    """Sum ``x`` over ``axis`` (an all-reduce); the result is the same on every device of the group."""
    return lax.psum(x, _checked(axis, "psum"))


def pmean(x: Any, axis: Axis) -> Any:
    """Average ``x`` over ``axis`` (an all-reduce followed by a division)."""
    return lax.pmean(x, _checked(axis, "pmean"))


def pmax(x: Any, axis: Axis) -> Any:
    """Maximum over ``axis``. It has no derivative: apply it to ``lax.stop_gradient(x)``."""
    return lax.pmax(x, _checked(axis, "pmax"))


def pmin(x: Any, axis: Axis) -> Any:
    """Minimum over ``axis``. It has no derivative: apply it to ``lax.stop_gradient(x)``."""
    return lax.pmin(x, _checked(axis, "pmin"))


def all_gather(x: Any, axis: Axis, *, dim: int = 0, tiled: bool = True) -> Any:
    """Concatenate every device's ``x`` along ``dim`` (stack on a new ``dim`` if not ``tiled``).

    Its derivative is a reduce-scatter (``psum_scatter``) of the cotangent.
    """
    return lax.all_gather(x, _checked(axis, "all_gather"), axis=dim, tiled=tiled)


def psum_scatter(x: Any, axis: Axis, *, dim: int = 0, tiled: bool = True) -> Any:
    """Sum over ``axis`` and keep this device's slice of dimension ``dim`` (a reduce-scatter).

    Its derivative is an all-gather of the cotangent.
    """
    return lax.psum_scatter(x, _checked(axis, "psum_scatter"), scatter_dimension=dim, tiled=tiled)


def ppermute(x: Any, axis: Axis, perm: list[tuple[int, int]]) -> Any:
    """Send ``x`` from index ``source`` to index ``destination`` along ``axis`` for each pair in ``perm``;
    devices that receive nothing get zeros."""
    return lax.ppermute(x, _checked(axis, "ppermute"), perm=perm)


def all_to_all(x: Any, axis: Axis, *, split_dim: int, concat_dim: int, tiled: bool = True) -> Any:
    """Split ``x`` along ``split_dim`` into one piece per device, exchange them, and concatenate
    the received pieces along ``concat_dim``."""
    return lax.all_to_all(x, _checked(axis, "all_to_all"), split_dim, concat_dim, tiled=tiled)


def axis_index(axis: Axis) -> Any:
    """This device's index along ``axis`` (no communication)."""
    return lax.axis_index(_checked(axis, "axis_index"))
