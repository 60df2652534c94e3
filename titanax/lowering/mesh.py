"""Turn the IR's mesh into a ``jax.sharding.Mesh`` with explicit axis types."""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh

from titanax.errors import Diagnostic, MeshError
from titanax.frontend import MeshSpec
from titanax.ir import PlanIR

__all__ = ["available_devices", "make_jax_mesh"]


def available_devices(spec: MeshSpec) -> list[jax.Device]:
    """The devices ``spec`` may draw from: its explicit list, a platform's devices, or all."""
    if spec.device_list is not None:
        return list(spec.device_list)
    if spec.platform is not None:
        try:
            return list(jax.devices(spec.platform))
        except RuntimeError as err:
            raise MeshError(
                Diagnostic(
                    code="TX109",
                    message=f"the mesh asks for '{spec.platform}' devices, which JAX does not have ({err})",
                    hint=f"use all devices (the default backend is {jax.default_backend()})",
                    location=spec.location,
                )
            ) from None
    return list(jax.devices())


def make_jax_mesh(ir: PlanIR, spec: MeshSpec) -> Mesh:
    """Build the mesh the IR describes, on the first ``device_count`` devices of ``spec``."""
    axes = ir.axes()
    devices = available_devices(spec)[: ir.mesh().device_count]
    return jax.make_mesh(
        tuple(a.size for a in axes),
        tuple(a.name for a in axes),
        axis_types=(AxisType.Explicit,) * len(axes),
        devices=devices,
    )
