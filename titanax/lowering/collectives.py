"""The one emitter of the collectives the IR declares, and the varying-type helpers around it.

Every collective Titanax inserts (the data-parallel gradient and metric
all-reduces, the pipeline's permutes and all-reduces, the float16 overflow
count) is emitted by :func:`emit` from its :class:`~titanax.ir.CollectiveNode`:
the op, reduction, axes and permutation pairs come from the node, never from a
name. Each runs under the named scope ``titanax:<node id>``, so the trace of a
step can check every emitted collective against its node
(:func:`titanax.lowering.trace.check_emitted`) and tell them apart from the
collectives the user's code performs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jax
from jax import lax

from titanax.errors import Diagnostic, IRVerificationError
from titanax.ir import CollectiveNode, Operand

__all__ = [
    "TITANAX_SCOPE",
    "IRCollective",
    "collective_scope",
    "emit",
    "ensure_varying",
    "ensure_varying_tree",
    "lowering_collective",
    "lowering_collectives",
    "make_varying",
    "node_id_of_scope",
    "varying_axes",
]

TITANAX_SCOPE = "titanax"
"""Prefix of the named scope around each collective the lowering emits from the IR."""


def collective_scope(node_id: str) -> str:
    """The named scope of the collectives emitted for IR node ``node_id``."""
    return f"{TITANAX_SCOPE}:{node_id}"


def node_id_of_scope(name_stack: str) -> str | None:
    """The IR node id named by a ``titanax:<id>`` scope in ``name_stack``, or ``None``."""
    for part in name_stack.split("/"):
        # Autodiff wraps scopes as "transpose(jvp(titanax:collective.x))": strip the wrappers.
        inner = part
        while inner.endswith(")") and "(" in inner:
            inner = inner[inner.index("(") + 1 : -1]
        if inner.startswith(TITANAX_SCOPE + ":"):
            return inner[len(TITANAX_SCOPE) + 1 :]
    return None


def _not_lowerable(node_id: str, node: CollectiveNode) -> IRVerificationError:
    return IRVerificationError(
        [
            Diagnostic(
                code="TX903",
                message=f"collective %{node_id} ({node.op}, reduction {node.reduction}) has no lowering",
                hint="this is a Titanax bug; please report it with the IR dump",
            )
        ]
    )


def _emit_leaf(node_id: str, node: CollectiveNode, x: Any, dim: int | None = 0) -> Any:
    axes = node.axes
    if dim is None:  # an array this collective leaves alone (an FSDP parameter kept whole)
        return x
    if node.op == "all-reduce":
        if node.reduction == "mean":
            return lax.pmean(x, axes)
        if node.reduction == "sum":
            return lax.psum(x, axes)
        if node.reduction in ("max", "min"):
            # pmax/pmin have no derivative: the result is treated as a constant.
            reduce = lax.pmax if node.reduction == "max" else lax.pmin
            return reduce(lax.stop_gradient(x), axes)
    elif node.op == "collective-permute":
        return lax.ppermute(x, axes, perm=node.permutation)
    elif node.op == "all-gather":
        # Updated FSDP shards come back replicated, as the state's layout says; every other gather
        # (parameters about to be used) stays varying, so autodiff adds no hidden reduction.
        to = "invarying" if node.operand == Operand.FSDP_UPDATED_PARAMS else "varying"
        return lax.all_gather(x, axes, axis=dim, tiled=True, to=to)
    elif node.op == "reduce-scatter" and node.reduction in ("sum", "mean"):
        scattered = lax.psum_scatter(x, axes, scatter_dimension=dim, tiled=True)
        return scattered / node.group_size if node.reduction == "mean" else scattered
    raise _not_lowerable(node_id, node)


def emit(node_id: str, node: CollectiveNode, tree: Any, dims: Any = None) -> Any:
    """Apply the collective ``node`` (stored under ``node_id``) to every array in ``tree``.

    ``dims``, a tree like ``tree``, gives each array's gather or scatter dimension (``None``:
    leave that array alone); without it every array is gathered or scattered on dimension 0.
    """
    with jax.named_scope(collective_scope(node_id)):
        if dims is None:
            return jax.tree.map(lambda x: _emit_leaf(node_id, node, x), tree)
        leaves, treedef = jax.tree.flatten(tree)
        # flatten_up_to keeps a None dimension as a leaf (tree.map would read it as an empty subtree).
        out = [_emit_leaf(node_id, node, x, d) for x, d in zip(leaves, treedef.flatten_up_to(dims), strict=True)]
        return jax.tree.unflatten(treedef, out)


@dataclass(frozen=True)
class IRCollective:
    """A collective node of the IR with its id: what the lowering holds to emit it."""

    node_id: str
    node: CollectiveNode

    def __call__(self, tree: Any, dims: Any = None) -> Any:
        """Emit the collective on every array of ``tree`` (on the dimensions ``dims`` gives, see :func:`emit`)."""
        return emit(self.node_id, self.node, tree, dims)


def lowering_collectives(ir: Any, operand: Operand) -> tuple[IRCollective, ...]:
    """The collectives the lowering must emit for ``operand``, found by kind and origin (never by name)."""
    return tuple(
        IRCollective(node_id, node)
        for node_id, node in ir.items(CollectiveNode)
        if node.origin == "lowering" and node.operand == operand
    )


def lowering_collective(ir: Any, operand: Operand) -> IRCollective | None:
    """The one collective the lowering emits for ``operand``, or ``None`` when the plan needs none."""
    found = lowering_collectives(ir, operand)
    return found[0] if found else None


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


def ensure_varying_tree(tree: Any, axes: Iterable[str]) -> Any:
    """:func:`ensure_varying` on every array of ``tree``."""
    axes = tuple(axes)
    if not axes:
        return tree
    return jax.tree.map(lambda x: ensure_varying(x, axes), tree)
