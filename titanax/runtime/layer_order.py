"""The order of the stacked blocks in a state under an interleaved pipeline, and moving between orders.

Sharded over the pipeline axis, a stack of ``L`` blocks gives device ``d`` the
``L / p`` consecutive layers from ``d * L / p`` on. An interleaved schedule runs
model stage ``c * p + d`` as chunk ``c`` of device ``d``, so device ``d`` must
hold the non-consecutive layers of its ``v`` chunks. A state built for such a
plan therefore stores the blocks in *storage order*: position ``k`` of the stack
holds the layer :func:`storage_permutation` names. Everything that leaves the
state (checkpoints, :meth:`Engine.params_in_model_order`) goes back to model
order first, so a checkpoint restores under any plan.

Moving a sharded stack between the orders is an explicit exchange inside
``shard_map``: ``p`` rounds of ``ppermute``, round ``r`` sending what device
``d`` holds for device ``d + r`` (the rest of each round's buffer is padding).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding

from titanax.lowering.collectives import ensure_varying, varying_axes

__all__ = ["BlockOrder", "BlockPadding", "storage_permutation"]


def storage_permutation(layers: int, stages: int, chunks: int) -> np.ndarray:
    """``perm[k]``: the model layer stored at position ``k`` when ``chunks`` chunks run on each of ``stages`` devices."""
    per_chunk = layers // (stages * chunks)
    perm = np.empty(layers, np.int64)
    for k in range(layers):
        device, local = divmod(k, chunks * per_chunk)
        chunk, offset = divmod(local, per_chunk)
        perm[k] = (chunk * stages + device) * per_chunk + offset
    return perm


class BlockOrder:
    """Storage order of the blocks of one interleaved plan: ``chunks`` chunks on each of ``stages`` devices."""

    def __init__(self, axis: str, stages: int, chunks: int):
        self.axis, self.stages, self.chunks = axis, stages, chunks

    def to_storage_host(self, stack: Any) -> Any:
        """A host (unplaced) stack in storage order."""
        layers = stack.shape[0]
        return jnp.asarray(stack)[storage_permutation(layers, self.stages, self.chunks)]

    def _moves(self, to_model: bool) -> tuple[np.ndarray, np.ndarray, int]:
        """Per (round, device): which local chunks to send and where the receiver puts them.

        In model order device ``e`` holds model stages ``e * v + j``; in storage order device ``d``
        holds ``c * p + d`` at local chunk ``c``.
        """
        p, v = self.stages, self.chunks
        sends: list[list[list[tuple[int, int]]]] = [[[] for _ in range(p)] for _ in range(p)]
        for device in range(p):
            for local in range(v):
                if to_model:  # from storage: model stage local * p + device
                    stage = local * p + device
                    target, slot = divmod(stage, v)
                else:  # from model order: model stage device * v + local
                    stage = device * v + local
                    slot, target = divmod(stage, p)
                sends[(target - device) % p][device].append((local, slot))
        width = max(1, max(len(s) for rnd in sends for s in rnd))
        send = np.zeros((p, p, width), np.int32)  # local chunk to send (padding sends chunk 0)
        place = np.full((p, p, width), v, np.int32)  # receiver's slot; v = discard
        for rnd in range(p):
            for device in range(p):
                for k, (local, slot) in enumerate(sends[rnd][device]):
                    send[rnd, device, k] = local
                    place[rnd, (device + rnd) % p, k] = slot
        return send, place, width

    def _convert(self, x: jax.Array, to_model: bool) -> jax.Array:
        sharding = x.sharding
        if not isinstance(sharding, NamedSharding) or not sharding.spec or sharding.spec[0] != self.axis:
            return x  # only stacks split over the pipeline axis on dimension 0 are blocks
        p, v = self.stages, self.chunks
        send, place, width = self._moves(to_model)
        send_table, place_table = jnp.asarray(send), jnp.asarray(place)

        def exchange(local: jax.Array) -> jax.Array:
            per_chunk = local.shape[0] // v
            chunks = local.reshape(v, per_chunk, *local.shape[1:])
            out = jnp.zeros((v + 1, per_chunk, *local.shape[1:]), local.dtype)  # slot v absorbs padding
            out = ensure_varying(out, varying_axes(local))
            me = lax.axis_index(self.axis)
            for rnd in range(p):
                outgoing = chunks[send_table[rnd, me]]
                if rnd:
                    outgoing = lax.ppermute(outgoing, self.axis, [(d, (d + rnd) % p) for d in range(p)])
                out = out.at[place_table[rnd, me]].set(outgoing)
            return out[:v].reshape(local.shape)

        mapped = jax.shard_map(
            exchange, mesh=sharding.mesh, in_specs=sharding.spec, out_specs=sharding.spec, check_vma=True
        )
        return jax.jit(mapped)(x)

    def to_model(self, tree: Any) -> Any:
        """Every stack in ``tree`` split over the pipeline axis, from storage to model order."""
        return jax.tree.map(lambda x: self._convert(x, to_model=True) if isinstance(x, jax.Array) else x, tree)

    def to_storage(self, tree: Any) -> Any:
        """Every stack in ``tree`` split over the pipeline axis, from model to storage order."""
        return jax.tree.map(lambda x: self._convert(x, to_model=False) if isinstance(x, jax.Array) else x, tree)


class BlockPadding:
    """Storage of stages that run different numbers of layers (see ``titanax/ir/stage_split.py``):
    device ``s``'s shard holds its ``counts[s]`` layers, then zero rows up to ``max(counts)``."""

    def __init__(self, axis: str, counts: tuple[int, ...]):
        self.axis, self.counts = axis, counts
        self.rows = max(counts)
        # Stored row of each model layer, in model order.
        self.stored_rows = np.concatenate([s * self.rows + np.arange(n) for s, n in enumerate(counts)])

    def to_storage_host(self, stack: Any) -> Any:
        """A host (unplaced) stack of ``sum(counts)`` layers, padded to ``stages * rows``."""
        stack = jnp.asarray(stack)
        padded = jnp.zeros((len(self.counts) * self.rows, *stack.shape[1:]), stack.dtype)
        return padded.at[self.stored_rows].set(stack)

    def _unpad(self, x: jax.Array) -> jax.Array:
        sharding = x.sharding
        if not isinstance(sharding, NamedSharding) or not sharding.spec or sharding.spec[0] != self.axis:
            return x
        rows = jnp.asarray(self.stored_rows)
        out_spec = jax.P(None, *sharding.spec[1:])

        def gather(local: jax.Array) -> jax.Array:
            whole = lax.all_gather(local, self.axis, axis=0, tiled=True, to="invarying")
            return whole[rows]

        mapped = jax.shard_map(gather, mesh=sharding.mesh, in_specs=sharding.spec, out_specs=out_spec, check_vma=True)
        return jax.jit(mapped)(x)

    def to_model(self, tree: Any) -> Any:
        """Every padded stack in ``tree`` as the model's stack of ``sum(counts)`` layers, gathered over the
        pipeline axis (``all_gather``: a stack that does not divide over the axis cannot stay split)."""
        return jax.tree.map(lambda x: self._unpad(x) if isinstance(x, jax.Array) else x, tree)
