"""Pipeline schedules as tables: which stage runs which microbatch's forward or backward at each tick.

Pure Python, no JAX: the ``build-schedule`` pass turns a table into IR nodes, the
``verify-schedule`` pass checks one, the CLI draws one, and the lowering reads
one to drive the pipeline program.

- GPipe: every forward, then every backward. Stage ``s`` runs ``F(s, i)`` at tick
  ``s + i`` and ``B(s, i)`` at tick ``m + p - 1 + (p - 1 - s) + i``.
- 1F1B: built greedily, tick by tick: a stage runs a backward as soon as one is
  ready, otherwise a forward if fewer than ``p - s`` microbatches are in flight on
  it, otherwise idles. This reaches the same ``2(m + p - 1)`` ticks as GPipe while
  keeping at most ``p - s`` microbatches' activations on stage ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir.graph import PlanIR
from titanax.ir.nodes import ScheduleOpNode

__all__ = ["Op", "Schedule", "build_schedule", "schedule_from_ir", "schedule_problems"]


@dataclass(frozen=True, order=True)
class Op:
    """One cell of the table: at ``tick``, ``stage`` runs ``kind`` ("F" or "B") of ``microbatch``."""

    tick: int
    stage: int
    kind: str
    microbatch: int


@dataclass(frozen=True)
class Schedule:
    """A full table for ``stages`` stages and ``microbatches`` microbatches."""

    name: str
    stages: int
    microbatches: int
    ops: tuple[Op, ...]

    @property
    def ticks(self) -> int:
        """Length of the table (last tick + 1)."""
        return max((op.tick for op in self.ops), default=-1) + 1

    def at(self, tick: int, stage: int) -> Op | None:
        """The op ``stage`` runs at ``tick``, or ``None`` when it idles."""
        return self._grid().get((tick, stage))

    def _grid(self) -> dict[tuple[int, int], Op]:
        grid = self.__dict__.get("_cached_grid")
        if grid is None:
            grid = {(op.tick, op.stage): op for op in self.ops}
            object.__setattr__(self, "_cached_grid", grid)
        return grid

    def idle_fraction(self) -> float:
        """Idle cells over all cells of the table."""
        cells = self.ticks * self.stages
        return (cells - len(self.ops)) / cells if cells else 0.0

    def peak_in_flight(self, stage: int) -> int:
        """Most microbatches whose forward has run on ``stage`` but whose backward has not."""
        live = peak = 0
        for op in sorted(o for o in self.ops if o.stage == stage):
            live += 1 if op.kind == "F" else -1
            peak = max(peak, live)
        return peak

    def timeline(self) -> str:
        """The table as text: one row per stage, ``F3`` / ``B3`` / ``.`` per tick."""
        width = max(3, len(str(self.microbatches - 1)) + 2)
        header = "stage | " + "".join(f"{t:<{width}}" for t in range(self.ticks))
        rows = [f"{self.name}: {self.stages} stages, {self.microbatches} microbatches, {self.ticks} ticks, "
                f"idle {self.idle_fraction():.1%}", header]  # fmt: skip
        for stage in range(self.stages):
            cells = []
            for tick in range(self.ticks):
                op = self.at(tick, stage)
                cells.append(f"{op.kind}{op.microbatch}" if op else ".")
            rows.append(f"{stage:>5} | " + "".join(f"{c:<{width}}" for c in cells))
        return "\n".join(rows) + "\n"

    def svg(self) -> str:
        """The table as an SVG picture: one row per stage, forward and backward boxes, idle gaps blank."""
        cell, row, left, top = 28, 30, 70, 40
        width, height = left + self.ticks * cell + 20, top + self.stages * row + 40
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">',
            f'<text x="{left}" y="20">{self.name}: {self.stages} stages, {self.microbatches} microbatches, '
            f"{self.ticks} ticks, idle {self.idle_fraction():.1%}</text>",
        ]
        for stage in range(self.stages):
            y = top + stage * row
            parts.append(f'<text x="8" y="{y + 18}">stage {stage}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{self.ticks * cell}" height="{row - 4}" fill="#f4f4f4"/>')
        for op in self.ops:
            x, y = left + op.tick * cell, top + op.stage * row
            colour = "#4c8bf5" if op.kind == "F" else "#f5a742"
            parts.append(
                f'<rect x="{x + 1}" y="{y}" width="{cell - 2}" height="{row - 4}" fill="{colour}">'
                f"<title>tick {op.tick}: {op.kind} of microbatch {op.microbatch}</title></rect>"
            )
            parts.append(f'<text x="{x + 4}" y="{y + 17}" fill="white">{op.kind}{op.microbatch}</text>')
        legend_y = top + self.stages * row + 20
        parts.append(f'<rect x="{left}" y="{legend_y - 10}" width="12" height="12" fill="#4c8bf5"/>')
        parts.append(f'<text x="{left + 16}" y="{legend_y}">forward</text>')
        parts.append(f'<rect x="{left + 90}" y="{legend_y - 10}" width="12" height="12" fill="#f5a742"/>')
        parts.append(f'<text x="{left + 106}" y="{legend_y}">backward</text>')
        parts.append("</svg>")
        return "\n".join(parts) + "\n"


def _gpipe(p: int, m: int) -> list[Op]:
    ops = [Op(s + i, s, "F", i) for s in range(p) for i in range(m)]
    ops += [Op(m + p - 1 + (p - 1 - s) + i, s, "B", i) for s in range(p) for i in range(m)]
    return ops


def _one_f_one_b(p: int, m: int) -> list[Op]:
    done: dict[tuple[str, int, int], int] = {}  # (kind, stage, microbatch) -> tick it ran
    next_f, next_b = [0] * p, [0] * p
    ops: list[Op] = []
    tick = 0
    while any(b < m for b in next_b):
        for s in range(p):
            f, b = next_f[s], next_b[s]
            backward_ready = b < m and (
                done.get(("F", s, b), tick) < tick if s == p - 1 else done.get(("B", s + 1, b), tick) < tick
            )
            forward_ready = f < m and (s == 0 or done.get(("F", s - 1, f), tick) < tick)
            if backward_ready:
                ops.append(Op(tick, s, "B", b))
                next_b[s] += 1
            elif forward_ready and f - b < p - s:
                ops.append(Op(tick, s, "F", f))
                next_f[s] += 1
        for op in ops:
            if op.tick == tick:
                done[(op.kind, op.stage, op.microbatch)] = tick
        tick += 1
    return ops


def build_schedule(name: str, stages: int, microbatches: int) -> Schedule:
    """The table of schedule ``name`` (``gpipe`` or ``1f1b``)."""
    builders = {"gpipe": _gpipe, "1f1b": _one_f_one_b}
    return Schedule(name, stages, microbatches, tuple(sorted(builders[name](stages, microbatches))))


def schedule_problems(schedule: Schedule) -> list[str]:
    """Every way ``schedule`` breaks the pipeline's rules; empty when it is valid.

    Every op exactly once; a stage runs one op per tick; ``F(s, i)`` after
    ``F(s - 1, i)``; ``B(s, i)`` after ``B(s + 1, i)`` and after ``F(s, i)``; and
    under 1F1B at most ``p - s`` microbatches in flight on stage ``s``.
    """
    p, m = schedule.stages, schedule.microbatches
    problems: list[str] = []
    when: dict[tuple[str, int, int], int] = {}
    cells: set[tuple[int, int]] = set()
    for op in schedule.ops:
        key = (op.kind, op.stage, op.microbatch)
        if op.kind not in ("F", "B") or not (0 <= op.stage < p) or not (0 <= op.microbatch < m):
            problems.append(f"{op} is outside the table")
            continue
        if key in when:
            problems.append(f"{op.kind}(stage {op.stage}, microbatch {op.microbatch}) runs twice")
        if (op.tick, op.stage) in cells:
            problems.append(f"stage {op.stage} runs two ops at tick {op.tick}")
        when[key] = op.tick
        cells.add((op.tick, op.stage))
    for s in range(p):
        for i in range(m):
            for kind in ("F", "B"):
                if (kind, s, i) not in when:
                    problems.append(f"{kind}(stage {s}, microbatch {i}) never runs")
    for (kind, s, i), tick in when.items():
        before = []
        if kind == "F" and s > 0:
            before.append(("F", s - 1, i))
        if kind == "B":
            before.append(("F", s, i))
            if s < p - 1:
                before.append(("B", s + 1, i))
        for dep in before:
            if dep in when and when[dep] >= tick:
                problems.append(
                    f"{kind}(stage {s}, microbatch {i}) at tick {tick} does not come after "
                    f"{dep[0]}(stage {dep[1]}, microbatch {dep[2]}) at tick {when[dep]}"
                )
    if schedule.name == "1f1b":
        for s in range(p):
            peak = schedule.peak_in_flight(s)
            if peak > p - s:
                problems.append(f"stage {s} has {peak} microbatches in flight; 1F1B allows at most {p - s}")
    return problems


def schedule_from_ir(ir: PlanIR) -> Schedule | None:
    """The schedule table stored in ``ir``'s ``schedule_op`` nodes, or ``None`` without a pipeline."""
    dim = ir.pipeline_parallel()
    if dim is None:
        return None
    ops = tuple(
        sorted(
            Op(node.tick, node.stage, "F" if node.op == "forward" else "B", node.microbatch)
            for _, node in ir.items(ScheduleOpNode)
        )
    )
    return Schedule(dim.schedule, len(ir.stages()), dim.microbatches, ops)
