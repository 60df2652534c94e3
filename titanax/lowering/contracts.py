"""What a step's inputs and its function's result must be, checked before anything runs.

- :func:`check_live_arrays`: no array of the state or batch was deleted, which is
  what donation does to the state a step consumed. Reusing it would otherwise end
  in JAX's "buffer has been deleted or donated" or, on some backends, a crash.
- :func:`check_step_result`: the user's function returned ``(state, metrics)``: a
  state of the same kind as it was given, and metrics made of arrays or numbers.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import numpy as np

from titanax.errors import StepFnError

__all__ = ["check_live_arrays", "check_step_result"]


def _deleted(tree: Any) -> str | None:
    # Every step runs this: look at the leaves first, and build key paths only to name a deleted one.
    if not any(_is_deleted(leaf) for leaf in jax.tree.leaves(tree)):
        return None
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if _is_deleted(leaf):
            return jax.tree_util.keystr(path) or "<the value itself>"
    return None


def _is_deleted(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.is_deleted()


def check_live_arrays(state: Any, batch: Any) -> None:
    """Raise TX516 if an array of ``state`` or ``batch`` was deleted (a donated, consumed state)."""
    for what, tree in (("state", state), ("batch", batch)):
        where = _deleted(tree)
        if where is not None:
            raise StepFnError.single(
                "TX516",
                f"the {what} passed to the step holds a deleted array at {where}: a step donates (consumes) the "
                "state it is given, so the old state cannot be used again",
                "use the state the step returned: state, metrics = step(state, batch); or decorate the step with "
                "@tx.step_fn(donate_state=False) to keep the old state alive (at the cost of memory)",
            )


def _what(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"


def _bad_metric(metrics: Any) -> str | None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(metrics):
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)) or (
            isinstance(leaf, numbers.Number) and not isinstance(leaf, bool)
        ):
            continue
        if isinstance(leaf, bool):
            continue
        return f"{jax.tree_util.keystr(path) or '<metrics>'} is a {type(leaf).__name__}"
    return None


def check_step_result(returned: Any, state_type: type) -> tuple[Any, Any]:
    """``(state, metrics)`` from what the user's step returned, or TX517 naming what it returned."""
    hint = "end the step with: return state.apply_gradients(grads=grads), {'loss': loss}"
    if not isinstance(returned, tuple) or len(returned) != 2:
        raise StepFnError.single(
            "TX517", f"a step must return (state, metrics), but it returned {_what(returned)}", hint
        )
    state, metrics = returned
    if not isinstance(state, state_type):
        raise StepFnError.single(
            "TX517",
            f"a step must return (state, metrics) with the {state_type.__name__} first, but the first value is "
            f"{_what(state)}",
            hint + " (apply_gradients returns the new state; the gradients themselves are not returned)",
        )
    bad = _bad_metric(metrics)
    if bad is not None:
        raise StepFnError.single(
            "TX517",
            f"step metrics must be arrays or numbers, but {bad}",
            "return numbers as metrics (e.g. {'loss': loss}); keep strings and other objects out of the step",
        )
    return state, metrics
