"""``MeshSpec``: which devices to use and how to name the axes of their grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from titanax.errors import Location, MeshError
from titanax.frontend.bounds import MAX_DEVICES, shown

__all__ = ["MeshSpec", "INFER"]

INFER = -1
"""An axis size of ``-1`` asks Titanax to infer it from the device count."""


def _is_identifier(name: object) -> bool:
    return isinstance(name, str) and name.isidentifier()


@dataclass(frozen=True, kw_only=True)
class MeshSpec:
    """A named device mesh, described without touching JAX.

    Example::

        tx.MeshSpec(axes=("data",))                          # all devices on one axis
        tx.MeshSpec(devices=8, axes=("data", "model"), shape=(4, 2))
        tx.MeshSpec(devices=[jax.devices("cpu")[0]], axes=("data",))
    """

    axes: tuple[str, ...]
    """Axis names, outermost first, e.g. ``("data", "model")``."""
    devices: Any = None
    """``None`` or ``"all"`` for every device, an ``int`` for the first N devices,
    a platform name such as ``"cpu"``, or an explicit sequence of JAX devices."""
    shape: tuple[int, ...] | None = None
    """Size of each axis; one entry may be ``-1`` to infer it. ``None`` means one
    axis spanning every device (only allowed with a single axis)."""
    location: Location | None = field(default=None, compare=False, repr=False)
    """Where the mesh was declared, when it came from a ``.tx`` file."""
    axis_locations: tuple[Location | None, ...] = field(default=(), compare=False, repr=False)
    """Where each axis was declared, in ``axes`` order, when it came from a ``.tx`` file."""
    _device_list: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        axes = tuple(self.axes) if isinstance(self.axes, (list, tuple)) else self.axes
        if isinstance(axes, str) or not isinstance(axes, tuple) or not axes:
            raise MeshError.single(
                "TX108",
                f"MeshSpec(axes={self.axes!r}) must be a non-empty tuple of axis names",
                'write axes=("data",) or axes=("data", "model")',
            )
        bad = [a for a in axes if not _is_identifier(a)]
        if bad:
            raise MeshError.single(
                "TX108",
                f"mesh axis names must be Python identifiers, got {bad!r}",
                'use names such as "data", "model" or "pipe"',
            )
        object.__setattr__(self, "axes", axes)
        self._normalize_devices()
        self._normalize_shape()

    def _normalize_devices(self) -> None:
        devices = self.devices
        if devices is None or isinstance(devices, str):
            return
        if isinstance(devices, bool) or (isinstance(devices, int) and not 1 <= devices <= MAX_DEVICES):
            raise MeshError.single(
                "TX104",
                f"MeshSpec(devices={shown(devices)}) must be a device count from 1 to 2**20 = {MAX_DEVICES}",
                "use devices=8 or a list of devices",
            )
        if isinstance(devices, int):
            return
        if hasattr(devices, "__iter__"):
            device_list = tuple(devices)
            if not device_list:
                raise MeshError.single("TX104", "MeshSpec(devices=[]) names no device", "pass at least one device")
            object.__setattr__(self, "_device_list", device_list)
            return
        raise MeshError.single(
            "TX104",
            f"MeshSpec(devices={devices!r}) is not a device count, platform name or list of devices",
            'use devices=None (all), devices=8, devices="cpu" or devices=jax.devices()[:4]',
        )

    def _normalize_shape(self) -> None:
        if self.shape is None:
            if len(self.axes) > 1:
                raise MeshError.single(
                    "TX105",
                    f"MeshSpec with axes {self.axes} needs a shape: which axis gets how many devices?",
                    f"add shape=({', '.join(['-1'] + ['1'] * (len(self.axes) - 1))}) or the sizes you want",
                )
            object.__setattr__(self, "shape", (INFER,))
            return
        shape = tuple(self.shape) if isinstance(self.shape, (tuple, list)) else None
        if (
            shape is None
            or len(shape) != len(self.axes)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
        ):
            raise MeshError.single(
                "TX105",
                f"MeshSpec shape {self.shape!r} must be one integer per axis of {self.axes}",
                "give as many sizes as axis names",
            )
        object.__setattr__(self, "shape", shape)

    @property
    def device_list(self) -> tuple[Any, ...] | None:
        """The explicit devices given, or ``None`` when they are chosen at run time."""
        return self._device_list

    @property
    def requested_device_count(self) -> int | None:
        """How many devices this spec names, when that is known without JAX."""
        if self._device_list is not None:
            return len(self._device_list)
        if isinstance(self.devices, int):
            return self.devices
        return None

    @property
    def platform(self) -> str | None:
        """The platform named by ``devices="cpu"`` and the like, else ``None``."""
        if isinstance(self.devices, str) and self.devices != "all":
            return self.devices
        return None
