"""The AST of a ``.tx`` plan: frozen dataclasses that keep their source spans.

Spans do not take part in equality, so a plan and its formatted form, which
differ only in layout, have equal ASTs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "AxisName",
    "Block",
    "DataParallelStmt",
    "FullyShardedStmt",
    "FloatValue",
    "IntValue",
    "Item",
    "LayerRef",
    "MeshStmt",
    "ActivationsStmt",
    "ModelStmt",
    "NameValue",
    "PipelineStmt",
    "PlanFile",
    "PrecisionStmt",
    "RuleItem",
    "Setting",
    "Span",
    "SpecValue",
    "StageItem",
    "Statement",
    "StringValue",
    "TensorParallelStmt",
    "Value",
]


@dataclass(frozen=True)
class Span:
    """Where a construct sits in the source: 1-based start and end (end column exclusive)."""

    line: int
    column: int
    end_line: int
    end_column: int

    @property
    def length(self) -> int:
        """Characters covered on the first line (for the caret underline)."""
        return self.end_column - self.column if self.end_line == self.line else 1


def _span() -> Span:
    return field(default=None, compare=False, repr=False)  # type: ignore[return-value]


@dataclass(frozen=True)
class IntValue:
    """An integer literal, e.g. ``8`` or ``-1``."""

    value: int
    span: Span = _span()


@dataclass(frozen=True)
class FloatValue:
    """A decimal literal, e.g. ``1.25`` (kept as written, so formatting preserves it)."""

    text: str
    span: Span = _span()

    @property
    def value(self) -> float:
        """The number."""
        return float(self.text)


@dataclass(frozen=True)
class NameValue:
    """A bare word: ``all``, ``auto``, ``true``, ``column``, ``1f1b``, ``bfloat16``..."""

    name: str
    span: Span = _span()


@dataclass(frozen=True)
class StringValue:
    """A double-quoted string, without its quotes."""

    text: str
    span: Span = _span()


@dataclass(frozen=True)
class SpecValue:
    """A partition spec: per dimension ``None`` (whole), one axis, or a tuple of axes."""

    entries: tuple[str | tuple[str, ...] | None, ...]
    span: Span = _span()


Value = IntValue | FloatValue | NameValue | StringValue | SpecValue


@dataclass(frozen=True)
class Setting:
    """``key = value`` inside a block."""

    key: str
    value: Value
    span: Span = _span()


@dataclass(frozen=True)
class RuleItem:
    """``"glob" = layout`` inside a ``tensor_parallel`` block."""

    pattern: str
    value: Value
    span: Span = _span()


@dataclass(frozen=True)
class LayerRef:
    """``embed``, ``block[3]`` (``stop`` is ``None``) or ``block[0:6]``."""

    name: str
    start: int | None = None
    stop: int | None = None
    span: Span = _span()

    def text(self) -> str:
        """The reference as written in canonical form."""
        if self.start is None:
            return self.name
        if self.stop is None:
            return f"{self.name}[{self.start}]"
        return f"{self.name}[{self.start}:{self.stop}]"


@dataclass(frozen=True)
class StageItem:
    """``stage [layer, ...]`` inside a ``pipeline`` block."""

    layers: tuple[LayerRef, ...]
    span: Span = _span()


Item = Setting | RuleItem | StageItem


@dataclass(frozen=True)
class Block:
    """``{ item item ... }``; the span's end is the closing brace."""

    items: tuple[Item, ...]
    span: Span = _span()


@dataclass(frozen=True)
class AxisName:
    """A mesh axis named in a statement header."""

    name: str
    span: Span = _span()


@dataclass(frozen=True)
class MeshStmt:
    """``mesh { devices = ..., NAME = SIZE, ... }``."""

    block: Block
    span: Span = _span()


@dataclass(frozen=True)
class DataParallelStmt:
    """``data_parallel over AXES [{ accumulate_steps = N }]``."""

    axes: tuple[AxisName, ...]
    block: Block | None
    span: Span = _span()


@dataclass(frozen=True)
class FullyShardedStmt:
    """``fully_sharded over AXES [{ stage = N, min_size = N, ..., "pattern" = DIM | none }]``."""

    axes: tuple[AxisName, ...]
    block: Block | None
    span: Span = _span()


@dataclass(frozen=True)
class TensorParallelStmt:
    """``tensor_parallel over AXES [{ settings and rules }]``."""

    axes: tuple[AxisName, ...]
    block: Block | None
    span: Span = _span()


@dataclass(frozen=True)
class PipelineStmt:
    """``pipeline over AXIS { schedule, microbatches, stages }``."""

    axes: tuple[AxisName, ...]
    block: Block
    span: Span = _span()


@dataclass(frozen=True)
class PrecisionStmt:
    """``precision { params = ..., compute = ..., output = ... }``."""

    block: Block
    span: Span = _span()


@dataclass(frozen=True)
class ActivationsStmt:
    """``activations { remat = none | dots | full }``: what the stacked blocks keep for the backward."""

    block: Block
    span: Span = _span()


@dataclass(frozen=True)
class ModelStmt:
    """``model "package.module:function"``: named, never imported by the parser."""

    entry: str
    span: Span = _span()


Statement = (
    MeshStmt
    | DataParallelStmt
    | FullyShardedStmt
    | TensorParallelStmt
    | PipelineStmt
    | PrecisionStmt
    | ActivationsStmt
    | ModelStmt
)


@dataclass(frozen=True)
class PlanFile:
    """A whole ``.tx`` file: its statements in source order."""

    statements: tuple[Statement, ...]
