"""Overrides: change a plan's settings from the command line or from Python without editing the file.

A key is ``STATEMENT.SETTING``, as the ``.tx`` file would write it:
``pipeline.microbatches``, ``mesh.data`` (an axis size), ``mesh.devices``,
``data_parallel.accumulate_steps``, ``tensor_parallel.sequence_parallel``,
``precision.compute``, ``activations.remat``... A value is written as in a
``.tx`` file (``8``, ``1.5``, ``true``, ``bfloat16``, ``auto``) or, from Python,
given as a number, bool or string. Overrides change settings of statements the
plan has; they never add a statement (an axis or a pipeline needs more than one
setting). Every problem is a located error at the override (``--set:N`` for the
N-th ``--set``): an unknown key, with the nearest name (TX616), a value of the
wrong kind (TX617), a statement the plan lacks (TX618), and the plan objects' own
range checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

from titanax.errors import Diagnostic, Location, PlanError, TitanaxError
from titanax.frontend.activations import Activations
from titanax.frontend.mesh_spec import INFER, MeshSpec
from titanax.frontend.plan import Plan

__all__ = ["Override", "apply_overrides", "parse_set"]

# Settings each statement takes from an override, and the kind of value each is.
_SETTINGS: dict[str, dict[str, str]] = {
    "data_parallel": {"accumulate_steps": "int"},
    "fully_sharded": {"stage": "int", "min_size": "int", "reshard_after_forward": "bool", "accumulate_steps": "int"},
    "tensor_parallel": {"sequence_parallel": "bool", "weight_layout": "name"},
    "pipeline": {
        "microbatches": "int",
        "schedule": "name",
        "blocks": "name",
        "balance_tolerance": "number",
        "virtual_stages": "int",
        "remat": "name",
        "table": "string",
    },
    "precision": {
        "params": "name",
        "compute": "name",
        "output": "name",
        "loss_scale_init": "number",
        "loss_scale_growth_interval": "int",
    },
    "activations": {"remat": "name"},
}
_FIELDS = {"data_parallel": "data_parallel", "tensor_parallel": "tensor_parallel", "pipeline": "pipeline_parallel"}
_FIELDS |= {"precision": "precision", "activations": "activations", "fully_sharded": "fully_sharded"}
_INT = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


@dataclasses.dataclass(frozen=True)
class Override:
    """One ``KEY=VALUE`` and where it was given (for errors)."""

    key: str
    value: Any
    location: Location


def parse_set(texts: list[str] | tuple[str, ...], source: str = "--set") -> list[Override]:
    """``["pipeline.microbatches=8", ...]`` as overrides; TX617 for an item without ``=``."""
    found = []
    for index, text in enumerate(texts, start=1):
        location = Location(path=source, line=index, column=1, length=max(1, len(text)), line_text=text)
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise PlanError(
                Diagnostic(
                    code="TX617",
                    message=f"--set {text!r} is not KEY=VALUE",
                    hint="write --set pipeline.microbatches=8 (statement.setting=value)",
                    location=location,
                )
            )
        found.append(Override(key.strip(), value.strip(), location))
    return found


def _from_mapping(overrides: Mapping[str, Any], source: str) -> list[Override]:
    return [
        Override(str(key), value, Location(path=source, line=index, column=1, line_text=f"{key}={value!r}"))
        for index, (key, value) in enumerate(overrides.items(), start=1)
    ]


def _error(code: str, message: str, hint: str, override: Override) -> PlanError:
    return PlanError(Diagnostic(code=code, message=message, hint=hint, location=override.location))


def _nearest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def _convert(value: Any, kind: str, override: Override) -> Any:
    """``value`` as the setting's kind: from text written as in a ``.tx`` file, or a Python value."""
    text = value if isinstance(value, str) else None
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and _INT.fullmatch(text) and len(text) <= 1000:
            return int(text)
    elif kind == "number":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if text is not None and _NUMBER.fullmatch(text) and len(text) <= 1000:
            return float(text) if "." in text else int(text)
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        if text in ("true", "false"):
            return text == "true"
    elif kind in ("name", "string") and text is not None:
        return text[1:-1] if kind == "string" and len(text) >= 2 and text[0] == text[-1] == '"' else text
    expected = {"int": "an integer", "number": "a number", "bool": "true or false", "name": "a name"}
    expected["string"] = "a string"
    raise _error(
        "TX617",
        f"{override.key} = {value!r} must be {expected[kind]}",
        f"write {override.key}="
        + {"int": "8", "number": "1.5", "bool": "true", "name": "NAME", "string": "PATH"}[kind],
        override,
    )


