"""``compile_plan``: front-end objects in, validated and lowered-ready IR out."""

from __future__ import annotations

from collections.abc import Sequence

from titanax.errors import PlanError
from titanax.frontend import MeshSpec, Plan
from titanax.ir import PlanIR, build_ir
from titanax.passes.base import DEFAULT_TARGET, PASS_REGISTRY, Pass, Target
from titanax.passes.manager import PassCallback, PassPipeline, verify_after_each

__all__ = ["DEFAULT_PASSES", "VALIDATION_PASSES", "compile_plan", "parse_pipeline", "passes_by_name"]

VALIDATION_PASSES: tuple[str, ...] = (
    "check-mesh",
    "check-parallel-axes",
    "check-tensor-parallel",
    "check-pipeline",
    "check-precision",
)
"""The passes that only report errors; they run first, so one run reports every problem."""

DEFAULT_PASSES: tuple[str, ...] = (
    *VALIDATION_PASSES,
    "infer-mesh-shape",
    "insert-dp-collectives",
    "build-schedule",
    "verify-schedule",
    "insert-pp-collectives",
    "insert-precision-collectives",
)
"""The passes every plan goes through, in order: validation first, then rewrites."""


def parse_pipeline(text: str) -> list[str]:
    """Split ``"a,b{x=1,y=2},c"`` into pass entries, keeping commas inside braces."""
    entries, depth, current = [], 0, ""
    for char in text:
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            entries.append(current.strip())
            current = ""
        else:
            current += char
    entries.append(current.strip())
    return [e for e in entries if e]


def _split_entry(entry: str) -> tuple[str, dict[str, str]]:
    name, brace, rest = entry.partition("{")
    if not brace:
        return entry.strip(), {}
    if not rest.endswith("}"):
        raise PlanError.single(
            "TX220", f"pass entry {entry!r} has an unclosed option list", "write name{key=value,...}"
        )
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest[:-1].split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise PlanError.single(
                "TX220", f"pass option {item!r} in {entry!r} is not key=value", "write name{key=value,...}"
            )
        options[key.strip()] = value.strip()
    return name.strip(), options


def _with_prerequisites(names: Sequence[str]) -> list[str]:
    """``names`` with every missing prerequisite (and theirs) inserted before the pass needing it."""
    ordered: list[str] = []

    def add(name: str) -> None:
        if name in ordered:
            return
        for required in PASS_REGISTRY[name].requires:
            add(required)
        ordered.append(name)

    for name in names:
        add(name)
    return ordered


def passes_by_name(names: Sequence[str]) -> list[Pass]:
    """Instantiate passes from entries ``name`` or ``name{key=value,...}``; reject unknown
    passes (TX206), missing prerequisites (TX207) and bad options (TX220)."""
    entries = [_split_entry(entry) for entry in names]
    names = [name for name, _ in entries]
    unknown = [n for n in names if n not in PASS_REGISTRY]
    if unknown:
        raise PlanError.single("TX206", f"unknown pass(es) {unknown}", f"known passes: {sorted(PASS_REGISTRY)}")
    for index, name in enumerate(names):
        missing = [r for r in PASS_REGISTRY[name].requires if r not in names[:index]]
        if missing:
            raise PlanError.single(
                "TX207",
                f"pass '{name}' needs {missing} to run before it",
                f"use --passes {','.join(_with_prerequisites(names[: index + 1]))}",
            )
    return [PASS_REGISTRY[name].from_options(options) for name, options in entries]


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
