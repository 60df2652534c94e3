"""What tracing a step found: one record per collective in its jaxpr.

The lowering walks the traced step (``titanax/lowering/trace.py``) and returns
these plain records; passes read them without importing JAX:
``insert-traced-collectives`` lists the user's collectives in the IR, and
``annotate-payloads`` gives Titanax's own collectives their bytes and dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TracedCollective"]


@dataclass(frozen=True, kw_only=True)
class TracedCollective:
    """One collective equation found in a traced step function."""

    op: str
    """XLA's name: ``all-reduce``, ``all-gather``, ``reduce-scatter``..."""
    reduction: str | None
    """``sum``, ``max`` or ``min`` for reductions (a ``pmean`` traces as a sum), else ``None``."""
    axes: tuple[str, ...]
    """The mesh axes it communicates over."""
    payload: tuple[tuple[str, int], ...]
    """``(dtype, bytes)`` of the result on one device per execution, one entry per dtype, sorted."""
    primitive: str
    """The JAX primitive, e.g. ``psum_invariant``."""
    where: str
    """The user source line that caused it, e.g. ``titanax/nn/layers.py:88 (row_dense)``."""
    backward: bool
    """True when autodiff added it (the transpose of a forward operation)."""
    executions: int | None = 1
    """Times it runs per step: the product of the trip counts of the loops around it (``None``
    inside a loop whose trip count is not static)."""
    conditional: bool = False
    """True inside a branch of ``lax.cond``/``lax.switch``: it runs at most ``executions`` times."""
    node_id: str | None = None
    """The IR node it was emitted for (Titanax's own collectives, under the Titanax scope), or ``None``
    for one the user's code performs."""
    permutation: tuple[tuple[int, int], ...] = ()
    """``(source, target)`` pairs of a ``ppermute``."""

    @property
    def payload_bytes(self) -> int:
        """Bytes of the result on one device per execution, all dtypes together."""
        return sum(size for _, size in self.payload)

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The element types it moves, sorted."""
        return tuple(dtype for dtype, _ in self.payload)
