"""Flax NNX under tensor parallelism: the one layer a stock NNX model needs replaced.

A stock ``nnx.Linear`` works as the column-parallel layer of a Megatron pair (its kernel split on
the output dimension by a ``column`` rule; the input's backward all-reduce comes from JAX's
varying types). As the row-parallel layer it is wrong: its matmul over a split input dimension
leaves each device a partial sum, and it adds its bias to that partial sum. :class:`RowParallelLinear`
is ``nnx.Linear`` with the reduction in place: the matmul, a ``psum`` over the plan's TP axis (a
reduce-scatter over the sequence under sequence parallelism), then the bias, once
(:func:`titanax.nn.row_dense`). Without tensor parallelism it is ``nnx.Linear``.

Needs the optional ``flax`` extra; ``titanax.nn`` does not import this module.
"""

from __future__ import annotations

import jax
from flax import nnx

from titanax.nn.layers import row_dense

__all__ = ["RowParallelLinear"]


class RowParallelLinear(nnx.Linear):
    """``nnx.Linear`` whose partial sums are reduced over the TP axis before the bias is added.

    Give its ``kernel`` a ``row`` rule: ``"**/down/kernel" = row``. Example::

        self.up = nnx.Linear(d_model, d_ff, rngs=rngs)                  # column-parallel
        self.down = tx.nn.nnx_layers.RowParallelLinear(d_ff, d_model, rngs=rngs)  # row-parallel
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """``inputs @ kernel``, summed over the TP axis, ``+ bias``."""
        params = {"w": self.kernel[...]}
        if self.bias is not None:
            params["b"] = self.bias[...]
        return row_dense(params, inputs)
