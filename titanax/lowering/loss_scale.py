"""Dynamic loss scaling for float16: the scale, its update rule, and the overflow count.

float16 has five exponent bits: small gradients underflow to zero unless the
loss is multiplied by a large scale before differentiation. Too large a scale
overflows instead. The dynamic rule keeps the scale near the largest that does
not overflow: a step whose gradients contain an Inf or a NaN applies no update
and halves the scale; ``growth_interval`` finite steps in a row double it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["LossScale", "nonfinite_count"]


@dataclasses.dataclass(frozen=True)
class LossScale:
    """The current loss scale and the count of finite steps since it last changed."""

    scale: jax.Array
    """float32 scalar the loss is multiplied by before differentiation."""
    good_steps: jax.Array
    """int32 scalar: finite steps in a row since the scale last changed."""

    @classmethod
    def initial(cls, scale: float) -> LossScale:
        """A fresh scale of ``scale`` with no finite steps counted yet."""
        return cls(scale=jnp.asarray(scale, jnp.float32), good_steps=jnp.zeros((), jnp.int32))

    def adjust(self, finite: jax.Array, growth_interval: int) -> LossScale:
        """The scale after a step: halved on overflow, doubled after ``growth_interval`` finite steps."""
        grown = self.good_steps + 1 >= growth_interval
        # A float16 loss's cotangent is the scale itself, so beyond 2**15 (float16's largest power
        # of two) it overflows and the probe costs one skipped step; a float32 loss can use more.
        # Past 2**24 float32 unscaling loses the small gradients scaling exists to keep.
        scale = jnp.where(
            finite,
            jnp.where(grown, jnp.minimum(self.scale * 2, 2.0**24), self.scale),
            jnp.maximum(self.scale / 2, 1.0),
        )
        good = jnp.where(finite & ~grown, self.good_steps + 1, 0)
        return LossScale(scale=scale.astype(jnp.float32), good_steps=good.astype(jnp.int32))


jax.tree_util.register_dataclass(LossScale, data_fields=["scale", "good_steps"], meta_fields=[])


def nonfinite_count(tree: Any) -> jax.Array:
    """How many values of the floating arrays in ``tree`` are Inf or NaN (int32 scalar)."""
    counts = [jnp.sum(~jnp.isfinite(x), dtype=jnp.int32) for x in jax.tree.leaves(tree)]
    return sum(counts, start=jnp.zeros((), jnp.int32))
