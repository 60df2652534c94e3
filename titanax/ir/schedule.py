"""Pipeline schedules as tables: what each pipeline device runs at each tick.

Pure Python, no JAX: the ``build-schedule`` pass turns a table into IR nodes, the
``verify-schedule`` pass checks one, the CLI prints and draws one, and the
lowering reads one to drive the pipeline program.

A tick is one iteration of the pipeline loop. In a tick each device runs at most
one op of each kind, in this order: a forward (``F``), a backward (``B``) and,
for schedules that split the backward, a weight-gradient op (``W``). Whatever a
forward or backward sends to a neighbour arrives at the end of the tick, so an
op may only use what earlier ticks produced (a ``W`` may use its ``B`` of the
same tick). With ``virtual_stages = v`` each device holds ``v`` chunks of the
blocks; model stage ``chunk * p + device`` runs on ``device``, so a microbatch
goes round the devices ``v`` times.

Builders (``p`` devices, ``m`` microbatches):

- ``gpipe``: every forward, then every backward, one op per tick.
- ``1f1b``: the lockstep (SPMD) form of one-forward-one-backward: ``F(s, i)`` at
  tick ``s + i`` and ``B(s, i)`` at tick ``i + 2p - 1 - s``, so in steady state
  every device runs one forward and one backward in every tick and all ticks
  cost the same. At most ``2(p - s) - 1`` microbatches are in flight on device
  ``s``: a bound in ``p``, never in ``m``.
- ``interleaved``: 1F1B over ``v * p`` model stages, forwards in Megatron-LM's
  order (groups of ``p`` microbatches, chunk by chunk), backwards in the same
  order with the chunks reversed; each op does ``1/v`` of a stage's work.
- ``zbh1``: zero bubble H1 (Qi et al., 2023): 1F1B's forwards and input-gradient
  backwards (``B``), with each weight-gradient op (``W``) put where its device would
  otherwise wait for the busiest one; at most ``2p - 1`` microbatches in flight on any
  device, as on device 0 under 1F1B (the program's stash is sized by the busiest device).

A plan may also give its own table (schedule ``user``, read by
``titanax.frontend.schedule_table``); it is checked by the same rules.

The cost model (:meth:`Schedule.modelled_time`) prices ``F = 1`` and ``B = 2``
(``3`` when the backward recomputes the forward), or ``B = 1`` and ``W = 1`` when
split, each ``1/v`` for one of ``v`` chunks; a tick lasts as long as the busiest
device's ops in it, and the ideal is ``3m`` (every device busy all the time, no
recompute).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from titanax.ir.graph import PlanIR
from titanax.ir.nodes import ScheduleOpNode

__all__ = [
    "BUILT_SCHEDULES",
    "KIND_NAMES",
    "Op",
    "Schedule",
    "build_schedule",
    "closed_form_modelled_time",
    "schedule_findings",
    "schedule_from_ir",
    "schedule_problems",
]

KIND_NAMES = {"F": "forward", "B": "backward", "W": "weight"}
"""The IR's name (``schedule_op.op``) of each kind of op."""

BUILT_SCHEDULES = ("gpipe", "1f1b", "interleaved", "zbh1")
"""Schedules Titanax builds from ``(p, m, v)``; a plan may also give its own table (schedule ``user``)."""

_SLOT_ORDER = {"F": 0, "B": 1, "W": 2}


@dataclass(frozen=True, order=True)
class Op:
    """One op of the table: at ``tick``, device ``stage`` runs ``kind`` of ``microbatch`` on chunk ``chunk``.

    ``kind`` is ``F`` (forward), ``B`` (backward; only the input gradient when the schedule
    has ``W`` ops) or ``W`` (the weight gradient of a split backward).
    """

    tick: int
    stage: int
    kind: str
    microbatch: int
    chunk: int = 0

    def model_stage(self, stages: int) -> int:
        """The model stage this op belongs to: ``chunk * stages + stage``."""
        return self.chunk * stages + self.stage

    def label(self, chunked: bool = False) -> str:
        """``F3`` (forward of microbatch 3), or ``F3.1`` for chunk 1 when the table has chunks."""
        return f"{self.kind}{self.microbatch}" + (f".{self.chunk}" if chunked else "")


