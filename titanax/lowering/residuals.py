"""What a pipeline stage's forward keeps for its backward, packed into fixed-size stash rows.

A forward run through ``jax.vjp`` returns a pullback whose leaves are the
residuals the backward needs. The pipeline loop must carry them from the tick
that runs the forward to the tick that runs the backward, in buffers whose shape
does not depend on which stage a device is. So the residuals are sorted into
groups of one dtype and one set of varying mesh axes (``check_vma``'s type), and
each group is raveled into one flat row: a stash slot holds one row per group,
sized for the largest stage.

Residuals that are the stage's own parameters or microbatch are not stashed: the
backward takes them again from where they live (the parameters do not change
during a step, the microbatch is sliced from the batch).

How a stage's forward keeps its work follows the plan's ``remat`` policy, applied
with ``jax.checkpoint``: ``none`` keeps every residual, ``dots`` keeps matmul
outputs and recomputes the rest, ``full`` keeps only the stage's inputs and
reruns the whole forward in the backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from titanax.lowering.collectives import ensure_varying, varying_axes

__all__ = ["GroupKey", "ResidualLayout", "StashShape", "apply_remat", "trace_layout"]

GroupKey = tuple[str, tuple[str, ...]]
"""A stash group: dtype name and the sorted mesh axes its values vary along."""


def apply_remat(fn: Callable, policy: str) -> Callable:
    """``fn`` wrapped as the ``remat`` policy says (``none`` leaves it as it is)."""
    if policy == "full":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
    if policy == "dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_saveable)
    return fn


@dataclass(frozen=True)
class _Stashed:
    group: GroupKey
    offset: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ResidualLayout:
    """Where each residual of one stage's pullback comes from: a reference leaf, or a stash row."""

    treedef: Any
    sources: tuple[int | _Stashed, ...]
    """Per pullback leaf: the index of the reference leaf it is, or where it sits in the stash row."""
    sizes: dict[GroupKey, int]
    """Elements of each group this stage stashes."""

    def pack(self, leaves: Sequence[Any], rows: dict[GroupKey, Any]) -> dict[GroupKey, Any]:
        """The stash rows for ``leaves`` (a forward's residuals); groups this stage does not use keep ``rows``."""
        parts: dict[GroupKey, list[Any]] = {}
        for leaf, source in zip(leaves, self.sources, strict=True):
            if isinstance(source, _Stashed):
                parts.setdefault(source.group, []).append(jnp.ravel(leaf))
        packed = dict(rows)
        for group, pieces in parts.items():
            width = rows[group].shape[0]
            flat = jnp.concatenate(pieces) if len(pieces) > 1 else pieces[0]
            if flat.shape[0] < width:
                pad = ensure_varying(jnp.zeros((width - flat.shape[0],), flat.dtype), group[1])
                flat = jnp.concatenate([flat, pad])
            packed[group] = flat
        return packed

    def leaves(self, rows: dict[GroupKey, Any], references: Sequence[Any]) -> list[Any]:
        """The stashed values back from ``rows``, with the current ``references`` in their places."""
        leaves = []
        for source in self.sources:
            if isinstance(source, _Stashed):
                size = math.prod(source.shape)
                leaves.append(
                    lax.slice_in_dim(rows[source.group], source.offset, source.offset + size).reshape(source.shape)
                )
            else:
                leaves.append(references[source])
        return leaves

    def rebuild(self, rows: dict[GroupKey, Any], references: Sequence[Any]) -> Any:
        """The stashed tree (a stage's pullback) rebuilt from ``rows`` and the current ``references``."""
        return jax.tree.unflatten(self.treedef, self.leaves(rows, references))


def trace_layout(tree: Any, references: Sequence[Any]) -> tuple[ResidualLayout, list[Any]]:
    """The stash layout of ``tree``'s leaves (a pullback from ``jax.vjp``, or a list of values), and the leaves.

    A leaf that is one of ``references`` (the same traced value) is not stashed.
    """
    leaves, treedef = jax.tree.flatten(tree)
    index = {id(ref): k for k, ref in enumerate(references)}
    sources: list[int | _Stashed] = []
    sizes: dict[GroupKey, int] = {}
    for leaf in leaves:
        if id(leaf) in index:
            sources.append(index[id(leaf)])
            continue
        aval = jax.typeof(leaf)
        group = (str(aval.dtype), tuple(sorted(varying_axes(aval))))
        offset = sizes.get(group, 0)
        sources.append(_Stashed(group, offset, tuple(aval.shape)))
        sizes[group] = offset + math.prod(aval.shape)
    return ResidualLayout(treedef, tuple(sources), sizes), leaves


@dataclass(frozen=True)
class StashShape:
    """The stash every device allocates: ``slots`` rows of each group, as wide as the widest stage needs."""

    slots: int
    widths: dict[GroupKey, int]

    @classmethod
    def covering(cls, layouts: Sequence[ResidualLayout], slots: int) -> StashShape:
        """Rows wide enough for every layout's groups."""
        widths: dict[GroupKey, int] = {}
        for layout in layouts:
            for group, size in layout.sizes.items():
                widths[group] = max(widths.get(group, 0), size)
        return cls(slots, widths)

    def zeros(self) -> dict[GroupKey, Any]:
        """Empty stash buffers, ``(slots, width)`` per group, varying as the group says."""
        return {
            group: ensure_varying(jnp.zeros((self.slots, width), jnp.dtype(group[0])), group[1])
            for group, width in self.widths.items()
        }

    @staticmethod
    def read(buffers: dict[GroupKey, Any], slot: Any) -> dict[GroupKey, Any]:
        """One slot's row of every group."""
        return {group: lax.dynamic_index_in_dim(buf, slot, keepdims=False) for group, buf in buffers.items()}

    @staticmethod
    def write(buffers: dict[GroupKey, Any], rows: dict[GroupKey, Any], slot: Any) -> dict[GroupKey, Any]:
        """``buffers`` with ``rows`` stored at ``slot``."""
        return {group: lax.dynamic_update_index_in_dim(buf, rows[group], slot, 0) for group, buf in buffers.items()}
