"""Pipeline schedule tables users write: the text ``titanax compile --schedule`` prints, read back.

A table has one row per pipeline device, ``DEVICE | CELL CELL ...``, one cell per
tick. A cell is ``.`` (idle) or the ops the device runs in that tick joined by
``+``: ``F3`` is the forward of microbatch 3, ``B3`` its backward, ``W3`` the
weight-gradient half of a split backward; ``F3.1`` is chunk 1 of an interleaved
device. A header row (``stage | 0 1 2 ...``), blank lines, ``#`` comments and a
first line without ``|`` (the title ``--schedule`` prints) are ignored. Example::

    # two stages, two microbatches, one forward and one backward per tick
        0 | F0  F1  .      B0  B1
        1 | .   F0  B0+F1  B1  .

Parsing checks the form of each cell (TX236); whether the table is a valid
schedule for the plan (every op once, dependencies in order) is the
``verify-schedule`` pass's job (TX237), which names the cells at fault.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from titanax.errors import Diagnostic, Location, ParseError
from titanax.frontend.language.source import SourceFile

__all__ = ["TableOp", "parse_table"]

_ROW = re.compile(r"^(\s*)(\S+)(\s*)\|(.*)$")
_OP = re.compile(r"([FBW])(\d+)(?:\.(\d+))?")
_MAX_INDEX = 1 << 20
"""Largest tick, device, microbatch or chunk number a table may use (plans are bounded far below it)."""


@dataclass(frozen=True)
class TableOp:
    """One op of a user's table and the cell it was written in."""

    tick: int
    stage: int
    kind: str
    microbatch: int
    chunk: int
    location: Location


def _error(source: SourceFile, line: int, column: int, length: int, message: str, hint: str) -> ParseError:
    return ParseError(
        Diagnostic(
            code="TX236",
            message=f"schedule table: {message}",
            hint=hint,
            location=Location(
                path=source.path, line=line, column=column, length=max(1, length), line_text=source.lines[line - 1]
            ),
        )
    )


def parse_table(source: SourceFile) -> tuple[TableOp, ...]:
    """Every op of the table in ``source``, each with the location of its cell; TX236 for a malformed row or cell."""
    ops: list[TableOp] = []
    seen_rows: dict[int, int] = {}
    first_content = True
    for number, raw in enumerate(source.lines, start=1):
        text = raw.split("#", 1)[0].rstrip()
        if not text.strip():
            continue
        match = _ROW.match(text)
        if match is None:
            if first_content:
                first_content = False
                continue  # the title line --schedule prints
            raise _error(
                source, number, 1, len(text), "this line is not a row 'DEVICE | CELL CELL ...'",
                "write one row per device, such as '0 | F0 F1 . B0 B1'; '#' starts a comment",
            )  # fmt: skip
        first_content = False
        lead, label, _, cells = match.groups()
        if label == "stage":
            continue  # the header row of tick numbers
        if not label.isdigit() or int(label) >= _MAX_INDEX:
            raise _error(
                source, number, len(lead) + 1, len(label), f"row label {label!r} is not a device number",
                "start each row with the device's index along the pipeline axis: '0 | ...'",
            )  # fmt: skip
        stage = int(label)
        if stage in seen_rows:
            raise _error(
                source, number, len(lead) + 1, len(label), f"device {stage} has a second row (the first is on line "
                f"{seen_rows[stage]})", "give each device exactly one row",
            )  # fmt: skip
        seen_rows[stage] = number
        offset = len(text) - len(cells)
        for tick, cell in enumerate(re.finditer(r"\S+", cells)):
            column = offset + cell.start() + 1
            if cell.group() == ".":
                continue
            kinds: set[str] = set()
            for part in cell.group().split("+"):
                op = _OP.fullmatch(part)
                if op is None or any(int(g) >= _MAX_INDEX for g in op.groups()[1:] if g is not None):
                    raise _error(
                        source, number, column, len(cell.group()), f"cell {cell.group()!r} at tick {tick} of device "
                        f"{stage} is not '.' or ops such as 'F3', 'B3+F5' or 'F3.1'",
                        "an op is F (forward), B (backward) or W (weight gradient), the microbatch, and '.CHUNK' "
                        "for an interleaved chunk; join a tick's ops with '+'",
                    )  # fmt: skip
                kind, micro, chunk = op.group(1), int(op.group(2)), int(op.group(3) or 0)
                if kind in kinds:
                    raise _error(
                        source, number, column, len(cell.group()), f"cell {cell.group()!r} runs two {kind} ops in one "
                        "tick", "a device runs at most one forward, one backward and one weight op per tick",
                    )  # fmt: skip
                kinds.add(kind)
                location = Location(
                    path=source.path, line=number, column=column, length=len(cell.group()), line_text=raw
                )
                ops.append(TableOp(tick, stage, kind, micro, chunk, location))
    if not ops:
        raise ParseError(
            Diagnostic(
                code="TX236",
                message="schedule table: it has no ops",
                hint="write one row per device, such as '0 | F0 F1 . B0 B1' (titanax compile --schedule prints one)",
                location=Location(path=source.path, line=1, column=1),
            )
        )
    return tuple(ops)