def _op_cost(kind: str, split: bool, recompute: float) -> float:
    if kind in ("F", "W"):
        return 1.0
    return (1.0 if split else 2.0) + recompute


@dataclass(frozen=True)
class Schedule:
    """A full table for ``stages`` devices, ``microbatches`` microbatches and ``virtual_stages`` chunks per device."""

    name: str
    stages: int
    microbatches: int
    ops: tuple[Op, ...]
    virtual_stages: int = 1

    @property
    def ticks(self) -> int:
        """Length of the table (last tick + 1)."""
        return max((op.tick for op in self.ops), default=-1) + 1

    @property
    def split_backward(self) -> bool:
        """True when the backward is split into input-gradient (``B``) and weight-gradient (``W``) ops:
        always under ``zbh1``, and in a table of another name when it has a ``W`` op."""
        return self.name == "zbh1" or any(op.kind == "W" for op in self.ops)

    @property
    def model_stages(self) -> int:
        """Stages of the model: devices times chunks per device."""
        return self.stages * self.virtual_stages

    def at(self, tick: int, stage: int) -> tuple[Op, ...]:
        """The ops ``stage`` runs at ``tick``, in the order it runs them (empty when it idles)."""
        return self._grid().get((tick, stage), ())

    def _grid(self) -> dict[tuple[int, int], tuple[Op, ...]]:
        grid = self.__dict__.get("_cached_grid")
        if grid is None:
            cells: dict[tuple[int, int], list[Op]] = {}
            for op in self.ops:
                cells.setdefault((op.tick, op.stage), []).append(op)
            grid = {key: tuple(sorted(ops, key=lambda o: _SLOT_ORDER.get(o.kind, 3))) for key, ops in cells.items()}
            object.__setattr__(self, "_cached_grid", grid)
        return grid

    def cost(self, op: Op, recompute: float = 0.0) -> float:
        """Modelled cost of ``op``: ``F = 1``, ``B = 2 + recompute`` (``1 + recompute`` when split),
        ``W = 1``, each divided by the chunks per device."""
        return _op_cost(op.kind, self.split_backward, recompute) / self.virtual_stages

    def modelled_time(self, recompute: float = 0.0) -> float:
        """Sum over ticks of the largest total cost any device runs in that tick.

        ``recompute`` is the extra cost of a backward that reruns its forward (1 under
        ``remat = full``, 0 when the forward's residuals are kept).
        """
        busiest: dict[int, float] = {}
        for (tick, _), ops in self._grid().items():
            busiest[tick] = max(busiest.get(tick, 0.0), sum(self.cost(op, recompute) for op in ops))
        return sum(busiest.values())

    def ideal_time(self) -> float:
        """``3m``: one forward and one backward per microbatch, every device always busy, no recompute."""
        return 3.0 * self.microbatches

    def modelled_over_ideal(self, recompute: float = 0.0) -> float:
        """Modelled step time over the ideal: 1 means no bubble and no recompute."""
        return self.modelled_time(recompute) / self.ideal_time()

    def bubble_fraction(self, recompute: float = 0.0) -> float:
        """Share of the modelled step time a device spends waiting (the same on every device)."""
        work = sum(self.cost(op, recompute) for op in self.ops) / self.stages
        total = self.modelled_time(recompute)
        return 1.0 - work / total if total else 0.0

    def in_flight(self, stage: int) -> int:
        """Most (chunk, microbatch) pairs whose forward has run on device ``stage`` but whose
        backward (its ``W`` when split) has not: the residuals the device holds at once."""
        last = "W" if self.split_backward else "B"
        events = sorted(
            (op.tick, 0 if op.kind == last else 1) for op in self.ops if op.stage == stage and op.kind in ("F", last)
        )
        live = peak = 0
        for _, is_forward in events:  # ends before starts within a tick: a slot freed by a backward is reused
            live += 1 if is_forward else -1
            peak = max(peak, live)
        return peak

    def in_flight_bound(self, stage: int) -> int | None:
        """The most microbatches (chunk-microbatches when interleaved) this schedule may keep in flight
        on device ``stage``; ``None`` when it has no bound below ``m * v``."""
        p, v = self.stages, self.virtual_stages
        if self.name == "1f1b":
            return 2 * (p - stage) - 1
        if self.name == "zbh1":
            return 2 * p - 1
        if self.name == "interleaved":
            return 2 * (p - stage) - 1 + (v - 1) * p
        return None

    def summary(self, recompute: float = 0.0) -> str:
        """One line: shape, ticks, modelled time over ideal and bubble fraction."""
        chunks = f", {self.virtual_stages} chunks per device" if self.virtual_stages > 1 else ""
        return (
            f"{self.name}: {self.stages} stages{chunks}, {self.microbatches} microbatches, {self.ticks} ticks; "
            f"modelled time {self.modelled_time(recompute):g} over ideal {self.ideal_time():g} = "
            f"{self.modelled_over_ideal(recompute):.3f}, bubble {self.bubble_fraction(recompute):.1%}"
        )

    def timeline(self, recompute: float = 0.0) -> str:
        """The table as text: one row per device; a cell lists its ops in the order they run (``F5+B2``), ``.`` when idle."""
        chunked = self.virtual_stages > 1
        texts = {key: "+".join(op.label(chunked) for op in ops) for key, ops in self._grid().items()}
        width = max([3, *(len(t) + 1 for t in texts.values())])
        header = "stage | " + "".join(f"{t:<{width}}" for t in range(self.ticks))
        rows = [self.summary(recompute), header]
        for stage in range(self.stages):
            cells = [texts.get((tick, stage), ".") for tick in range(self.ticks)]
            rows.append(f"{stage:>5} | " + "".join(f"{c:<{width}}" for c in cells))
        return "\n".join(rows) + "\n"

    def svg(self, recompute: float = 0.0) -> str:
        """The table as an SVG picture: one row per device, a box per op (one band per kind), chunks shaded."""
        cell, row, left, top = 28, 36, 70, 40
        kinds = [k for k in ("F", "B", "W") if any(op.kind == k for op in self.ops)] or ["F"]
        band = (row - 6) / len(kinds)
        title = self.summary(recompute)
        # Wide enough for the title line too (about 6 pixels per character of the 10-pixel monospace font).
        width = max(left + self.ticks * cell + 20, left + int(6.2 * len(title)) + 20)
        height = top + self.stages * row + 40
        colours = {"F": ("#4c8bf5", "#1b4fa8"), "B": ("#f5a742", "#a8641b"), "W": ("#5cb85c", "#2e6b2e")}
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="10">',
            f'<text x="{left}" y="20">{title}</text>',
        ]
        for stage in range(self.stages):
            y = top + stage * row
            parts.append(f'<text x="8" y="{y + row / 2}">stage {stage}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{self.ticks * cell}" height="{row - 4}" fill="#f4f4f4"/>')
        for op in self.ops:
            x = left + op.tick * cell
            y = top + op.stage * row + kinds.index(op.kind) * band
            light, dark = colours[op.kind]
            colour = light if op.chunk % 2 == 0 else dark
            parts.append(
                f'<rect x="{x + 1}" y="{y:.1f}" width="{cell - 2}" height="{band - 1:.1f}" fill="{colour}">'
                f"<title>tick {op.tick}: {KIND_NAMES[op.kind]} of microbatch {op.microbatch}, chunk {op.chunk}"
                f"</title></rect>"
            )
            parts.append(f'<text x="{x + 3}" y="{y + band - 3:.1f}" fill="white">{op.label(False)}</text>')
        legend_y = top + self.stages * row + 20
        for index, kind in enumerate(kinds):
            x = left + index * 150
            parts.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colours[kind][0]}"/>')
            if self.virtual_stages > 1:
                parts.append(
                    f'<rect x="{x + 14}" y="{legend_y - 10}" width="12" height="12" fill="{colours[kind][1]}"/>'
                )
            label = KIND_NAMES[kind] + (" (even/odd chunk)" if self.virtual_stages > 1 else "")
            parts.append(f'<text x="{x + 30}" y="{legend_y}">{label}</text>')
        parts.append("</svg>")
        return "\n".join(parts) + "\n"


