"""Turn a parsed ``.tx`` file into the front end's ``MeshSpec`` and ``Plan``.

A plan file and the equivalent Python objects are then the same thing: both go
through ``build_ir`` to one IR. Here only the file's structure is checked (one
mesh, known settings of the right kind); what the plan means (do the axes
exist, do stages fit the pipeline axis) is checked by the validation passes,
which see the source locations copied onto the objects built here.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from titanax.errors import Diagnostic, Location, TitanaxError
from titanax.frontend.activations import Activations
from titanax.frontend.bounds import MAX_DEVICES, shown
from titanax.frontend.fully_sharded import FSDP, FSDPRule
from titanax.frontend.language import ast
from titanax.frontend.language.parser import ParsedPlan
from titanax.frontend.language.source import SourceFile
from titanax.frontend.mesh_spec import INFER, MeshSpec
from titanax.frontend.pipeline import PP, Stage
from titanax.frontend.plan import DP, Plan
from titanax.frontend.precision import Precision
from titanax.frontend.tensor_parallel import TP, Rule

__all__ = ["PlanFileContents", "to_plan"]

_ENTRY_POINT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
_STATEMENT_WORDS = {
    ast.MeshStmt: "mesh",
    ast.DataParallelStmt: "data_parallel",
    ast.FullyShardedStmt: "fully_sharded",
    ast.TensorParallelStmt: "tensor_parallel",
    ast.PipelineStmt: "pipeline",
    ast.PrecisionStmt: "precision",
    ast.ActivationsStmt: "activations",
    ast.ModelStmt: "model",
}

T = TypeVar("T")

_PLATFORMS = ("cpu", "gpu", "tpu", "cuda", "rocm")
"""Platform names a mesh's ``devices`` setting accepts (JAX's backend names)."""

_EXAMPLES = {
    "accumulate_steps": "4",
    "stage": "3",
    "min_size": "1024",
    "reshard_after_forward": "true",
    "microbatches": "8",
    "schedule": "1f1b",
    "sequence_parallel": "true",
    "weight_layout": "out_in",
    "blocks": "blocks",
    "balance_tolerance": "1.25",
    "virtual_stages": "2",
    "remat": "none",
    "table": '"my.sched"',
    "loss_scale_init": "32768",
    "loss_scale_growth_interval": "2000",
}
"""An example value per setting, for hints (dtype settings use ``bfloat16``)."""


@dataclass(frozen=True)
class PlanFileContents:
    """What a plan file declares: the mesh, the plan, and the model it names (never imported here)."""

    mesh: MeshSpec
    plan: Plan
    model: str | None
    """``"package.module:function"`` from a ``model`` statement, or ``None``."""
    model_location: Location | None = None


class _Builder:
    """Walks the AST once, collecting every structural problem before raising."""

    def __init__(self, source: SourceFile):
        self.source = source
        self.errors: list[Diagnostic] = []

    # -- helpers ----------------------------------------------------------
    def loc(self, span: ast.Span | None) -> Location | None:
        return None if span is None else self.source.location(span.line, span.column, span.length)

    def relative_path(self, text: str) -> str:
        """``text`` as a path: relative ones are relative to the plan file's folder (or the current one)."""
        if os.path.isabs(text) or not os.path.isfile(self.source.path):
            return text
        return os.path.join(os.path.dirname(self.source.path), text)

    def error(self, code: str, message: str, hint: str, span: ast.Span | None) -> None:
        self.errors.append(Diagnostic(code=code, message=message, hint=hint, location=self.loc(span)))

    def header(self, stmt: Any, axes: tuple[ast.AxisName, ...]) -> Location | None:
        """The span from a statement's keyword to its last axis (``pipeline over pipe``)."""
        start, last = stmt.span, axes[-1].span
        length = last.end_column - start.column if last.line == start.line else 1
        return self.source.location(start.line, start.column, length)

    def construct(self, factory: Callable[[], T], location: Location | None) -> T | None:
        """Build a front-end object; a problem it reports is re-raised at ``location``."""
        try:
            return factory()
        except TitanaxError as err:
            self.errors.extend(
                Diagnostic(code=d.code, message=d.message, hint=d.hint, location=d.location or location)
                for d in err.diagnostics
            )
            return None

    def settings(
        self, block: ast.Block | None, allowed: dict[str, str], what: str, *, rules: bool = False, stages: bool = False
    ) -> tuple[dict[str, ast.Setting], list[ast.RuleItem], list[ast.StageItem]]:
        """Split a block's items, rejecting unknown, repeated or misplaced ones."""
        found: dict[str, ast.Setting] = {}
        rule_items: list[ast.RuleItem] = []
        stage_items: list[ast.StageItem] = []
        for item in block.items if block else ():
            if isinstance(item, ast.RuleItem):
                if rules:
                    rule_items.append(item)
                else:
                    self.error(
                        "TX611",
                        f"a sharding rule ({item.pattern!r} = ...) cannot appear in a {what} block",
                        "rules belong in the tensor_parallel and fully_sharded blocks",
                        item.span,
                    )
            elif isinstance(item, ast.StageItem):
                if stages:
                    stage_items.append(item)
                else:
                    self.error(
                        "TX611",
                        f"a stage cannot appear in a {what} block",
                        "stages belong in the pipeline block",
                        item.span,
                    )
            elif item.key not in allowed:
                close = difflib.get_close_matches(item.key, list(allowed), n=1)
                head = f"did you mean '{close[0]}'? " if close else ""
                listing = ", ".join(allowed) if allowed else "none"
                self.error(
                    "TX608",
                    f"unknown setting '{item.key}' in a {what} block",
                    f"{head}{what} settings are: {listing}",
                    item.span,
                )
            elif item.key in found:
                self.error(
                    "TX610",
                    f"setting '{item.key}' is given twice in a {what} block (first at line {found[item.key].span.line})",
                    "keep one of them",
                    item.span,
                )
            elif self.check_kind(item, allowed[item.key], what):
                found[item.key] = item
        return found, rule_items, stage_items

    def check_kind(self, item: ast.Setting, kind: str, what: str) -> bool:
        value = item.value
        ok = {
            "int": isinstance(value, ast.IntValue),
            "number": isinstance(value, (ast.IntValue, ast.FloatValue)),
            "name": isinstance(value, ast.NameValue),
            "bool": isinstance(value, ast.NameValue) and value.name in ("true", "false"),
            "string": isinstance(value, ast.StringValue),
        }[kind]
        if not ok:
            expected = {
                "int": "an integer",
                "number": "a number",
                "name": "a name",
                "bool": "true or false",
                "string": 'a "quoted" path',
            }[kind]
            self.error(
                "TX609",
                f"{what} setting '{item.key}' must be {expected}",
                f"write {item.key} = {_EXAMPLES.get(item.key, 'bfloat16')}",
                item.value.span,
            )
        return ok

    # -- statements ---------------------------------------------------------
    def mesh(self, stmt: ast.MeshStmt) -> MeshSpec | None:
        axes: list[str] = []
        shape: list[int] = []
        axis_locations: list[Location | None] = []
        devices: Any = None
        devices_item: ast.Setting | None = None
        errors_before = len(self.errors)
        for item in stmt.block.items:
            if not isinstance(item, ast.Setting):
                self.settings(ast.Block((item,)), {}, "mesh")  # reports the misplaced rule or stage
            elif item.key == "devices" and devices_item is not None:
                self.error(
                    "TX610",
                    f"setting 'devices' is given twice in a mesh block (first at line {devices_item.span.line})",
                    "keep one of them",
                    item.span,
                )
            elif item.key == "devices":
                devices_item = item
                devices = self.devices(item)
            elif not item.key.isidentifier():
                self.error(
                    "TX108",
                    f"mesh axis name '{item.key}' is not an identifier",
                    "use names such as data, model or pipe",
                    item.span,
                )
            else:
                size = self.axis_size(item)
                if size is not None:
                    axes.append(item.key)
                    shape.append(size)
                    axis_locations.append(self.loc(item.span))
        mesh_location = self.loc(stmt.span)
        if not axes:
            if len(self.errors) == errors_before:  # not already explained by a bad axis
                self.error(
                    "TX108", "the mesh declares no axis", "add at least one axis, e.g. mesh { data = 8 }", stmt.span
                )
            return None
        return self.construct(
            lambda: MeshSpec(
                axes=tuple(axes),
                shape=tuple(shape),
                devices=devices,
                location=mesh_location,
                axis_locations=tuple(axis_locations),
            ),
            mesh_location,
        )

    def devices(self, item: ast.Setting) -> Any:
        value = item.value
        if isinstance(value, ast.IntValue):
            if not 1 <= value.value <= MAX_DEVICES:
                self.error(
                    "TX104",
                    f"devices = {shown(value.value)}; the device count must be "
                    + ("positive" if value.value < 1 else f"at most 2**20 = {MAX_DEVICES}"),
                    "write devices = 8",
                    value.span,
                )
                return None
            return value.value
        if isinstance(value, ast.NameValue) and value.name == "all":
            return None
        if isinstance(value, ast.NameValue) and value.name in _PLATFORMS:
            return value.name
        known = ["all", *_PLATFORMS]
        close = difflib.get_close_matches(value.name, known, n=1) if isinstance(value, ast.NameValue) else []
        self.error(
            "TX609",
            "mesh setting 'devices' must be all, a device count or a platform name",
            (f"did you mean '{close[0]}'? " if close else "")
            + f"write devices = all, devices = 8 or one of {', '.join(_PLATFORMS)}",
            value.span,
        )
        return None

    def axis_size(self, item: ast.Setting) -> int | None:
        value = item.value
        if isinstance(value, ast.IntValue):
            return value.value
        if isinstance(value, ast.NameValue) and value.name == "auto":
            return INFER
        self.error(
            "TX609",
            f"mesh axis '{item.key}' must have an integer size or auto",
            f"write {item.key} = 4, or {item.key} = auto to take the remaining devices",
            value.span,
        )
        return None

    def data_parallel(self, stmt: ast.DataParallelStmt) -> DP | None:
        found, _, _ = self.settings(stmt.block, {"accumulate_steps": "int"}, "data_parallel")
        steps = found.get("accumulate_steps")
        kwargs = {"accumulate_steps": steps.value.value} if steps else {}
        return self.construct(
            lambda: DP(axis=_axis_arg(stmt.axes), location=self.header(stmt, stmt.axes), **kwargs),
            self.loc(steps.span) if steps else self.header(stmt, stmt.axes),
        )

    def fully_sharded(self, stmt: ast.FullyShardedStmt) -> FSDP | None:
        allowed = {"stage": "int", "min_size": "int", "reshard_after_forward": "bool", "accumulate_steps": "int"}
        found, rule_items, _ = self.settings(stmt.block, allowed, "fully_sharded", rules=True)
        rules = []
        for item in rule_items:
            value = item.value
            if isinstance(value, ast.IntValue):
                dim: int | None = value.value
            elif isinstance(value, ast.NameValue) and value.name == "none":
                dim = None
            else:
                self.error(
                    "TX609",
                    f"FSDP rule {item.pattern!r} must map to a dimension or none",
                    f'write "{item.pattern}" = 0 to split dimension 0, or "{item.pattern}" = none to keep it whole',
                    value.span,
                )
                continue
            rule = self.construct(
                lambda i=item, d=dim: FSDPRule(pattern=i.pattern, dim=d, location=self.loc(i.span)),
                self.loc(item.span),
            )
            if rule is not None:
                rules.append(rule)
        kwargs: dict[str, Any] = {}
        for key, setting in found.items():
            kwargs[key] = setting.value.name == "true" if key == "reshard_after_forward" else setting.value.value
        where = self.header(stmt, stmt.axes)
        return self.construct(
            lambda: FSDP(axis=_axis_arg(stmt.axes), rules=tuple(rules), location=where, **kwargs), where
        )

    def tensor_parallel(self, stmt: ast.TensorParallelStmt) -> TP | None:
        allowed = {"sequence_parallel": "bool", "weight_layout": "name"}
        found, rule_items, _ = self.settings(stmt.block, allowed, "tensor_parallel", rules=True)
        rules = []
        for item in rule_items:
            if isinstance(item.value, ast.NameValue):
                layout: Any = item.value.name
            elif isinstance(item.value, ast.SpecValue):
                layout = item.value.entries
            else:
                self.error(
                    "TX609",
                    f"rule {item.pattern!r} must map to a role or a partition spec",
                    'write "*/attn/qkv/w" = column, or = (none, model)',
                    item.value.span,
                )
                continue
            rule = self.construct(
                lambda i=item, lay=layout: Rule(pattern=i.pattern, layout=lay, location=self.loc(i.span)),
                self.loc(item.span),
            )
            if rule is not None:
                rules.append(rule)
        seq = found.get("sequence_parallel")
        return self.construct(
            lambda: TP(
                axis=_axis_arg(stmt.axes),
                rules=tuple(rules),
                sequence_parallel=bool(seq and seq.value.name == "true"),
                **({"weight_layout": found["weight_layout"].value.name} if "weight_layout" in found else {}),
                location=self.header(stmt, stmt.axes),
            ),
            self.header(stmt, stmt.axes),
        )

    def pipeline(self, stmt: ast.PipelineStmt) -> PP | None:
        found, _, stage_items = self.settings(
            stmt.block,
            {
                "schedule": "name",
                "microbatches": "int",
                "blocks": "name",
                "balance_tolerance": "number",
                "virtual_stages": "int",
                "remat": "name",
                "table": "string",
            },
            "pipeline",
            stages=True,
        )
        header = self.header(stmt, stmt.axes)
        if len(stmt.axes) != 1:
            self.error(
                "TX609",
                f"a pipeline runs over one axis, not {len(stmt.axes)}",
                "write pipeline over pipe { ... }",
                stmt.axes[1].span,
            )
            return None
        if "balance_tolerance" in found and found["balance_tolerance"].value.value < 1:
            setting = found.pop("balance_tolerance")
            self.error(
                "TX609",
                f"pipeline setting 'balance_tolerance' is {setting.value.value}; it must be at least 1 (max/min stage cost)",
                "write balance_tolerance = 1.25 (the default), or larger to allow less even stages",
                setting.value.span,
            )
        given = any(isinstance(item, ast.Setting) and item.key == "microbatches" for item in stmt.block.items)
        if "microbatches" not in found and given:
            return None  # its value was already reported as malformed
        if "microbatches" not in found:
            self.errors.append(
                Diagnostic(
                    code="TX613",
                    message="the pipeline block needs a microbatches setting",
                    hint="add microbatches = 8 (at least the number of stages)",
                    location=header,
                )
            )
            return None
        stages = tuple(
            Stage(layers=tuple(layer.text() for layer in item.layers), location=self.loc(item.span))
            for item in stage_items
        )
        return self.construct(
            lambda: PP(
                axis=stmt.axes[0].name,
                microbatches=found["microbatches"].value.value,
                schedule=found["schedule"].value.name if "schedule" in found else "1f1b",
                stages=stages or None,
                blocks=found["blocks"].value.name if "blocks" in found else None,
                balance_tolerance=found["balance_tolerance"].value.value if "balance_tolerance" in found else 1.25,
                virtual_stages=found["virtual_stages"].value.value if "virtual_stages" in found else 1,
                remat=found["remat"].value.name if "remat" in found else "none",
                table=self.relative_path(found["table"].value.text) if "table" in found else None,
                location=header,
            ),
            header,
        )

    def precision(self, stmt: ast.PrecisionStmt) -> Precision | None:
        allowed = {
            "params": "name",
            "compute": "name",
            "output": "name",
            "loss_scale_init": "number",
            "loss_scale_growth_interval": "int",
        }
        found, _, _ = self.settings(stmt.block, allowed, "precision")
        kwargs = {
            key: setting.value.value if key.startswith("loss_scale") else setting.value.name
            for key, setting in found.items()
        }
        return self.construct(lambda: Precision(location=self.loc(stmt.span), **kwargs), self.loc(stmt.span))

    def activations(self, stmt: ast.ActivationsStmt) -> Activations | None:
        found, _, _ = self.settings(stmt.block, {"remat": "name"}, "activations")
        remat = found["remat"].value.name if "remat" in found else "none"
        return self.construct(lambda: Activations(remat=remat, location=self.loc(stmt.span)), self.loc(stmt.span))

    # -- the file -----------------------------------------------------------
    def build(self, tree: ast.PlanFile) -> PlanFileContents:
        first: dict[type, Any] = {}
        for stmt in tree.statements:
            if type(stmt) in first:
                word = _STATEMENT_WORDS[type(stmt)]
                self.error(
                    "TX606",
                    f"a second '{word}' statement (the first is at line {first[type(stmt)].span.line})",
                    f"a plan has at most one '{word}'; merge the two",
                    stmt.span,
                )
            else:
                first[type(stmt)] = stmt
        if ast.MeshStmt not in first:
            self.errors.append(
                Diagnostic(
                    code="TX607",
                    message="the plan has no mesh",
                    hint="start the file with a mesh, e.g. mesh { data = 8 }",
                    location=self.source.location(1, 1),
                )
            )
        mesh = self.mesh(first[ast.MeshStmt]) if ast.MeshStmt in first else None
        dims = {
            "data_parallel": self.data_parallel(first[ast.DataParallelStmt]) if ast.DataParallelStmt in first else None,
            "fully_sharded": self.fully_sharded(first[ast.FullyShardedStmt]) if ast.FullyShardedStmt in first else None,
            "tensor_parallel": self.tensor_parallel(first[ast.TensorParallelStmt])
            if ast.TensorParallelStmt in first
            else None,
            "pipeline_parallel": self.pipeline(first[ast.PipelineStmt]) if ast.PipelineStmt in first else None,
            "precision": self.precision(first[ast.PrecisionStmt]) if ast.PrecisionStmt in first else None,
            "activations": self.activations(first[ast.ActivationsStmt]) if ast.ActivationsStmt in first else None,
        }
        model_stmt = first.get(ast.ModelStmt)
        if model_stmt is not None and not _ENTRY_POINT.fullmatch(model_stmt.entry):
            self.error(
                "TX612",
                f"model {model_stmt.entry!r} is not a Python entry point",
                'write model "package.module:function"',
                model_stmt.span,
            )
        # Every path that leaves the mesh unset has recorded an error.
        if self.errors or mesh is None:
            raise TitanaxError.from_diagnostics(self.errors)
        plan = Plan(**dims)
        return PlanFileContents(
            mesh=mesh,
            plan=plan,
            model=model_stmt.entry if model_stmt else None,
            model_location=self.loc(model_stmt.span) if model_stmt else None,
        )


def _axis_arg(axes: tuple[ast.AxisName, ...]) -> str | tuple[str, ...]:
    # One axis is passed as a plain name, as Python users write it, so the objects compare equal.
    return axes[0].name if len(axes) == 1 else tuple(a.name for a in axes)


def to_plan(parsed: ParsedPlan) -> PlanFileContents:
    """Build the ``MeshSpec`` and ``Plan`` a parsed file declares.

    Raises a located :class:`~titanax.errors.TitanaxError` (``ParseError`` for the
    file's structure) listing every problem at once.
    """
    return _Builder(parsed.source).build(parsed.ast)
