"""``tx.data``: deterministic, resumable batches, and each process's share of them.

A training run is reproducible and resumable only if batch ``n`` is the same
whenever it is asked for. :class:`ArrayLoader` makes batch ``n`` a pure
function of the arrays, the seed and ``n``: each epoch is a fresh permutation
drawn from ``(seed, epoch)``. ``Engine.fit`` records how many batches it has
taken, so a resumed run continues with the very next batch.

With several processes (``titanax launch``, ``jax.distributed``) each process
loads only its own rows of every global batch and hands them to the step
wrapped in :class:`PerProcess`; the step assembles the global array over the
data-parallel axes. :func:`process_slice` says which rows are whose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from titanax.errors import TrainingError
from titanax.lowering import PerProcess

__all__ = ["ArrayLoader", "PerProcess", "process_slice"]


def process_slice(
    global_batch_size: int, *, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """The rows of a global batch that process ``process_index`` (default: this one) loads.

    Processes take equal, contiguous blocks in process order. That matches the
    global array only when the processes split the data-parallel axes in rank
    order (each process's devices hold one contiguous block of the batch), as
    on a mesh whose data axis comes first; a plan whose processes span the
    tensor or pipeline axes instead needs every process to load the same rows. Example: with 2 processes and a
    global batch of 256, process 1 loads rows ``slice(128, 256)``.
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if global_batch_size % count:
        raise TrainingError.single(
            "TX730",
            f"a global batch of {global_batch_size} does not split evenly over {count} processes",
            f"use a batch size that is a multiple of {count}",
        )
    share = global_batch_size // count
    return slice(index * share, (index + 1) * share)


class ArrayLoader:
    """Batches of ``batch_size`` rows from arrays held in host memory, reshuffled every epoch.

    ``loader.batch(n)`` is the ``n``-th batch of the run, the same every time it is
    asked for, which is what makes a resumed run identical to one that never
    stopped. Incomplete final batches of an epoch are dropped. Under several
    processes it returns this process's rows only, as a :class:`PerProcess`.

    Example::

        train = tx.data.ArrayLoader({"x": images, "y": labels}, batch_size=128, seed=0)
        state = engine.fit(train_step, train, steps=1000)
    """

    def __init__(self, arrays: Mapping[str, Any], batch_size: int, *, shuffle: bool = True, seed: int = 0):
        if not isinstance(arrays, Mapping) or not arrays:
            raise TrainingError.single(
                "TX731", "ArrayLoader needs a non-empty dict of arrays", 'pass {"x": images, "y": labels}'
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or not isinstance(shuffle, bool):
            raise TrainingError.single(
                "TX731",
                f"ArrayLoader(seed={seed!r}, shuffle={shuffle!r}): seed must be a non-negative integer and "
                "shuffle True or False",
                "e.g. ArrayLoader(arrays, 128, shuffle=True, seed=0)",
            )
        self.arrays = {name: np.asarray(value) for name, value in arrays.items()}
        scalars = sorted(name for name, value in self.arrays.items() if value.ndim == 0)
        if scalars:
            raise TrainingError.single(
                "TX731", f"ArrayLoader arrays {scalars} are scalars", "every array needs one row per example"
            )
        lengths = {name: len(value) for name, value in self.arrays.items()}
        if len(set(lengths.values())) != 1:
            raise TrainingError.single(
                "TX731",
                f"ArrayLoader arrays have different lengths: {lengths}",
                "every array needs one row per example",
            )
        self.size = next(iter(lengths.values()))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= self.size:
            raise TrainingError.single(
                "TX731",
                f"ArrayLoader(batch_size={batch_size!r}) must be between 1 and the {self.size} examples",
                "pick a batch size no larger than the dataset",
            )
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.steps_per_epoch = self.size // batch_size
        # Which rows are this process's is worked out at the first batch: asking JAX now would
        # start its backend before a launched script's Engine joins the other processes.
        self._rows: slice | None = None
        self._permutation: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng((self.seed, epoch)).permutation(self.size))
        return self._permutation[1]

    def indices(self, position: int) -> np.ndarray:
        """The example indices of global batch ``position`` (every process's rows)."""
        epoch, within = divmod(position, self.steps_per_epoch)
        start = within * self.batch_size
        return self._order(epoch)[start : start + self.batch_size]

    def batch(self, position: int) -> Any:
        """Batch ``position``: a dict of arrays, or this process's rows of it as a :class:`PerProcess`."""
        indices = self.indices(position)
        if jax.process_count() == 1:
            return {name: value[indices] for name, value in self.arrays.items()}
        if self._rows is None:
            self._rows = process_slice(self.batch_size)
        mine = indices[self._rows]
        return PerProcess({name: value[mine] for name, value in self.arrays.items()})

    def __len__(self) -> int:
        """Full batches per epoch."""
        return self.steps_per_epoch

    def epochs(self, steps: int) -> float:
        """How many passes over the data ``steps`` batches make."""
        return steps / self.steps_per_epoch
