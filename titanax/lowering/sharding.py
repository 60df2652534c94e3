"""Partition specs for the training state, read from the IR's ``param`` nodes.

Parameters get the spec their shard rule resolved to. Optimizer state follows
the parameters: any part of it shaped like the parameter tree (Adam's moments)
gets the parameters' specs, and everything else (step counts) is replicated,
so a TP-sharded layer's moments take 1/TP of the memory on each device.
"""

from __future__ import annotations

from typing import Any

import jax

from titanax.ir import PlanIR

__all__ = ["optimizer_state_specs", "param_paths_and_shapes", "param_specs", "path_text"]

P = jax.P


def path_text(path: tuple[Any, ...]) -> str:
    """A pytree key path as the ``/``-joined text shard rules match: ``block/attn/qkv/w``."""
    parts = []
    for key in path:
        for attribute in ("key", "idx", "name"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def param_paths_and_shapes(params: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``(path, shape)`` of every parameter leaf, in tree order."""
    return tuple((path_text(path), tuple(leaf.shape)) for path, leaf in jax.tree_util.tree_leaves_with_path(params))


def param_specs(ir: PlanIR, params: Any) -> Any:
    """A tree like ``params`` holding each parameter's full-rank ``PartitionSpec``."""
    resolved = {node.path: node.spec for node in ir.params()}

    def spec(path: tuple[Any, ...], leaf: Any) -> jax.sharding.PartitionSpec:
        return P(*resolved.get(path_text(path), (None,) * leaf.ndim))

    return jax.tree_util.tree_map_with_path(spec, params)


def optimizer_state_specs(opt_state: Any, params: Any, specs: Any) -> Any:
    """Specs for ``opt_state``: subtrees shaped like ``params`` take ``specs``, the rest is replicated."""
    params_def = jax.tree.structure(params)

    def assign(node: Any) -> Any:
        if jax.tree.structure(node) == params_def and _same_shapes(node, params):
            return specs
        children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
        if treedef.num_leaves == 1 and children and children[0] is node:  # a leaf
            return P(*([None] * getattr(node, "ndim", 0)))
        return jax.tree_util.tree_unflatten(treedef, [assign(child) for child in children])

    return assign(opt_state)


def _same_shapes(tree: Any, params: Any) -> bool:
    return all(
        getattr(a, "shape", None) == getattr(b, "shape", None)
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(params), strict=True)
    )
