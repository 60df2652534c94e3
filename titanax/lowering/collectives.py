"""Emit the collectives the IR declares, and nothing else.

Each :class:`~titanax.ir.CollectiveNode` becomes one ``lax`` collective applied
to every leaf of its operand. The lowering never adds a collective the IR does
not list, which is what lets tests compare compiled HLO against the IR.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jax
from jax import lax

from titanax.ir import CollectiveNode

__all__ = ["emit_collective", "emit_collectives", "ensure_varying", "make_varying", "varying_axes"]


def emit_collective(node: CollectiveNode, tree: Any) -> Any:
    """Apply the collective ``node`` to every array in ``tree``."""
    if node.op != "all-reduce" or node.reduction not in ("mean", "sum"):
        raise NotImplementedError(f"lowering of collective {node.op}/{node.reduction} is not implemented")
    reduce = lax.pmean if node.reduction == "mean" else lax.psum
    return jax.tree.map(lambda x: reduce(x, node.axes), tree)


def emit_collectives(nodes: Sequence[CollectiveNode], tree: Any) -> Any:
    """Apply ``nodes`` to ``tree`` in order."""
    for node in nodes:
        tree = emit_collective(node, tree)
    return tree


def make_varying(tree: Any, axes: tuple[str, ...]) -> Any:
    """Mark replicated arrays as varying over ``axes`` inside ``shard_map``.

    Autodiff of an invariant (replicated) input inside ``shard_map`` sums its
    gradient over the axes it is replicated on, an implicit all-reduce. Making
    parameters varying first keeps gradients local, so the only reduction is
    the explicit one the IR declares.
    """
    if not axes:
        return tree
    return jax.tree.map(lambda x: lax.pcast(x, axes, to="varying"), tree)


def varying_axes(value: Any) -> frozenset[str]:
    """The mesh axes a value varies along inside ``shard_map`` (``check_vma``'s view of it).

    Takes a traced array, an abstract value, or a ``ShapeDtypeStruct`` from ``jax.eval_shape``.
    """
    manual = getattr(value, "manual_axis_type", None)
    if manual is None:
        manual = getattr(jax.typeof(value), "manual_axis_type", None)
    return frozenset(manual.varying) if manual is not None else frozenset()


def ensure_varying(value: Any, axes: Iterable[str]) -> Any:
    """Mark ``value`` varying over each of ``axes`` it does not vary along yet.

    ``lax.pcast`` refuses a value already varying over an axis, so only the missing ones are cast.
    """
    missing = tuple(sorted(set(axes) - varying_axes(value)))
    return lax.pcast(value, missing, to="varying") if missing else value
