"""Read the collectives out of compiled HLO text, to audit them against the IR."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from titanax.ir import COLLECTIVE_OPS

__all__ = ["HloCollective", "collectives_in_hlo", "shape_bytes"]

_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")
_OPS = "|".join(re.escape(op) for op in COLLECTIVE_OPS)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+(" + _OPS + r")(-start)?\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_EXPLICIT_GROUPS = re.compile(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=")


@dataclass(frozen=True, kw_only=True)
class HloCollective:
    """One collective instruction found in compiled HLO."""

    op: str
    """XLA's name, e.g. ``all-reduce``."""
    result_bytes: int
    """Bytes of the instruction's result (all tuple elements together)."""
    computation: str
    """The HLO computation holding it; loop bodies are computations of their own."""
    entry: bool
    """True when it sits in the entry computation, not inside a loop or call."""
    group_size: int | None = None
    """Devices per replica group, when the instruction lists its groups. A group of 1
    moves nothing between devices (XLA's CPU backend keeps such trivial collectives)."""

    @property
    def crosses_devices(self) -> bool:
        """False only for a collective whose groups are single devices."""
        return self.group_size != 1


def _group_size(line: str) -> int | None:
    explicit = _EXPLICIT_GROUPS.search(line)
    if explicit:
        return len(explicit.group(1).split("}", 1)[0].strip("{").split(","))
    iota = _IOTA_GROUPS.search(line)
    return int(iota.group(2)) if iota else None


def shape_bytes(shape_text: str) -> int:
    """Bytes of every array shape written in ``shape_text`` (e.g. ``(f32[3,2], f32[])``)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape_text):
        total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def collectives_in_hlo(hlo_text: str) -> list[HloCollective]:
    """Every collective in ``hlo_text`` (as from ``compiled.as_text()``), in order."""
    found = []
    computation, entry = "", False
    for line in hlo_text.splitlines():
        # Computation headers start in column 0 and open a block; instructions are indented.
        header = _COMPUTATION.match(line) if line[:1] not in (" ", "\t") else None
        if header:
            computation, entry = header.group(1), line.startswith("ENTRY")
            continue
        match = _INSTRUCTION.match(line)
        if match:
            shape_text = match.group(1)
            if match.group(3) and match.group(2) != "all-reduce":
                # Async starts (GPU) return (operand, result, ...): count the result only.
                arrays = _ARRAY.findall(shape_text)
                shape_text = "{}[{}]".format(*arrays[1]) if len(arrays) > 1 else shape_text
            found.append(
                HloCollective(
                    op=match.group(2),
                    result_bytes=shape_bytes(shape_text),
                    computation=computation,
                    entry=entry,
                    group_size=_group_size(line),
                )
            )
    return found
