"""Partition specs for the training state, read from the IR's ``param`` nodes.

Parameters get the spec their shard rule resolved to. Optimizer state follows
the parameters: any part of it shaped like the parameter tree (Adam's moments)
gets the parameters' specs, and everything else (step counts) is replicated,
so a TP-sharded layer's moments take 1/TP of the memory on each device.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from titanax.ir import PlanIR

__all__ = ["optimizer_state_specs", "param_paths_and_shapes", "param_specs", "path_text", "update_specs"]

P = jax.P


def path_text(path: tuple[Any, ...]) -> str:
    """A pytree key path as the ``/``-joined text shard rules match: ``block/attn/qkv/w``.

    A final ``.value`` attribute is dropped: Flax NNX keeps each parameter in a variable whose
    array is its ``value``, and its rules should read ``up/kernel``, not ``up/kernel/value``.
    """
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return "/".join(_key_text(key) for key in path)


def param_paths_and_shapes(params: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``(path, shape)`` of every parameter leaf, in tree order."""
    return tuple((path_text(path), tuple(np.shape(leaf))) for path, leaf in jax.tree_util.tree_leaves_with_path(params))


def param_specs(ir: PlanIR, params: Any) -> Any:
    """A tree like ``params`` holding each parameter's full-rank ``PartitionSpec``."""
    resolved = {node.path: node.spec for node in ir.params()}

    def spec(path: tuple[Any, ...], leaf: Any) -> jax.sharding.PartitionSpec:
        return P(*resolved.get(path_text(path), (None,) * leaf.ndim))

    return jax.tree_util.tree_map_with_path(spec, params)


def update_specs(ir: PlanIR, params: Any) -> Any:
    """A tree like ``params`` of the specs each device's update works on: the parameter's own spec,
    with its FSDP dimension split over the FSDP axes. Under FSDP stages 1 and 2 parameters are
    stored whole but updated (and their optimizer state held) in shards; otherwise this equals
    :func:`param_specs`."""
    fsdp = ir.fully_sharded()
    if fsdp is None:
        return param_specs(ir, params)
    entry = fsdp.axes[0] if len(fsdp.axes) == 1 else fsdp.axes
    resolved = {node.path: (node.spec, node.fsdp_dim) for node in ir.params()}

    def spec(path: tuple[Any, ...], leaf: Any) -> jax.sharding.PartitionSpec:
        found, dim = resolved.get(path_text(path), ((None,) * leaf.ndim, None))
        return P(*(entry if i == dim else e for i, e in enumerate(found)))

    return jax.tree_util.tree_map_with_path(spec, params)


def optimizer_state_specs(opt_state: Any, params: Any, specs: Any) -> Any:
    """Specs for ``opt_state``: a leaf whose key path ends with a parameter's path, and has that
    parameter's shape, takes its spec (Adam's moments, masked or per-group states alike);
    every other leaf (step counts, scalars) is replicated."""
    by_path = {
        tuple(_key_text(k) for k in path): (leaf.shape, spec)
        for (path, leaf), spec in zip(
            jax.tree_util.tree_leaves_with_path(params),
            jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
            strict=True,
        )
    }
    lengths = sorted({len(k) for k in by_path}, reverse=True)

    def spec_for(path: tuple[Any, ...], leaf: Any) -> jax.sharding.PartitionSpec:
        keys = tuple(_key_text(k) for k in path)
        for length in lengths:
            found = by_path.get(keys[-length:]) if len(keys) >= length else None
            if found is not None and found[0] == getattr(leaf, "shape", None):
                return found[1]
        return P(*([None] * getattr(leaf, "ndim", 0)))

    return jax.tree_util.tree_map_with_path(spec_for, opt_state)


def _key_text(key: Any) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)
