"""``verify-schedule``: the schedule table in the IR obeys the pipeline's rules.

Every forward and backward (and, when split, weight op) of every microbatch on
every model stage exactly once; at most one op of each kind per device and tick;
each op after the ops it needs; a built schedule within its in-flight bound (see
:func:`~titanax.ir.schedule.schedule_findings`). A table the user wrote that
breaks a rule is TX237, located at the cell at fault; a built table that does is
a Titanax bug (TX902). Either way it is reported before anything runs on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import PlanIR, ScheduleOpNode
from titanax.ir.schedule import schedule_findings, schedule_from_ir
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["VerifySchedule"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class VerifySchedule(Pass):
    """Check the schedule table's dependencies and in-flight bounds (TX237 for a user's table, TX902 for a built one)."""

    name = "verify-schedule"
    validates = True
    requires = ("build-schedule",)

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Report every broken rule of the table: TX237 at the cell of a user's table, TX902 for a built one."""
        schedule = schedule_from_ir(ir)
        if schedule is None or not schedule.ops:
            return
        p = schedule.stages
        cells = {
            (
                "F" if n.op == "forward" else "B" if n.op == "backward" else "W",
                n.chunk * p + n.stage,
                n.microbatch,
            ): n.location
            for _, n in ir.items(ScheduleOpNode)
        }
        dim = ir.pipeline_parallel()
        for problem, key in schedule_findings(schedule):
            if schedule.name == "user":
                ctx.error(
                    "TX237",
                    f"the schedule table is not a valid pipeline schedule: {problem}",
                    "each op runs once, after what it needs: F(s, i) after F(s - 1, i); B(s, i) after F(s, i) and "
                    "B(s + 1, i); W(s, i) after (or in the tick of) B(s, i); titanax compile --schedule prints a valid table",
                    cells.get(key) if key is not None else (dim.location if dim else None),
                )
            else:
                ctx.error(
                    "TX902", f"invalid {schedule.name} schedule: {problem}", "this is a Titanax bug; please report it"
                )
