"""``tx.Workload``: what ``titanax compile --model`` needs to trace a real step.

A plan file may name a model (``model "examples.gpt_small.model:workload"``) or
the command line may (``--model pkg.module:function``). The function takes no
arguments and returns a :class:`Workload`; Titanax then builds the Engine for
the plan, lays the parameters out, and traces the step, so the IR lists every
collective with its bytes per step. The file itself never imports anything.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optax

from titanax.errors import Diagnostic, Location, StepFnError
from titanax.runtime.step_fn import StepFn

__all__ = ["Workload", "load_workload"]


@dataclass(frozen=True, kw_only=True)
class Workload:
    """A model's parameters, an example batch, its ``@tx.step_fn`` and optimizer.

    Example::

        def workload() -> tx.Workload:
            params = init_model(jax.random.PRNGKey(0))
            return tx.Workload(params=params, batch=example_batch(), step=train_step, optimizer=tx.optim.adamw(3e-4))
    """

    params: Any
    """The model parameters (arrays)."""
    batch: Any
    """One global batch, as the step receives it."""
    step: StepFn
    """The training step, decorated with ``@tx.step_fn``."""
    optimizer: optax.GradientTransformation
    """The optimizer the Engine uses."""


def load_workload(entry: str, location: Location | None = None) -> Workload:
    """Import ``"package.module:function"`` (the current directory importable), call it, check the result."""

    def fail(code: str, message: str, hint: str) -> StepFnError:
        return StepFnError(Diagnostic(code=code, message=message, hint=hint, location=location))

    module_name, _, attribute = entry.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise fail(
            "TX506",
            f"cannot import model module '{module_name}': {err}",
            "run from the directory the module path starts in, or install the package",
        ) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise fail(
            "TX506", f"'{module_name}' has no function '{attribute}'", f"define def {attribute}() -> tx.Workload"
        )
    workload = factory()
    if not isinstance(workload, Workload) or not isinstance(workload.step, StepFn):
        raise fail(
            "TX507",
            f"{entry}() returned {type(workload).__name__}, not a tx.Workload with a @tx.step_fn step",
            "return tx.Workload(params=..., batch=..., step=train_step, optimizer=...)",
        )
    return workload
