"""The per-tick lookup tables a pipeline program runs from, and the buffer slots they use.

A schedule (``titanax.ir.schedule``) says which ops each device runs at each
tick. The program needs, per tick and device, integers it can index with: which
branch each op slot takes (idle, or a forward / backward / weight op of one
chunk and stage kind), which microbatch, and which buffer slots the op reads and
writes. Four buffers carry values between ticks, each with as few slots as the
schedule's live intervals need (a slot is reused once its value was last read):

- ``act``: an activation from the end of the tick that sent it to the forward that reads it;
- ``cot``: a cotangent from the end of the tick that sent it to the backward that reads it;
- ``res``: a forward's residuals until its backward (its ``W`` when the backward is split);
- ``wres``: what a split backward leaves for its ``W``.

``act`` and ``cot`` have one spare slot at the end, where whatever arrives for
nobody is written. Within a tick the program runs the forward slot, then the
backward slot, then the weight slot, then both sends; a ``res`` slot a backward
frees is taken again from the next tick on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from titanax.ir.schedule import Op, Schedule

__all__ = ["BRANCH_KINDS", "PipelineTables", "stage_kind"]

BRANCH_KINDS = ("first", "middle", "last")
"""A model stage is the first (runs the model's ``first``), the last (runs ``last`` and the loss) or a middle one."""


def stage_kind(model_stage: int, model_stages: int) -> str:
    """``first``, ``middle`` or ``last`` for ``model_stage`` of ``model_stages``."""
    if model_stage == 0:
        return "first"
    return "last" if model_stage == model_stages - 1 else "middle"


def _assign(intervals: dict[int, list[tuple[tuple, int, int]]], strict: bool) -> tuple[int, dict[tuple, int]]:
    """Fewest slots, and a slot per ``(device, key)``, so that no two live intervals of a device share one.

    An interval ``(key, start, end)`` occupies its slot from ``start`` to ``end``; another may take the
    slot from tick ``end`` on (``end + 1`` when ``strict``: the write comes before the read in a tick).
    """
    slots: dict[tuple, int] = {}
    most = 0
    for device, spans in intervals.items():
        free_at: list[int] = []  # per slot, the first tick a new interval may start in it
        for key, start, end in sorted(spans, key=lambda span: (span[1], span[2])):
            slot = next((k for k, tick in enumerate(free_at) if tick <= start), None)
            if slot is None:
                slot = len(free_at)
                free_at.append(0)
            free_at[slot] = end + 1 if strict else end
            slots[(device, *key)] = slot
        most = max(most, len(free_at))
    return most, slots


@dataclass(frozen=True)
class PipelineTables:
    """Lookup tables of one schedule, ``(ticks, devices)`` int32 arrays, and the slot counts behind them."""

    schedule: Schedule
    forward_branches: tuple[tuple[int, str, int], ...]
    """``(chunk, kind, layers)`` of each forward branch (``layers`` 0: all the chunk's rows; else the
    stage's own count under uneven stages); table value ``k + 1`` runs branch ``k``, 0 idles."""
    backward_branches: tuple[tuple[int, str, int], ...]
    weight_branches: tuple[tuple[int, str, int], ...]
    act_slots: int
    cot_slots: int
    res_slots: int
    wres_slots: int
    arrays: dict[str, np.ndarray] = field(repr=False)

    @classmethod
    def build(cls, schedule: Schedule, stage_layers: tuple[int, ...] | None = None) -> PipelineTables:
        """Branches, slots and tables of ``schedule``; ``stage_layers`` gives each device's layer count
        when stages run different numbers of layers (``None``: every device runs all its rows)."""
        p, n = schedule.stages, schedule.model_stages
        when = {(op.kind, op.model_stage(p), op.microbatch): op for op in schedule.ops}
        split = schedule.split_backward

        def key(op: Op) -> tuple[int, int]:
            return (op.chunk, op.microbatch)

        act, cot, res, wres = {}, {}, {}, {}
        for op in schedule.ops:
            ms, i = op.model_stage(p), op.microbatch
            if op.kind == "F":
                if ms > 0:
                    act.setdefault(op.stage, []).append((key(op), when[("F", ms - 1, i)].tick, op.tick))
                last_use = when[("W" if split else "B", ms, i)].tick
                res.setdefault(op.stage, []).append((key(op), op.tick, last_use))
            elif op.kind == "B":
                if ms < n - 1:
                    cot.setdefault(op.stage, []).append((key(op), when[("B", ms + 1, i)].tick, op.tick))
                if split:
                    wres.setdefault(op.stage, []).append((key(op), op.tick, when[("W", ms, i)].tick))
        act_slots, act_slot = _assign(act, strict=False)
        cot_slots, cot_slot = _assign(cot, strict=False)
        res_slots, res_slot = _assign(res, strict=True)
        wres_slots, wres_slot = _assign(wres, strict=True)

        def branch_of(op: Op) -> tuple[int, str, int]:
            return (op.chunk, stage_kind(op.model_stage(p), n), stage_layers[op.stage] if stage_layers else 0)

        def branches(kind: str) -> tuple[tuple[int, str, int], ...]:
            found = {branch_of(op) for op in schedule.ops if op.kind == kind}
            return tuple(sorted(found, key=lambda b: (b[0], BRANCH_KINDS.index(b[1]), b[2])))

        forward, backward, weight = branches("F"), branches("B"), branches("W")
        shape = (schedule.ticks, p)
        names = ("f_branch", "f_micro", "f_act", "f_res", "b_branch", "b_micro", "b_res", "b_cot", "b_wres")
        names += ("w_branch", "w_micro", "w_res", "w_wres", "act_in", "cot_in")
        arrays = {name: np.zeros(shape, np.int32) for name in names}
        arrays["act_in"][:] = act_slots  # the spare slot: nothing arrives for this device
        arrays["cot_in"][:] = cot_slots
        for op in schedule.ops:
            t, d, ms, i = op.tick, op.stage, op.model_stage(p), op.microbatch
            branch = branch_of(op)
            if op.kind == "F":
                arrays["f_branch"][t, d] = forward.index(branch) + 1
                arrays["f_micro"][t, d] = i
                arrays["f_act"][t, d] = act_slot.get((d, *key(op)), 0)
                arrays["f_res"][t, d] = res_slot[(d, *key(op))]
                if ms < n - 1:
                    receiver, chunk = (d + 1) % p, op.chunk + (1 if d == p - 1 else 0)
                    arrays["act_in"][t, receiver] = act_slot[(receiver, chunk, i)]
            elif op.kind == "B":
                arrays["b_branch"][t, d] = backward.index(branch) + 1
                arrays["b_micro"][t, d] = i
                arrays["b_res"][t, d] = res_slot[(d, *key(op))]
                arrays["b_cot"][t, d] = cot_slot.get((d, *key(op)), 0)
                arrays["b_wres"][t, d] = wres_slot.get((d, *key(op)), 0)
                if ms > 0:
                    receiver, chunk = (d - 1) % p, op.chunk - (1 if d == 0 else 0)
                    arrays["cot_in"][t, receiver] = cot_slot[(receiver, chunk, i)]
            else:
                arrays["w_branch"][t, d] = weight.index(branch) + 1
                arrays["w_micro"][t, d] = i
                arrays["w_res"][t, d] = res_slot[(d, *key(op))]
                arrays["w_wres"][t, d] = wres_slot[(d, *key(op))]
        return cls(schedule, forward, backward, weight, act_slots, cot_slots, res_slots, wres_slots, arrays)
