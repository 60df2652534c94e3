"""``compile_plan``: front-end objects in, validated and lowered-ready IR out."""

from __future__ import annotations

from collections.abc import Sequence

from titanax.errors import PlanError
from titanax.frontend import MeshSpec, Plan
from titanax.ir import PlanIR, build_ir
from titanax.passes.base import DEFAULT_TARGET, PASS_REGISTRY, Pass, Target
from titanax.passes.pipeline import PassCallback, PassPipeline, verify_after_each

__all__ = ["DEFAULT_PASSES", "VALIDATION_PASSES", "compile_plan", "passes_by_name"]

VALIDATION_PASSES: tuple[str, ...] = (
    "check-mesh",
    "check-parallel-axes",
    "check-tensor-parallel",
    "check-pipeline",
    "check-precision",
)
"""The passes that only report errors; they run first, so one run reports every problem."""

DEFAULT_PASSES: tuple[str, ...] = (*VALIDATION_PASSES, "infer-mesh-shape", "insert-dp-collectives")
"""The passes every plan goes through, in order: validation first, then rewrites."""


def passes_by_name(names: Sequence[str]) -> list[Pass]:
    """Instantiate passes by name; reject unknown ones (TX206) and missing prerequisites (TX207)."""
    names = list(names)
    unknown = [n for n in names if n not in PASS_REGISTRY]
    if unknown:
        raise PlanError.single("TX206", f"unknown pass(es) {unknown}", f"known passes: {sorted(PASS_REGISTRY)}")
    for index, name in enumerate(names):
        missing = [r for r in PASS_REGISTRY[name].requires if r not in names[:index]]
        if missing:
            raise PlanError.single(
                "TX207",
                f"pass '{name}' needs {missing} to run before it",
                f"use --passes {','.join([*missing, *names[: index + 1]])}",
            )
    return [PASS_REGISTRY[name]() for name in names]


def compile_plan(
    mesh: MeshSpec,
    plan: Plan,
    *,
    target: Target = DEFAULT_TARGET,
    passes: Sequence[str] = DEFAULT_PASSES,
    callbacks: Sequence[PassCallback] = (verify_after_each,),
) -> PlanIR:
    """Build the IR for ``mesh`` and ``plan`` and run ``passes`` over it.

    Raises a :class:`~titanax.errors.TitanaxError` subclass listing every
    problem found. Example::

        ir = compile_plan(MeshSpec(axes=("data",)), Plan(data_parallel=DP(axis="data")),
                          target=Target(device_count=8))
    """
    return PassPipeline(passes_by_name(passes), callbacks=callbacks).run(build_ir(mesh, plan), target)
