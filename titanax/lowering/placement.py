"""Batch placement: host data in, a global array sharded over the data-parallel axes out.

Three kinds of batch reach a step:

- arrays every process holds whole (one process, or each process passing the
  same global batch): each device receives its rows of it;
- a :class:`PerProcess` batch, holding only this process's rows: the global
  array is assembled from every process's share
  (``jax.make_array_from_process_local_data``), processes in rank order;
- ``jax.Array``s that already span every process: used as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

__all__ = ["PerProcess", "global_shapes", "place_global", "place_global_batch"]


@dataclasses.dataclass(frozen=True)
class PerProcess:
    """This process's rows of a global batch (a pytree of host arrays).

    Inside a step, Titanax assembles the global batch from every process's
    share: process ``i`` holds rows ``tx.data.process_slice(global_batch_size)``.
    In a single process it is simply the whole batch.
    """

    batch: Any
    """This process's rows."""


jax.tree_util.register_dataclass(PerProcess, data_fields=["batch"], meta_fields=[])


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _dtype(x: Any) -> Any:
    return x.dtype if hasattr(x, "dtype") else np.result_type(x)


def global_shapes(batch: Any) -> Any:
    """The batch as ``ShapeDtypeStruct``s of the global arrays it stands for (checked before placing)."""
    if isinstance(batch, PerProcess):
        count = jax.process_count()

        def scaled(x: Any) -> jax.ShapeDtypeStruct:
            shape = _shape(x)
            return jax.ShapeDtypeStruct((shape[0] * count, *shape[1:]) if shape else shape, _dtype(x))

        return jax.tree.map(scaled, batch.batch)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(_shape(x), _dtype(x)), batch)


def place_global_batch(batch: Any, sharding: NamedSharding) -> Any:
    """Place ``batch`` on the mesh with ``sharding`` (split over the DP axes), whichever kind it is."""
    if isinstance(batch, PerProcess):
        if jax.process_count() == 1:
            return jax.device_put(batch.batch, sharding)
        count = jax.process_count()

        def assemble(x: Any) -> jax.Array:
            local = np.asarray(x)
            return jax.make_array_from_process_local_data(sharding, local, (local.shape[0] * count, *local.shape[1:]))

        return jax.tree.map(assemble, batch.batch)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)

    def place(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        whole = np.asarray(x)
        return jax.make_array_from_callback(whole.shape, sharding, lambda index: whole[index])

    return jax.tree.map(place, batch)


def place_global(x: Any, sharding: NamedSharding) -> jax.Array:
    """A new array with ``x``'s value laid out by ``sharding``; every process passes the same ``x``.

    Always a copy: the caller's array is never aliased (steps donate the state).
    """
    if jax.process_count() == 1:
        return jax.device_put(x, sharding, may_alias=False)
    whole = np.asarray(x)
    return jax.make_array_from_callback(whole.shape, sharding, lambda index: whole[index])
