"""The audit: the compiled program's collectives against the IR's, row by row.

A row is one kind of communication: the op, the mesh axes it spans (read from
the HLO's replica groups or source-target pairs), the reduction, the stage
pairs of a permute, and how many times it runs per step. Each side's bytes per
execution are summed within a row (XLA's combiner merges many gradient
all-reduces into one tuple instruction, so instructions do not pair up one to
one). The audit passes when every row's bytes and dtypes agree and the HLO has
no collective the IR does not list (rows whose groups are single devices move
nothing and are shown, not judged: XLA merges or drops such instructions): syncing over the wrong axes, a permute in
the wrong direction, a collective run a different number of times, or one added
outside the IR each leave a row that differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from titanax.ir import CollectiveNode, PlanIR
from titanax.lowering.hlo import HloCollective, MeshAxisSizes, collectives_in_hlo, mesh_axes_of

__all__ = ["AuditRow", "CollectiveAudit", "audit_collectives"]

Key = tuple[str, tuple[str, ...], str | None, tuple[tuple[int, int], ...], int | None]


@dataclass(kw_only=True)
class AuditRow:
    """One kind of communication, as the IR states it and as the compiled program does it."""

    op: str
    axes: tuple[str, ...]
    """Mesh axes it spans, in mesh order; axes of size 1 are left out (such groups move nothing)."""
    reduction: str | None
    """``sum``, ``max``... (a ``mean`` is a sum followed by a division)."""
    moves: tuple[tuple[int, int], ...]
    """For a permute: ``(source, target)`` positions along its one axis."""
    executions: int | None
    """Times per step (``None``: in a loop without a static trip count)."""
    ir_bytes: int = 0
    """Bytes per execution per device the IR lists (its nodes summed)."""
    hlo_bytes: int = 0
    """Bytes per execution per device of the compiled program's instructions (summed)."""
    ir_dtypes: set[str] = field(default_factory=set)
    hlo_dtypes: set[str] = field(default_factory=set)
    ir_nodes: list[str] = field(default_factory=list)
    """Ids of the IR nodes in this row."""
    hlo_instructions: int = 0

    @property
    def trivial(self) -> bool:
        """Every group is one device: nothing moves, and XLA may merge or drop such instructions."""
        return not self.axes

    @property
    def ok(self) -> bool:
        """The IR and the program agree on the row's bytes and dtypes (always, for a trivial row)."""
        return self.trivial or (self.ir_bytes == self.hlo_bytes and self.ir_dtypes == self.hlo_dtypes)


@dataclass(frozen=True, kw_only=True)
class CollectiveAudit:
    """Every row of the audit, and the HLO collectives whose mesh axes could not be read."""

    rows: tuple[AuditRow, ...]
    unreadable: tuple[HloCollective, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the compiled program communicates exactly what the IR says."""
        return not self.unreadable and all(row.ok for row in self.rows)

    def table(self) -> str:
        """The rows side by side, as text: IR and HLO bytes, and whether they agree."""
        header = ("kind", "axes", "reduction", "pairs", "runs/step", "dtype IR | HLO", "IR bytes", "HLO bytes", "")
        lines = [header]
        for row in self.rows:
            lines.append(
                (
                    row.op,
                    ",".join(row.axes) or "-",
                    row.reduction or "-",
                    " ".join(f"{a}>{b}" for a, b in row.moves) or "-",
                    "?" if row.executions is None else str(row.executions),
                    f"{'/'.join(sorted(row.ir_dtypes)) or '-'} | {'/'.join(sorted(row.hlo_dtypes)) or '-'}",
                    f"{row.ir_bytes:,}",
                    f"{row.hlo_bytes:,}",
                    _status(row),
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = [
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
        ]
        for collective in self.unreadable:
            text.append(f"UNREADABLE {collective.op} in {collective.computation}: its groups are not mesh axes")
        return "\n".join(text) + "\n"


def _status(row: AuditRow) -> str:
    if row.trivial:
        return "trivial (groups of 1 device)"
    if row.ok:
        return "ok"
    return "NOT IN IR" if not row.ir_nodes else "MISMATCH"


def _mesh_order(axes: Iterable[str], sizes: Mapping[str, int]) -> tuple[str, ...]:
    order = list(sizes)
    return tuple(sorted((a for a in set(axes) if sizes.get(a, 1) > 1), key=order.index))


def _ir_key(node: CollectiveNode, sizes: Mapping[str, int]) -> Key:
    reduction = "sum" if node.reduction == "mean" else node.reduction
    return (node.op, _mesh_order(node.axes, sizes), reduction, tuple(sorted(node.permutation)), node.executions)


def _hlo_moves(
    collective: HloCollective, sizes: Mapping[str, int], axes: tuple[str, ...]
) -> tuple[tuple[int, int], ...]:
    """A permute's pairs as positions along its one axis (empty for other collectives)."""
    if collective.source_target_pairs is None or len(axes) != 1:
        return ()
    shape, index = tuple(sizes.values()), list(sizes).index(axes[0])
    moves = set()
    for source, target in collective.source_target_pairs:
        moves.add((int(np.unravel_index(source, shape)[index]), int(np.unravel_index(target, shape)[index])))
    return tuple(sorted(moves))


def _row(rows: dict[Key, AuditRow], key: Key) -> AuditRow:
    if key not in rows:
        op, axes, reduction, moves, executions = key
        rows[key] = AuditRow(op=op, axes=axes, reduction=reduction, moves=moves, executions=executions)
    return rows[key]


def audit_collectives(ir: PlanIR, hlo_text: str, mesh_axis_sizes: MeshAxisSizes) -> CollectiveAudit:
    """Compare the collectives of compiled ``hlo_text`` with ``ir``'s (annotated with payloads).

    ``mesh_axis_sizes`` is the mesh's ``shape`` (axis name -> size, in mesh order).
    """
    sizes = dict(mesh_axis_sizes.items() if isinstance(mesh_axis_sizes, Mapping) else mesh_axis_sizes)
    rows: dict[Key, AuditRow] = {}
    for node_id, node in ir.items(CollectiveNode):
        row = _row(rows, _ir_key(node, sizes))
        row.ir_bytes += node.payload_bytes or 0
        row.ir_dtypes.update(node.dtypes)
        row.ir_nodes.append(node_id)
    unreadable = []
    for collective in collectives_in_hlo(hlo_text):
        axes = mesh_axes_of(collective, sizes)
        if axes is None:
            unreadable.append(collective)
            continue
        axes = _mesh_order(axes, sizes)
        moves = _hlo_moves(collective, sizes, axes)
        row = _row(rows, (collective.op, axes, collective.reduction, moves, collective.executions))
        row.hlo_bytes += collective.result_bytes
        row.hlo_dtypes.update(dtype for dtype, _ in collective.payload)
        row.hlo_instructions += 1
    ordered = sorted(rows.values(), key=lambda r: (r.op, r.axes, r.reduction or "", r.moves, r.executions or 0))
    return CollectiveAudit(rows=tuple(ordered), unreadable=tuple(unreadable))
