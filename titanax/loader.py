"""``tx.load_plan``: a ``.tx`` file (or text) in, a validated mesh and plan out.

This sits above the compiler stages, like the command line: it reads the file,
parses it, builds the front-end objects and runs the validation passes, so a
bad plan fails here with located errors, before any JAX work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titanax.errors import Location
from titanax.frontend import MeshSpec, Plan
from titanax.frontend.language import ParsedPlan, SourceFile, parse, to_plan
from titanax.frontend.language.source import read_bounded, read_source
from titanax.frontend.overrides import Override, apply_overrides, parse_set
from titanax.ir import PlanIR, build_ir
from titanax.passes import (
    DEFAULT_PASSES,
    VALIDATION_PASSES,
    PassPipeline,
    Target,
    passes_by_name,
    verify_after_each,
)
from titanax.passes.manager import PassCallback

__all__ = ["LoadedPlan", "load_plan", "read_bounded", "read_source"]


@dataclass(frozen=True)
class LoadedPlan:
    """A plan file, parsed and validated: pass ``.mesh`` and ``.plan`` to ``tx.Engine``.

    Example::

        loaded = tx.load_plan("plans/dp_tp.tx")
        engine = tx.Engine(mesh=loaded.mesh, plan=loaded.plan, optimizer=tx.optim.adamw(3e-4))
    """

    mesh: MeshSpec
    plan: Plan
    model: str | None
    """The ``model "module:function"`` the file names, unresolved (the file never imports code)."""
    model_location: Location | None
    parsed: ParsedPlan
    """The source, AST and comments, for tools such as the formatter."""

    @property
    def path(self) -> str:
        """The file's path, or the name given to ``load_plan(text=...)``."""
        return self.parsed.source.path

    def build_ir(self) -> PlanIR:
        """The IR before any pass."""
        return build_ir(self.mesh, self.plan)

    def compile(
        self,
        *,
        target: Target | None = None,
        passes: Sequence[str] = DEFAULT_PASSES,
        callbacks: Sequence[PassCallback] = (verify_after_each,),
    ) -> PlanIR:
        """Run ``passes`` over the plan's IR (for the device count the mesh names, unless ``target``)."""
        target = target or Target(device_count=self.mesh.requested_device_count)
        return PassPipeline(passes_by_name(passes), callbacks=callbacks).run(self.build_ir(), target)


def load_plan(
    path: str | Path | None = None,
    *,
    text: str | None = None,
    name: str = "<text>",
    validate: bool = True,
    overrides: Mapping[str, Any] | Sequence[str] | Sequence[Override] | None = None,
) -> LoadedPlan:
    """Load a plan from ``path`` or from ``text``, and check it.

    Raises a :class:`~titanax.errors.TitanaxError` whose diagnostics point at the
    file, line and column of every problem. ``validate=False`` skips the
    validation passes (syntax and structure are always checked). ``overrides``
    changes settings as ``{"pipeline.microbatches": 8, "mesh.data": 4}``, or as the
    ``KEY=VALUE`` strings of a script's ``--set`` flags (see :mod:`titanax.frontend.overrides`). Example::

        loaded = tx.load_plan(text="mesh { data = 8 }  data_parallel over data")
        loaded = tx.load_plan("plans/dp_pp.tx", overrides={"pipeline.microbatches": 16})
    """
    if (path is None) == (text is None):
        raise TypeError("load_plan() takes a path or text=..., not both")
    source = read_source(path) if path is not None else SourceFile(name, text)
    parsed = parse(source)
    contents = to_plan(parsed)
    mesh, plan = contents.mesh, contents.plan
    if overrides:
        if isinstance(overrides, Mapping):
            given: Mapping[str, Any] | list[Override] = overrides
        elif all(isinstance(item, str) for item in overrides):
            given = parse_set(list(overrides))  # command-line KEY=VALUE strings, located as --set:N
        else:
            given = list(overrides)
        mesh, plan = apply_overrides(mesh, plan, given, source="overrides")
    loaded = LoadedPlan(mesh, plan, contents.model, contents.model_location, parsed)
    if validate:
        # Only the checks: the device count may be unknown until the Engine runs.
        loaded.compile(target=Target(), passes=VALIDATION_PASSES)
    return loaded
