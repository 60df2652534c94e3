"""Runtime: the Engine, the training state, compiled step functions, optimizers, loggers."""

from titanax.runtime import collectives, loggers, optim, pipeline
from titanax.runtime.engine import Engine
from titanax.runtime.pipeline import PipelineModel
from titanax.runtime.state import TrainState
from titanax.runtime.step_fn import StepFn, step_fn
from titanax.runtime.workload import Workload, load_workload

__all__ = [
    "Engine",
    "PipelineModel",
    "StepFn",
    "TrainState",
    "Workload",
    "collectives",
    "loggers",
    "load_workload",
    "optim",
    "pipeline",
    "step_fn",
]
