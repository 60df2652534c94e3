"""Titanax: explicit-parallel training for JAX, built like a small compiler.

A plan (``tx.Plan``) over a mesh (``tx.MeshSpec``) becomes a plan IR, passes
validate and lower it, and ``@tx.step_fn`` steps run as ``jax.shard_map``
programs whose every collective the IR declares.
"""

from titanax.errors import (
    BatchError,
    IRVerificationError,
    MeshError,
    OptimizerError,
    PlanError,
    StepFnError,
    TitanaxError,
)
from titanax.frontend import DP, MeshSpec, Plan
from titanax.runtime import Engine, StepFn, TrainState, loggers, optim, step_fn

__version__ = "0.1.0"

__all__ = [
    "DP",
    "BatchError",
    "Engine",
    "IRVerificationError",
    "MeshError",
    "MeshSpec",
    "OptimizerError",
    "Plan",
    "PlanError",
    "StepFn",
    "StepFnError",
    "TitanaxError",
    "TrainState",
    "__version__",
    "loggers",
    "optim",
    "step_fn",
]
