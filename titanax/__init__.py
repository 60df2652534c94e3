"""Titanax: explicit-parallel training for JAX, built like a small compiler.

A plan (``tx.Plan``) over a mesh (``tx.MeshSpec``) becomes a plan IR, passes
validate and lower it, and ``@tx.step_fn`` steps run as ``jax.shard_map``
programs whose every collective the IR declares.
"""

from titanax import errors
from titanax.errors import (
    BatchError,
    CheckpointError,
    DistributedError,
    IRVerificationError,
    MeshError,
    NonFiniteError,
    OptimizerError,
    ParseError,
    PlanError,
    StepFnError,
    TitanaxError,
    TrainingError,
)
from titanax.frontend import DP, FSDP, PP, TP, Activations, MeshSpec, Plan, Precision, Rule, Stage
from titanax.loader import LoadedPlan, load_plan

# The runtime imports JAX; load it on first use so that the CLI and the
# compiler stages (frontend, ir, passes) start without paying for JAX.
_RUNTIME_NAMES = (
    "Checkpoint",
    "Profile",
    "Engine",
    "data",
    "distributed",
    "value_and_grad",
    "PipelineModel",
    "StepFn",
    "TrainState",
    "Workload",
    "collectives",
    "loggers",
    "optim",
    "pipeline",
    "step_fn",
)


def __getattr__(name: str):
    if name in _RUNTIME_NAMES:
        from titanax import runtime

        return getattr(runtime, name)
    if name == "nn":
        import titanax.nn

        return titanax.nn
    raise AttributeError(f"module 'titanax' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "DP",
    "PP",
    "PipelineModel",
    "TP",
    "BatchError",
    "Checkpoint",
    "CheckpointError",
    "Profile",
    "DistributedError",
    "NonFiniteError",
    "TrainingError",
    "data",
    "distributed",
    "value_and_grad",
    "Engine",
    "IRVerificationError",
    "LoadedPlan",
    "MeshError",
    "MeshSpec",
    "OptimizerError",
    "ParseError",
    "Plan",
    "PlanError",
    "Activations",
    "FSDP",
    "Precision",
    "Rule",
    "Stage",
    "StepFn",
    "StepFnError",
    "TitanaxError",
    "TrainState",
    "Workload",
    "__version__",
    "collectives",
    "errors",
    "load_plan",
    "loggers",
    "nn",
    "optim",
    "pipeline",
    "step_fn",
]
