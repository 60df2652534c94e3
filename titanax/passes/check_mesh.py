"""``check-mesh``: reject meshes whose axes are malformed or do not fit the devices."""

from __future__ import annotations

import math
from dataclasses import dataclass

from titanax.frontend.bounds import MAX_DEVICES, shown
from titanax.ir import AxisNode, PlanIR
from titanax.ir.nodes import UNRESOLVED_SIZE
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["CheckMesh", "available_device_count", "resolved_axis_size"]


def available_device_count(ir: PlanIR, ctx: PassContext) -> int | None:
    """Devices the mesh will use: the count the spec asks for, else what the target has."""
    requested = ir.mesh().device_count
    return requested if requested is not None else ctx.target.device_count


def resolved_axis_size(ir: PlanIR, ctx: PassContext, name: str) -> int | None:
    """The size axis ``name`` will have, inferring a ``-1`` if the device count allows; else ``None``.

    Validation passes use it to check sizes before ``infer-mesh-shape`` runs, so that every
    error of a plan is reported in one go.
    """
    axes = ir.axes()
    axis = next((a for a in axes if a.name == name), None)
    if axis is None or (axis.size < 1 and axis.size != UNRESOLVED_SIZE):
        return None
    if axis.size != UNRESOLVED_SIZE:
        return axis.size
    count = available_device_count(ir, ctx)
    fixed = math.prod(a.size for a in axes if a.size != UNRESOLVED_SIZE)
    if count is None or fixed < 1 or count % fixed or sum(a.size == UNRESOLVED_SIZE for a in axes) > 1:
        return None
    return count // fixed


def _shape_text(axes: list[AxisNode]) -> str:
    return ", ".join(f"{a.name}={a.size}" for a in axes)


@register_pass
@dataclass(frozen=True, kw_only=True)
class CheckMesh(Pass):
    """Validate axis names and sizes against each other and against the device count.

    Rejects: a repeated axis name (TX101), a size below 1 other than ``-1``
    or above 2**20, or sizes whose product is above 2**20 (TX102), sizes whose product is not the device count (TX103), asking for
    more devices than exist (TX104; ``MeshSpec`` also uses it for a bad
    ``devices=`` value) and more than one inferred size (TX106). A size left
    to infer with no device count known is fine here; ``infer-mesh-shape``
    reports it (TX107) if it is still unknown when sizes are needed.
    """

    name = "check-mesh"
    validates = True

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Report every mesh problem into ``ctx``."""
        axes = ir.axes()
        seen: set[str] = set()
        for axis in axes:
            if axis.name in seen:
                ctx.error(
                    "TX101",
                    f"mesh axis '{axis.name}' appears more than once in ({', '.join(a.name for a in axes)})",
                    "give every axis its own name",
                    axis.location,
                )
            seen.add(axis.name)
            if axis.size < 1 and axis.size != UNRESOLVED_SIZE:
                ctx.error(
                    "TX102",
                    f"mesh axis '{axis.name}' has size {shown(axis.size)}; sizes must be >= 1 (or -1 / auto to infer)",
                    "use a positive size, or let one axis take the remaining devices (-1 in Python, auto in a .tx file)",
                    axis.location,
                )
            elif axis.size > MAX_DEVICES:
                ctx.error(
                    "TX102",
                    f"mesh axis '{axis.name}' has size {shown(axis.size)}; a mesh holds at most 2**20 = "
                    f"{MAX_DEVICES} devices",
                    "use the number of devices the axis really spans",
                    axis.location,
                )
        if any(a.size > MAX_DEVICES for a in axes):
            return  # TX102 explains it; the sizes cannot be compared with a device count
        fixed = math.prod(a.size for a in axes if a.size >= 1)
        if fixed > MAX_DEVICES:
            ctx.error(
                "TX102",
                f"mesh axis sizes ({_shape_text(axes)}) multiply to {fixed} devices; a mesh holds at most 2**20 = "
                f"{MAX_DEVICES}",
                "use the number of devices the mesh really spans",
                ir.mesh().location,
            )
            return
        self._check_device_count(ir, ctx, axes)

    def _check_device_count(self, ir: PlanIR, ctx: PassContext, axes: list[AxisNode]) -> None:
        requested, available = ir.mesh().device_count, ctx.target.device_count
        where = ir.mesh().location
        if requested is not None and available is not None and requested > available:
            ctx.error(
                "TX104",
                f"the mesh asks for {requested} devices but only {available} "
                + ("is" if available == 1 else "are")
                + " available",
                f"use at most {available} devices, or run on a machine with more" + _cpu_hint(ctx, requested),
                where,
            )
            return
        inferred = [a for a in axes if a.size == UNRESOLVED_SIZE]
        fixed = math.prod(a.size for a in axes if a.size != UNRESOLVED_SIZE)
        if len(inferred) > 1:
            ctx.error(
                "TX106",
                f"mesh axes {[a.name for a in inferred]} all have size -1; at most one size can be inferred",
                "give every axis but one an explicit size",
                where,
            )
            return
        if any(a.size < 1 and a.size != UNRESOLVED_SIZE for a in axes):
            return  # TX102 already explains the real problem
        count = available_device_count(ir, ctx)
        if count is None:
            return
        if inferred and count % fixed:
            ctx.error(
                "TX103",
                f"{count} devices do not divide among the fixed mesh axes ({_shape_text(axes)}), product {fixed}",
                f"choose fixed sizes whose product divides {count}",
                where,
            )
        elif not inferred and fixed != count:
            hint = f"choose sizes whose product is {count}"
            if fixed < count:
                hint += f", or use only {fixed} devices (devices={fixed} in MeshSpec, devices = {fixed} in a .tx mesh)"
            ctx.error(
                "TX103",
                f"mesh axis sizes ({_shape_text(axes)}) multiply to {fixed} but there are {count} devices",
                hint + (_cpu_hint(ctx, fixed) if fixed > count else ""),
                where,
            )


def _cpu_hint(ctx: PassContext, wanted: int) -> str:
    """On CPU, how to get more (simulated) devices: XLA's flag, set before JAX starts."""
    if ctx.target.platform != "cpu":
        return ""
    return (
        f"; on CPU, simulate {wanted} devices with XLA_FLAGS=--xla_force_host_platform_device_count={wanted} "
        "set before JAX is imported"
    )