def _gpipe(p: int, m: int, v: int) -> list[Op]:
    ops = [Op(s + i, s, "F", i) for s in range(p) for i in range(m)]
    ops += [Op(m + p - 1 + (p - 1 - s) + i, s, "B", i) for s in range(p) for i in range(m)]
    return ops


def _one_f_one_b(p: int, m: int, v: int) -> list[Op]:
    ops = [Op(s + i, s, "F", i) for s in range(p) for i in range(m)]
    ops += [Op(i + 2 * p - 1 - s, s, "B", i) for s in range(p) for i in range(m)]
    return ops


def _megatron_order(p: int, m: int, v: int, reverse_chunks: bool) -> list[tuple[int, int]]:
    """(chunk, microbatch) in Megatron-LM's interleaved order: groups of ``p`` microbatches, chunk by chunk."""
    order = []
    for group in range(0, m, p):
        chunks = range(v - 1, -1, -1) if reverse_chunks else range(v)
        for chunk in chunks:
            order += [(chunk, i) for i in range(group, min(group + p, m))]
    return order


def _in_order_lockstep(p: int, m: int, v: int) -> list[Op]:
    """Each device runs its forwards and its backwards each in a fixed order, one of each per
    tick at most, each as soon as what it needs arrived (a tick earlier)."""
    forwards = _megatron_order(p, m, v, reverse_chunks=False)
    backwards = _megatron_order(p, m, v, reverse_chunks=True)
    done: dict[tuple[str, int, int], int] = {}  # (kind, model stage, microbatch) -> tick
    next_f, next_b = [0] * p, [0] * p
    ops: list[Op] = []
    last = v * p - 1
    tick = 0
    while any(b < len(backwards) for b in next_b):
        ran: list[Op] = []
        for s in range(p):
            if next_f[s] < len(forwards):
                chunk, i = forwards[next_f[s]]
                ms = chunk * p + s
                if ms == 0 or done.get(("F", ms - 1, i), tick) < tick:
                    ran.append(Op(tick, s, "F", i, chunk))
                    next_f[s] += 1
            if next_b[s] < len(backwards):
                chunk, i = backwards[next_b[s]]
                ms = chunk * p + s
                ready = done.get(("F", ms, i), tick) < tick and (ms == last or done.get(("B", ms + 1, i), tick) < tick)
                if ready:
                    ran.append(Op(tick, s, "B", i, chunk))
                    next_b[s] += 1
        for op in ran:
            done[(op.kind, op.model_stage(p), op.microbatch)] = tick
        ops += ran
        tick += 1
        if tick > 4 * (m * v + p * v) + 8:  # every op becomes ready within this many ticks
            raise RuntimeError("interleaved schedule did not finish")  # pragma: no cover
    return ops


