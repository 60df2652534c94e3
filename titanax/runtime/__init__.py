"""Runtime: the Engine, the training state, compiled steps, the training loop, checkpoints, data, loggers."""

from titanax.runtime import collectives, data, distributed, loggers, optim, pipeline
from titanax.runtime.checkpoint import Checkpoint
from titanax.runtime.engine import Engine
from titanax.runtime.grad import value_and_grad
from titanax.runtime.pipeline import PipelineModel
from titanax.runtime.profile import Profile
from titanax.runtime.state import TrainState
from titanax.runtime.step_fn import StepFn, step_fn
from titanax.runtime.workload import Workload, load_workload

__all__ = [
    "Checkpoint",
    "Profile",
    "Engine",
    "PipelineModel",
    "StepFn",
    "TrainState",
    "Workload",
    "collectives",
    "data",
    "distributed",
    "loggers",
    "load_workload",
    "optim",
    "pipeline",
    "step_fn",
    "value_and_grad",
]
