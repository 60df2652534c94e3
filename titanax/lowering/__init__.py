"""Lowering: plan IR -> a JAX program (``jax.jit`` of ``jax.shard_map``).

This is the first stage that imports JAX. It emits exactly the collectives the
IR declares, finds the ones the user's step adds (:func:`traced_collectives`),
and offers :func:`collectives_in_hlo` to check the compiled program against both.
"""

from titanax.lowering.collectives import emit_collective, emit_collectives, ensure_varying, make_varying, varying_axes
from titanax.lowering.context import StepContext, StepState, active_step_context
from titanax.lowering.hlo import HloCollective, collectives_in_hlo, shape_bytes
from titanax.lowering.loss_scale import LossScale, nonfinite_count
from titanax.lowering.mesh import available_devices, make_jax_mesh
from titanax.lowering.placement import PerProcess, global_shapes, place_global, place_global_batch
from titanax.lowering.sharding import optimizer_state_specs, param_paths_and_shapes, param_specs, path_text
from titanax.lowering.step import CompiledStep, replicated_spec
from titanax.lowering.trace import TITANAX_SCOPE, traced_collectives

__all__ = [
    "TITANAX_SCOPE",
    "CompiledStep",
    "HloCollective",
    "LossScale",
    "PerProcess",
    "StepContext",
    "StepState",
    "active_step_context",
    "available_devices",
    "collectives_in_hlo",
    "emit_collective",
    "emit_collectives",
    "ensure_varying",
    "make_jax_mesh",
    "make_varying",
    "place_global",
    "place_global_batch",
    "global_shapes",
    "nonfinite_count",
    "optimizer_state_specs",
    "param_paths_and_shapes",
    "param_specs",
    "path_text",
    "replicated_spec",
    "shape_bytes",
    "traced_collectives",
    "varying_axes",
]
