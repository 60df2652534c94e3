"""``TrainState``: step counter, parameters, optimizer state, RNG and loss scale, as one pytree."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import optax
from jax import lax

from titanax.errors import StepFnError
from titanax.lowering import LossScale, active_step_context

if TYPE_CHECKING:
    from titanax.runtime.engine import Engine

__all__ = ["TrainState"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainState:
    """Everything a training step reads and writes.

    ``step`` is a device array, so advancing it never triggers a recompile.
    ``engine`` is static metadata: it tells a ``@tx.step_fn`` which plan to
    compile under. Create one with :meth:`Engine.create_state`.
    """

    step: jax.Array
    """Training steps taken so far (int32 scalar on the mesh); a skipped overflow step counts too."""
    params: Any
    """The model parameters (master copy)."""
    opt_state: Any
    """The optax optimizer state."""
    rng: jax.Array
    """The run's base key as raw ``uint32`` key data (from the seed); use :meth:`rng_key` for a step's key."""
    loss_scale: LossScale | None
    """The dynamic loss scale under a float16 policy, else ``None``."""
    engine: Engine
    """The engine whose plan and optimizer this state belongs to."""

    def replace(self, **changes: Any) -> TrainState:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def apply_update(self, grads: Any) -> TrainState:
        """Apply gradients that are already synchronised: optimizer update, step + 1.

        Communicates nothing; inside a step use :meth:`apply_gradients`.
        """
        updates, opt_state = self.engine.optimizer.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates), opt_state=opt_state)

    def apply_gradients(self, *, grads: Any) -> TrainState:
        """Synchronise ``grads`` as the plan says, then apply them with the optimizer.

        Inside a ``@tx.step_fn`` the gradients first pass through the plan's
        gradient collectives (an all-reduce mean over the DP axes); with
        ``accumulate_steps > 1`` they are accumulated over microbatches and
        synchronised once. Under float16 loss scaling they are unscaled, and
        a step whose gradients overflowed on any device applies no update.
        Outside a step function no communication happens.
        """
        ctx = active_step_context()
        if ctx is None:
            return self.apply_update(grads)
        return ctx.apply_gradients(self, grads)

    def rng_key(self, *, over: str | Sequence[str] | None = None) -> jax.Array:
        """A key for this step: the run's key folded with the step number and the device's position.

        Inside a ``@tx.step_fn`` the key is also folded with the device's index on
        each axis in ``over``, by default the plan's data-parallel axes: dropout
        then differs across data-parallel replicas and is identical across the
        tensor-parallel shards of one replica, which hold replicated activations.
        Pass ``over=("data", "model")`` for a key that differs on every device
        (e.g. dropout on activations split over ``model``), ``over=()`` for one
        key everywhere. Under gradient accumulation the microbatch index is
        folded in too. Outside a step only the step number is folded in.

        The key depends only on the seed, the step and the position, so a
        resumed run draws exactly the numbers an uninterrupted one would::

            keep = jax.random.bernoulli(state.rng_key(), 0.9, x.shape)
        """
        key = jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)
        ctx = active_step_context()
        if ctx is None:
            return key
        axes = ctx.dp_axes if over is None else ((over,) if isinstance(over, str) else tuple(over))
        unknown = [axis for axis in axes if axis not in ctx.mesh_axes]
        if unknown:
            raise StepFnError.single(
                "TX505",
                f"state.rng_key(over={over!r}) names {unknown}, which are not in the mesh {ctx.mesh_axes}",
                f"use mesh axes, e.g. over={ctx.mesh_axes!r}",
            )
        for axis in axes:
            key = jax.random.fold_in(key, lax.axis_index(axis))
        if ctx.microbatch is not None:
            key = jax.random.fold_in(key, ctx.microbatch)
        return key


jax.tree_util.register_dataclass(
    TrainState, data_fields=["step", "params", "opt_state", "rng", "loss_scale"], meta_fields=["engine"]
)
