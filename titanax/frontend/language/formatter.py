"""``titanax fmt``: print a parsed plan in canonical form, keeping its comments.

Canonical form: one statement per paragraph, a blank line between statements,
two-space indentation, one item per line inside blocks, ``key = value`` with
single spaces, ``none`` in partition specs. Formatting is idempotent, and the
formatted text parses to an AST equal to the original's.

Comments are placed by line: a comment on a line of its own stays above the
construct that follows it; a comment after code stays at the end of that
code's line. A comment inside a construct that formatting joins onto one line
(a stage list spread over several lines) moves above the construct.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.frontend.language import ast
from titanax.frontend.language.parser import Comment, ParsedPlan

__all__ = ["format_plan", "format_value"]

_INDENT = "  "


@dataclass
class _Line:
    text: str
    source_line: int | None
    """Source line the output line starts; ``None`` for lines made by the formatter."""
    indent: str
    """Indentation for comments placed just above this line."""
    end_line: int | None = None
    """Last source line the output line covers (several when formatting joined them)."""


def format_value(value: ast.Value) -> str:
    """A value in canonical form."""
    if isinstance(value, ast.IntValue):
        return str(value.value)
    if isinstance(value, ast.FloatValue):
        return value.text
    if isinstance(value, ast.NameValue):
        return value.name
    if isinstance(value, ast.StringValue):
        return f'"{value.text}"'
    return "(" + ", ".join(_spec_entry(e) for e in value.entries) + ")"


def _spec_entry(entry: str | tuple[str, ...] | None) -> str:
    if entry is None:
        return "none"
    if isinstance(entry, tuple):
        return "(" + ", ".join(entry) + ")"
    return entry


def _item(item: ast.Item) -> str:
    if isinstance(item, ast.Setting):
        return f"{item.key} = {format_value(item.value)}"
    if isinstance(item, ast.RuleItem):
        return f'"{item.pattern}" = {format_value(item.value)}'
    return "stage [" + ", ".join(layer.text() for layer in item.layers) + "]"


def _axes(axes: tuple[ast.AxisName, ...]) -> str:
    return axes[0].name if len(axes) == 1 else "(" + ", ".join(a.name for a in axes) + ")"


def _head(stmt: ast.Statement) -> str:
    if isinstance(stmt, ast.MeshStmt):
        return "mesh"
    if isinstance(stmt, ast.PrecisionStmt):
        return "precision"
    if isinstance(stmt, ast.ActivationsStmt):
        return "activations"
    if isinstance(stmt, ast.ModelStmt):
        return f'model "{stmt.entry}"'
    word = {
        ast.DataParallelStmt: "data_parallel",
        ast.FullyShardedStmt: "fully_sharded",
        ast.TensorParallelStmt: "tensor_parallel",
    }.get(type(stmt), "pipeline")
    return f"{word} over {_axes(stmt.axes)}"


def _statement_lines(stmt: ast.Statement) -> list[_Line]:
    block = getattr(stmt, "block", None)
    head = _head(stmt)
    line = stmt.span.line
    if block is None:
        return [_Line(head, line, "", stmt.span.end_line)]
    if not block.items:
        return [_Line(head + " {}", line, "", stmt.span.end_line)]
    # The header's lines end at its brace: a comment there stays on the header; a comment on a line of
    # its own after the brace belongs to the first item (inside the block), as it will after formatting.
    lines = [_Line(head + " {", line, "", block.span.line)]
    for item in block.items:
        lines.append(_Line(_INDENT + _item(item), item.span.line, _INDENT, item.span.end_line))
    # Comments before the closing brace stay inside the block.
    lines.append(_Line("}", block.span.end_line, _INDENT, block.span.end_line))
    return lines


def format_plan(parsed: ParsedPlan) -> str:
    """Return the canonical text of ``parsed``, with every comment kept."""
    lines: list[_Line] = []
    for index, stmt in enumerate(parsed.ast.statements):
        if index:
            lines.append(_Line("", None, ""))
        lines.extend(_statement_lines(stmt))
    return _place_comments(lines, parsed.comments, parsed.source.lines)


def _place_comments(lines: list[_Line], comments: tuple[Comment, ...], source_lines: tuple[str, ...]) -> str:
    pending = sorted(comments, key=lambda c: (c.line, c.column))
    out: list[str] = []
    for line in lines:
        text = line.text
        if line.source_line is not None:
            end = line.end_line if line.end_line is not None else line.source_line
            trailing = None
            # Every comment up to this line's last source line is placed now: the one
            # ending that last line stays at the end of it; the others go above.
            while pending and pending[0].line <= end:
                comment = pending.pop(0)
                after_code = bool(source_lines[comment.line - 1][: comment.column - 1].strip())
                if comment.line == end and after_code and comment.line >= line.source_line:
                    trailing = comment.text
                else:
                    out.append(line.indent + comment.text)
            if trailing:
                text = f"{text}  {trailing}"
        out.append(text)
    out.extend(c.text for c in pending)
    return "\n".join(out) + "\n" if out else ""
