"""Equinox under tensor parallelism: the one layer a stock Equinox model needs replaced.

Equinox stores a linear layer's weight ``(out, in)``: declare ``weight_layout = out_in`` in the
plan's ``tensor_parallel`` statement (``tx.TP(..., weight_layout="out_in")``) so that ``column``
splits dimension 0 and ``row`` dimension 1. A stock ``eqx.nn.Linear`` then works as the
column-parallel layer of a Megatron pair; as the row-parallel layer its matmul leaves a partial
sum and adds the bias to it. :class:`RowParallelLinear` is ``eqx.nn.Linear`` with the reduction in
place: the matmul, a ``psum`` over the plan's TP axis, then the bias, once
(:func:`titanax.nn.row_dense`). Like ``eqx.nn.Linear`` it takes one example (``jax.vmap`` over the
batch). Without tensor parallelism it is ``eqx.nn.Linear``.

Needs the optional ``equinox`` extra; ``titanax.nn`` does not import this module.
"""

from __future__ import annotations

import equinox as eqx
import jax

from titanax.nn.layers import row_dense

__all__ = ["RowParallelLinear"]


class RowParallelLinear(eqx.nn.Linear):
    """``eqx.nn.Linear`` whose partial sums are reduced over the TP axis before the bias is added.

    Give its ``weight`` a ``row`` rule under ``weight_layout = out_in``: ``"**/down/weight" = row``.
    """

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """``weight @ x``, summed over the TP axis, ``+ bias`` (``x``: one example's features)."""
        params = {"w": self.weight.T}
        if self.bias is not None:
            params["b"] = self.bias
        return row_dense(params, x)
