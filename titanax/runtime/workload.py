"""``tx.Workload``: what ``titanax compile --model`` needs to trace a real step.

A plan file may name a model (``model "examples.gpt_small.model:workload"``) or
the command line may (``--model pkg.module:function``). The function takes no
arguments and returns a :class:`Workload`; Titanax then builds the Engine for
the plan, lays the parameters out, and traces the step, so the IR lists every
collective with its bytes per step. The file itself never imports anything;
``--model`` imports the module and runs its code, so use it only on code you trust.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optax

from titanax.errors import Diagnostic, Location, StepFnError
from titanax.runtime.step_fn import StepFn

__all__ = ["Workload", "load_workload", "package_root"]


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
    stacked: str | tuple[str, ...] = ()
    """Entries of ``params`` that stack identical layers on dimension 0 (``"blocks"`` for a
    ``tx.PipelineModel``), as ``Engine.create_state(stacked=...)`` takes them."""


def package_root(module_name: str, start: Path) -> Path | None:
    """The nearest of ``start`` and its parents that holds ``module_name`` as a file or package.

    A plan file's ``model "examples.plans.model:workload"`` is a module path from such a root
    (here the repository holding ``examples/plans/model.py``), whatever the current directory.
    """
    relative = Path(*module_name.split("."))
    for folder in (start, *start.parents):
        if (folder / relative).with_suffix(".py").is_file() or (folder / relative / "__init__.py").is_file():
            return folder
    return None


def load_workload(entry: str, location: Location | None = None, *, paths: Sequence[str | Path] = ()) -> Workload:
    """Import ``"package.module:function"``, check the function, call it, check the result.

    The module is imported from ``paths`` (searched first) and ``sys.path``; the current directory is
    not added. ``sys.path`` is restored after the import. Before anything is called, the entry must name a
    plain function taking no arguments, outside the standard library (``"os:abort"`` is refused, TX506);
    what it returns must be a :class:`Workload` (TX507). Importing the module runs its top-level code.
    """

    def fail(code: str, message: str, hint: str) -> StepFnError:
        return StepFnError(Diagnostic(code=code, message=message, hint=hint, location=location))

    module_name, _, attribute = entry.partition(":")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top == "builtins":
        raise fail(
            "TX506",
            f"'{entry}' names the standard-library module '{module_name}', not a model",
            'name a function of your own that returns a tx.Workload, e.g. model "mymodels.gpt:workload"',
        )
    roots = [str(Path(path).resolve()) for path in paths]
    saved = list(sys.path)
    sys.path[:0] = roots
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        searched = ", ".join(roots) if roots else "sys.path only"
        raise fail(
            "TX506",
            f"cannot import model module '{module_name}' (searched {searched}): {err}",
            "name the folder the module path starts in with --model-path DIR, or install the package",
        ) from None
    except Exception as err:  # noqa: BLE001 - the model's own import failed, not Titanax
        raise fail(
            "TX506",
            f"importing model module '{module_name}' raised {type(err).__name__}: {err}",
            f"fix the module so that `python -c 'import {module_name}'` works",
        ) from None
    finally:
        sys.path[:] = saved
    factory = getattr(module, attribute, None)
    problem = _not_a_factory(factory, module_name, attribute)
    if problem is not None:
        raise fail("TX506", f"'{entry}' {problem}", f"define def {attribute}() -> tx.Workload in {module_name}")
    try:
        workload = factory()
    except Exception as err:  # noqa: BLE001 - the model's code failed; report it as the model's
        raise fail(
            "TX507",
            f"{entry}() raised {type(err).__name__}: {err}",
            "fix the entry point so that it returns tx.Workload(params=..., batch=..., step=..., optimizer=...)",
        ) from None
    if not isinstance(workload, Workload) or not isinstance(workload.step, StepFn):
        raise fail(
            "TX507",
            f"{entry}() returned {type(workload).__name__}, not a tx.Workload with a @tx.step_fn step",
            "return tx.Workload(params=..., batch=..., step=train_step, optimizer=...)",
        )
    return workload


def _not_a_factory(factory: object, module_name: str, attribute: str) -> str | None:
    """Why ``factory`` cannot be a Workload entry point, or ``None``; decided without calling it."""
    if factory is None:
        return f"names nothing: module '{module_name}' has no '{attribute}'"
    if not inspect.isfunction(factory):
        return f"names a {type(factory).__name__}, not a function defined in Python"
    home = (getattr(factory, "__module__", None) or "").split(".")[0]
    if home in sys.stdlib_module_names or home == "builtins":
        return f"names a function of the standard library ('{factory.__module__}'), not a model"
    try:
        inspect.signature(factory).bind()
    except TypeError:
        return f"names a function that needs arguments {inspect.signature(factory)}; the entry point takes none"
    return None
