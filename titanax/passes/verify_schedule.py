"""``verify-schedule``: the schedule table in the IR obeys the pipeline's rules.

Every forward and backward of every microbatch on every stage exactly once; one
op per stage per tick; ``F(s, i)`` after ``F(s-1, i)``; ``B(s, i)`` after
``B(s+1, i)`` and after ``F(s, i)``; under 1F1B at most ``p - s`` microbatches in
flight on stage ``s``. A failure means the table is wrong, which is a Titanax
bug (TX902), so it is reported before anything runs on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import PlanIR
from titanax.ir.schedule import schedule_from_ir, schedule_problems
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["VerifySchedule"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class VerifySchedule(Pass):
    """Check the schedule table's dependencies and in-flight bounds (TX902)."""

    name = "verify-schedule"
    validates = True
    requires = ("build-schedule",)

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Report every broken rule of the table."""
        schedule = schedule_from_ir(ir)
        if schedule is None:
            return
        for problem in schedule_problems(schedule):
            ctx.error(
                "TX902", f"invalid {schedule.name} schedule: {problem}", "this is a Titanax bug; please report it"
            )