def _zero_bubble_h1(p: int, m: int, v: int) -> list[Op]:
    """1F1B's forwards and input-gradient backwards (``B``), with the weight-gradient ops (``W``)
    placed greedily, tick by tick: a device runs waiting ``W`` ops while its forward and backward
    leave it less busy than the busiest device in that tick, and must run one whenever more than
    ``2p - 1`` microbatches would otherwise be in flight on it (device 0's count under 1F1B).
    A ``W`` may share its ``B``'s tick (it runs after it)."""
    ops = _one_f_one_b(p, m, v)
    bound = 2 * p - 1
    base: dict[tuple[int, int], int] = {}
    forwards_by: dict[tuple[int, int], int] = {}
    backwards_at: dict[tuple[int, int], list[int]] = {}
    for op in ops:
        base[(op.tick, op.stage)] = base.get((op.tick, op.stage), 0) + 1
        if op.kind == "F":
            forwards_by[(op.tick, op.stage)] = 1
        else:
            backwards_at.setdefault((op.tick, op.stage), []).append(op.microbatch)
    pending: list[list[int]] = [[] for _ in range(p)]
    forwards_done, weights_done = [0] * p, [0] * p
    last_tick = max(op.tick for op in ops)
    tick = 0
    while tick <= last_tick or any(pending):
        forced = [0] * p
        for s in range(p):
            pending[s] += sorted(backwards_at.get((tick, s), []))
            forwards_done[s] += forwards_by.get((tick, s), 0)
            forced[s] = min(len(pending[s]), max(0, forwards_done[s] - weights_done[s] - bound))
        longest = max(base.get((tick, s), 0) + forced[s] for s in range(p))
        longest = max(longest, 1 if any(pending) else 0)
        for s in range(p):
            count = min(len(pending[s]), max(forced[s], longest - base.get((tick, s), 0)))
            for _ in range(count):
                ops.append(Op(tick, s, "W", pending[s].pop(0)))
            weights_done[s] += count
        tick += 1
    return ops


