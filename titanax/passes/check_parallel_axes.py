"""``check-parallel-axes``: every parallel dimension names real axes, each used once."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from titanax.ir import NodeKind, PlanIR
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["CheckParallelAxes", "did_you_mean", "suggest"]


def suggest(name: str, known: list[str], what: str, otherwise: str = "") -> str:
    """Return a hint naming the known name closest to ``name`` and listing ``what`` there is."""
    by_lower = {k.lower(): k for k in known}
    close = [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=1)]
    listing = f"{what} are {', '.join(repr(k) for k in known)}" if known else f"there are no {what}"
    head = f"did you mean '{close[0]}'? " if close else ""
    return head + listing + (f"; {otherwise}" if otherwise and not close else "")


def did_you_mean(name: str, known: list[str]) -> str:
    """Return a hint naming the closest mesh axis, or listing them all."""
    return suggest(name, known, "mesh axes", f"add '{name}' to the mesh or use one of them")


@register_pass
@dataclass(frozen=True, kw_only=True)
class CheckParallelAxes(Pass):
    """Reject unknown axes (TX201), an axis shared by two parallel dimensions
    (TX202), and an axis repeated within one dimension (TX205)."""

    name = "check-parallel-axes"
    validates = True

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Report every axis problem of the parallel dimensions into ``ctx``."""
        known = [axis.name for axis in ir.axes()]
        owner: dict[str, str] = {}
        for _, node in ir.items():
            if node.kind != NodeKind.PARALLEL_DIM:
                continue
            label = node.type_name.removeprefix("parallel_dim.") + " parallelism"
            for axis in node.axis_names:
                if axis not in known:
                    ctx.error(
                        "TX201",
                        f"{label} uses axis '{axis}', which is not in the mesh",
                        did_you_mean(axis, known),
                        node.location,
                    )
            repeated = sorted({a for a in node.axis_names if node.axis_names.count(a) > 1})
            if repeated:
                ctx.error(
                    "TX205", f"{label} lists axis {repeated} more than once", "name each axis once", node.location
                )
            for axis in dict.fromkeys(node.axis_names):
                if axis in owner:
                    ctx.error(
                        "TX202",
                        f"axis '{axis}' is used by both {owner[axis]} and {label}",
                        "give each parallel dimension its own mesh axis",
                        node.location,
                    )
                owner.setdefault(axis, label)
