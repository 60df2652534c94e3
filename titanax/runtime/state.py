"""``TrainState``: step counter, parameters and optimizer state, as one pytree."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import optax

from titanax.lowering import active_step_context

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
    """Number of optimizer updates applied so far (int32 scalar on the mesh)."""
    params: Any
    """The model parameters (master copy)."""
    opt_state: Any
    """The optax optimizer state."""
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
        synchronised once. Outside a step function no communication happens.
        """
        ctx = active_step_context()
        if ctx is None:
            return self.apply_update(grads)
        return ctx.apply_gradients(self, grads)


jax.tree_util.register_dataclass(TrainState, data_fields=["step", "params", "opt_state"], meta_fields=["engine"])