_BUILDERS = {"gpipe": _gpipe, "1f1b": _one_f_one_b, "interleaved": _in_order_lockstep, "zbh1": _zero_bubble_h1}


def build_schedule(name: str, stages: int, microbatches: int, virtual_stages: int = 1) -> Schedule:
    """The table of built schedule ``name`` (one of :data:`BUILT_SCHEDULES`)."""
    chunks = virtual_stages if name == "interleaved" else 1
    ops = _BUILDERS[name](stages, microbatches, chunks)
    return Schedule(name, stages, microbatches, tuple(sorted(ops)), chunks)


def closed_form_modelled_time(
    name: str, stages: int, microbatches: int, virtual_stages: int = 1, recompute: float = 0.0
) -> float | None:
    """The modelled time of a built schedule where a closed form is known, else ``None``.

    - GPipe (any ``m``) and lockstep 1F1B (``m >= p``): ``(3 + recompute)(m + p - 1)``; GPipe as ``m + p - 1``
      forward ticks and as many backward ticks, 1F1B as ramps of ``p`` forward-only and ``p``
      backward-only ticks around ``m - p`` ticks of a forward and a backward, bubble
      ``(p - 1) / (m + p - 1)``;
    - interleaved with ``m`` a multiple of ``p``: ``3m + 3(p - 1) / v``, bubble ``(p - 1) / (vm + p - 1)``;
    - ZB-H1 (``m >= p``): ``3m + (p - 1) + max(0, 2p - 1 - m)``: only the forward ramp is lost once
      ``m >= 2p - 1``.
    """
    p, m, v = stages, microbatches, virtual_stages
    if name == "gpipe":
        return (3.0 + recompute) * (m + p - 1)
    if m < p:
        return None
    if name == "1f1b":
        return (3.0 + recompute) * (m + p - 1)
    if name == "interleaved" and m % p == 0 and recompute == 0:
        return 3.0 * m + 3.0 * (p - 1) / v
    if name == "zbh1" and recompute == 0:
        return 3.0 * m + (p - 1) + max(0, 2 * p - 1 - m)
    return None


def _describe(key: tuple[str, int, int], p: int, v: int) -> str:
    kind, ms, i = key
    if v == 1:
        return f"{kind}({ms}, mb {i})"
    return f"{kind}({ms % p}, chunk {ms // p}, mb {i})"


