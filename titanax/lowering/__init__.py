"""Lowering: plan IR -> a JAX program (``jax.jit`` of ``jax.shard_map``).

This is the first stage that imports JAX. It reads the plan once into a
:class:`StepPlan`, emits exactly the collectives the IR declares through one
emitter (:func:`emit`), traces a step into a :class:`StepReport` (Titanax's own
collectives checked against their nodes, the user's listed), and offers
:func:`collectives_in_hlo` to audit the compiled program against the IR.
"""

from titanax.lowering.audit import AuditRow, CollectiveAudit, audit_collectives
from titanax.lowering.collectives import (
    TITANAX_SCOPE,
    IRCollective,
    collective_scope,
    emit,
    ensure_varying,
    make_varying,
    varying_axes,
)
from titanax.lowering.context import StepContext, StepState, TraceRecorder, active_step_context
from titanax.lowering.fully_sharded import FSDPPlan
from titanax.lowering.hlo import HloCollective, collectives_in_hlo, mesh_axes_of, shape_bytes
from titanax.lowering.loss_scale import LossScale, nonfinite_count
from titanax.lowering.mesh import available_devices, make_jax_mesh
from titanax.lowering.placement import PerProcess, global_shapes, place_global, place_global_batch
from titanax.lowering.report import StepReport
from titanax.lowering.sharding import (
    optimizer_state_specs,
    param_paths_and_shapes,
    param_specs,
    path_text,
    update_specs,
)
from titanax.lowering.step import CompiledStep, replicated_spec
from titanax.lowering.step_plan import PipelinePlan, StepPlan
from titanax.lowering.trace import check_emitted, traced_collectives

__all__ = [
    "FSDPPlan",
    "AuditRow",
    "CollectiveAudit",
    "audit_collectives",
    "mesh_axes_of",
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
    "IRCollective",
    "PipelinePlan",
    "StepPlan",
    "StepReport",
    "TraceRecorder",
    "check_emitted",
    "collective_scope",
    "emit",
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
    "update_specs",
    "path_text",
    "replicated_spec",
    "shape_bytes",
    "traced_collectives",
    "varying_axes",
]
