"""Lowering: plan IR -> a JAX program (``jax.jit`` of ``jax.shard_map``).

This is the first stage that imports JAX. It emits exactly the collectives the
IR declares, and offers :func:`collectives_in_hlo` to check that it did.
"""

from titanax.lowering.collectives import emit_collective, emit_collectives, make_varying
from titanax.lowering.context import StepContext, StepState, active_step_context
from titanax.lowering.hlo import HloCollective, collectives_in_hlo, shape_bytes
from titanax.lowering.mesh import available_devices, make_jax_mesh
from titanax.lowering.step import CompiledStep, replicated_spec

__all__ = [
    "CompiledStep",
    "HloCollective",
    "StepContext",
    "StepState",
    "active_step_context",
    "available_devices",
    "collectives_in_hlo",
    "emit_collective",
    "emit_collectives",
    "make_jax_mesh",
    "make_varying",
    "replicated_spec",
    "shape_bytes",
]