def schedule_findings(
    schedule: Schedule, known: Iterable[str] = BUILT_SCHEDULES
) -> list[tuple[str, tuple[str, int, int] | None]]:
    """Every way ``schedule`` breaks the pipeline's rules, each with the ``(kind, model stage,
    microbatch)`` of the op at fault (``None`` when no one op is); empty when it is valid.

    Every forward and backward (and every ``W`` when the backward is split) of every
    microbatch on every model stage exactly once; at most one op of each kind per device and
    tick; ``F(s, i)`` after ``F(s - 1, i)``; ``B(s, i)`` after ``F(s, i)`` and ``B(s + 1, i)``;
    ``W(s, i)`` after ``B(s, i)``; each in an earlier tick (what an op sends arrives at the end of
    its tick), except that a ``W`` may share its ``B``'s tick; and a built schedule within its
    in-flight bound on every device.
    """
    p, m, v = schedule.stages, schedule.microbatches, schedule.virtual_stages
    n = p * v
    found: list[tuple[str, tuple[str, int, int] | None]] = []
    when: dict[tuple[str, int, int], int] = {}
    slots: set[tuple[int, int, str]] = set()
    for op in schedule.ops:
        in_range = op.kind in KIND_NAMES and 0 <= op.stage < p and 0 <= op.microbatch < m
        if not in_range or not 0 <= op.chunk < v or op.tick < 0:
            where = f"device {op.stage}, microbatch {op.microbatch}, chunk {op.chunk}"
            found.append(
                (f"{op.kind}{op.microbatch} at tick {op.tick} is outside the table ({where}; the plan has {p} devices, "
                 f"{m} microbatches, {v} chunks per device)", None)
            )  # fmt: skip
            continue
        key = (op.kind, op.model_stage(p), op.microbatch)
        if key in when:
            found.append((f"{_describe(key, p, v)} runs twice (ticks {when[key]} and {op.tick})", key))
        if (op.tick, op.stage, op.kind) in slots:
            found.append((f"stage {op.stage} runs two {KIND_NAMES[op.kind]} ops at tick {op.tick}", key))
        when[key] = op.tick
        slots.add((op.tick, op.stage, op.kind))
    kinds = ("F", "B", "W") if schedule.split_backward else ("F", "B")
    for ms in range(n):
        for i in range(m):
            for kind in kinds:
                if (kind, ms, i) not in when:
                    found.append((f"{_describe((kind, ms, i), p, v)} never runs", None))
    for key, tick in sorted(when.items(), key=lambda item: item[1]):
        kind, ms, i = key
        before = []
        if kind == "F" and ms > 0:
            before.append(("F", ms - 1, i))
        if kind == "B":
            before.append(("F", ms, i))
            if ms < n - 1:
                before.append(("B", ms + 1, i))
        if kind == "W":
            before.append(("B", ms, i))
        for dep in before:
            # A W may share its B's tick: within a tick the weight slot runs after the backward slot.
            same_tick_ok = kind == "W"
            if dep in when and (when[dep] > tick or (when[dep] == tick and not same_tick_ok)):
                found.append(
                    (
                        f"{_describe(key, p, v)} at tick {tick} runs before {_describe(dep, p, v)} at tick {when[dep]}",
                        key,
                    )
                )
    if schedule.name in known:
        for s in range(p):
            bound = schedule.in_flight_bound(s)
            peak = schedule.in_flight(s)
            if bound is not None and peak > bound:
                found.append(
                    (f"stage {s} has {peak} microbatches in flight; {schedule.name} allows at most {bound}", None)
                )
    return found


def schedule_problems(schedule: Schedule, known: Iterable[str] = BUILT_SCHEDULES) -> list[str]:
    """The messages of :func:`schedule_findings`."""
    return [message for message, _ in schedule_findings(schedule, known)]


_KIND_OF_NAME = {name: kind for kind, name in KIND_NAMES.items()}


def schedule_from_ir(ir: PlanIR) -> Schedule | None:
    """The schedule table stored in ``ir``'s ``schedule_op`` nodes, or ``None`` without a pipeline."""
    dim = ir.pipeline_parallel()
    if dim is None:
        return None
    ops = tuple(
        sorted(
            Op(node.tick, node.stage, _KIND_OF_NAME.get(node.op, node.op), node.microbatch, node.chunk)
            for _, node in ir.items(ScheduleOpNode)
        )
    )
    return Schedule(dim.schedule, len(ir.stages()), dim.microbatches, ops, dim.virtual_stages)