def _relocated(build: Any, override: Override) -> Any:
    """``build()``; a problem a plan object reports about the new value is placed at the override."""
    try:
        return build()
    except TitanaxError as err:
        raise PlanError(
            [
                Diagnostic(code=d.code, message=d.message, hint=d.hint, location=override.location)
                for d in err.diagnostics
            ]
        ) from None


def _mesh_override(mesh: MeshSpec, name: str, value: Any, override: Override) -> MeshSpec:
    if name == "devices":
        devices = _convert(value, "int", override) if not (isinstance(value, str) and value == "all") else "all"
        return _relocated(lambda: dataclasses.replace(mesh, devices=devices), override)
    if name not in mesh.axes:
        raise _error(
            "TX616",
            f"the mesh has no axis '{name}' to set",
            f"{_nearest(name, list(mesh.axes))}mesh settings are devices and the axes {', '.join(mesh.axes)}",
            override,
        )
    size = INFER if value in ("auto", INFER) else _convert(value, "int", override)
    shape = list(mesh.shape if mesh.shape is not None else (-1,) * len(mesh.axes))
    shape[mesh.axes.index(name)] = size
    return _relocated(lambda: dataclasses.replace(mesh, shape=tuple(shape)), override)


def apply_overrides(
    mesh: MeshSpec, plan: Plan, overrides: Mapping[str, Any] | list[Override], source: str = "overrides"
) -> tuple[MeshSpec, Plan]:
    """``mesh`` and ``plan`` with ``overrides`` applied (a mapping ``{"pipeline.microbatches": 8}`` or
    :func:`parse_set`'s list), in order. Raises a located :class:`~titanax.errors.PlanError`."""
    items = overrides if isinstance(overrides, list) else _from_mapping(overrides, source)
    statements = ["mesh", *_SETTINGS]
    for override in items:
        statement, dot, name = override.key.partition(".")
        if statement not in statements or not dot or not name:
            raise _error(
                "TX616",
                f"unknown override {override.key!r}",
                f"{_nearest(statement, statements)}keys are STATEMENT.SETTING with STATEMENT one of "
                f"{', '.join(statements)}",
                override,
            )
        if statement == "mesh":
            mesh = _mesh_override(mesh, name, override.value, override)
            continue
        allowed = _SETTINGS[statement]
        if name not in allowed:
            raise _error(
                "TX616",
                f"unknown {statement} setting {name!r} in override {override.key!r}",
                f"{_nearest(name, list(allowed))}{statement} settings are {', '.join(allowed)}",
                override,
            )
        field_name = _FIELDS[statement]
        current = getattr(plan, field_name)
        if current is None and statement != "activations":
            raise _error(
                "TX618",
                f"the plan has no {statement} statement for {override.key} to change",
                f"add a {statement} statement to the plan file; overrides change settings, they add no statement",
                override,
            )
        value = _convert(override.value, allowed[name], override)
        target = current if current is not None else Activations()
        updated = _relocated(partial(dataclasses.replace, target, **{name: value}), override)
        plan = _relocated(partial(dataclasses.replace, plan, **{field_name: updated}), override)
    return mesh, plan
