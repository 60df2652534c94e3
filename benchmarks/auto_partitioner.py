"""The baseline two benchmarks compare Titanax with: XLA's automatic partitioner (GSPMD) given the
very shardings a Titanax state has.

The same model is written as plain single-device math under ``jax.jit``; its parameters, optimizer
state and batch are placed by ``NamedSharding`` with the Titanax state's partition specs, on a mesh
of ``Auto`` axes, so XLA decides the communication. Imported by ``tp_vs_gspmd.py`` and
``fsdp_memory.py`` (run as scripts from this folder).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

P = jax.P


@dataclass
class AutoRun:
    """The jitted step ``(params, opt_state, batch) -> (params, opt_state, loss)``, its inputs, and its compile."""

    step: Callable[..., Any]
    params: Any
    opt_state: Any
    batch: Any
    compiled: Any


def auto_partitioned(
    state: Any,
    params: Any,
    optimizer: optax.GradientTransformation,
    loss_fn: Callable[[Any, Any], Any],
    mesh: jax.sharding.Mesh,
    batch: Any,
    batch_axes: tuple[str, ...],
) -> AutoRun:
    """``loss_fn(params, batch)`` trained by ``optimizer`` under ``jax.jit``, laid out like ``state``.

    ``mesh`` must have ``Auto`` axes named as the state's; the batch is split over ``batch_axes``.
    """
    param_shardings = jax.tree.map(lambda a: NamedSharding(mesh, a.sharding.spec), state.params)
    opt_shardings = jax.tree.map(lambda a: NamedSharding(mesh, a.sharding.spec), state.opt_state)
    placed_params = jax.tree.map(lambda x, s: jax.device_put(jnp.array(x), s), params, param_shardings)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(placed_params)
    batch_sharding = NamedSharding(mesh, P(batch_axes))

    def step(params: Any, opt_state: Any, batch: Any) -> tuple[Any, Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jitted = jax.jit(
        step,
        in_shardings=(param_shardings, opt_shardings, batch_sharding),
        out_shardings=(param_shardings, opt_shardings, NamedSharding(mesh, P())),
        donate_argnums=(0, 1),
    )
    placed_batch = jax.device_put(batch, batch_sharding)
    compiled = jitted.lower(placed_params, opt_state, placed_batch).compile()
    return AutoRun(step=jitted, params=placed_params, opt_state=opt_state, batch=placed_batch, compiled=compiled)
