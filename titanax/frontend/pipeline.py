"""``PP``: pipeline parallelism, the model cut into stages along one mesh axis."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from titanax.errors import Location, PlanError
from titanax.frontend.bounds import MAX_BALANCE_TOLERANCE, shown

__all__ = ["REMAT_POLICIES", "SCHEDULES", "LayerRange", "PP", "Stage", "parse_layer"]

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zbh1", "user")
"""Pipeline schedules: all forwards then all backwards; one-forward-one-backward; 1F1B over
``virtual_stages`` chunks per device; zero bubble H1 (the backward split into input and weight
gradients); or a table the user wrote (``table=...``)."""

REMAT_POLICIES = ("none", "dots", "full")
"""What a stage's forward keeps for its backward: every residual (``none``: no forward runs
twice), only matmul outputs (``dots``: the backward reruns the cheap elementwise work), or only
the stage input (``full``: the backward reruns the whole forward)."""

_LAYER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)(?::(\d+))?\])?")


@dataclass(frozen=True)
class LayerRange:
    """A parsed layer reference: ``embed`` (the whole entry) or ``block[0:6]`` (layers 0..5)."""

    name: str
    start: int | None = None
    stop: int | None = None

    def overlaps(self, other: LayerRange) -> bool:
        """True when both ranges name at least one layer in common."""
        if self.name != other.name:
            return False
        if self.start is None or other.start is None:
            return True
        return max(self.start, other.start) < min(self.stop, other.stop)  # type: ignore[type-var]

    @property
    def empty(self) -> bool:
        """True for a range such as ``block[4:4]`` that names no layer."""
        return self.start is not None and self.stop is not None and self.stop <= self.start


def parse_layer(text: str) -> LayerRange | None:
    """Parse ``name``, ``name[i]`` or ``name[i:j]``; ``None`` if ``text`` is none of these."""
    match = _LAYER.fullmatch(text)
    if match is None:
        return None
    name, start, stop = match.groups()
    if start is None:
        return LayerRange(name)
    return LayerRange(name, int(start), int(stop) if stop is not None else int(start) + 1)


@dataclass(frozen=True, kw_only=True)
class Stage:
    """The layers one pipeline stage runs, in order.

    Example::

        tx.Stage(layers=("embed", "block[0:6]"))
    """

    layers: tuple[str, ...]
    """Layer references: a top-level parameter entry (``"embed"``) or a range of a stacked
    entry (``"block[0:6]"`` is layers 0 to 5 of ``block``)."""
    location: Location | None = field(default=None, compare=False, repr=False)
    """Where the stage was written, when it came from a ``.tx`` file."""

    def __post_init__(self) -> None:
        layers = (self.layers,) if isinstance(self.layers, str) else self.layers
        if not isinstance(layers, (tuple, list)) or not all(isinstance(x, str) for x in layers):
            raise PlanError.single(
                "TX204",
                f"a pipeline stage must be a tuple of layer names, got {self.layers!r}",
                'write ("embed", "block[0:6]")',
            )
        object.__setattr__(self, "layers", tuple(layers))


def _stages_tuple(stages: object) -> tuple[Stage, ...] | None:
    if stages is None:
        return None
    if isinstance(stages, Sequence) and not isinstance(stages, str):
        return tuple(s if isinstance(s, Stage) else Stage(layers=s) for s in stages)
    raise PlanError.single(
        "TX204",
        f"PP(stages=...) must be a sequence of stages, got {stages!r}",
        'write stages=[("embed", "block[0:6]"), ("block[6:12]", "head")]',
    )


@dataclass(frozen=True, kw_only=True)
class PP:
    """Pipeline parallelism: one stage per index of ``axis``, microbatches flowing through them.

    Example::

        tx.PP(axis="pipe", microbatches=8, schedule="1f1b",
              stages=[("embed", "block[0:6]"), ("block[6:12]", "head")])
    """

    axis: str
    """The mesh axis whose indices are the stages."""
    microbatches: int
    """Microbatches each global batch is split into."""
    schedule: str = "1f1b"
    """One of :data:`SCHEDULES`."""
    stages: Sequence[Stage] | Sequence[Sequence[str]] | None = None
    """The layers of each stage, first stage first; ``None`` splits the model's stacked
    blocks evenly (the embedding on the first stage, the head on the last)."""
    blocks: str | None = None
    """The parameter entry holding the stacked blocks (leading dimension = layer). ``None``
    takes the name the stages' ranges use (``block`` in ``block[0:6]``), else ``"blocks"``."""
    balance_tolerance: float = 1.25
    """Largest allowed ratio between the costliest and the cheapest stage."""
    virtual_stages: int = 1
    """Chunks of blocks per device under ``schedule="interleaved"`` (at least 2 there, 1 otherwise)."""
    remat: str = "none"
    """One of :data:`REMAT_POLICIES`: what each forward keeps for its backward."""
    table: str | None = None
    """Path of a schedule table the plan runs instead of a built schedule (its ``schedule`` is
    then ``"user"``); the format is what ``titanax compile --schedule`` prints (see
    :mod:`titanax.frontend.schedule_table`)."""
    location: Location | None = field(default=None, compare=False, repr=False)
    """Where the dimension was declared, when it came from a ``.tx`` file."""

    def __post_init__(self) -> None:
        if not isinstance(self.virtual_stages, int) or isinstance(self.virtual_stages, bool):
            raise PlanError.single(
                "TX204", f"PP(virtual_stages={shown(self.virtual_stages)}) must be an integer", "write virtual_stages=2"
            )
        if not isinstance(self.remat, str):
            raise PlanError.single(
                "TX204", f"PP(remat={self.remat!r}) must be a string", f"use one of {REMAT_POLICIES}"
            )
        if self.table is not None:
            if not isinstance(self.table, (str, os.PathLike)):
                raise PlanError.single(
                    "TX204", f"PP(table={self.table!r}) must be the path of a schedule table", 'write table="my.sched"'
                )
            object.__setattr__(self, "table", os.fspath(self.table))
            if self.schedule not in ("1f1b", "user"):
                raise PlanError.single(
                    "TX204",
                    f"PP(schedule={self.schedule!r}) and PP(table=...) both say which schedule runs",
                    "drop schedule=...: a plan with a table runs it (its schedule is 'user')",
                )
            object.__setattr__(self, "schedule", "user")
        if not isinstance(self.axis, str):
            raise PlanError.single(
                "TX204", f"PP(axis={self.axis!r}) must be one axis name", 'write PP(axis="pipe", ...)'
            )
        if not isinstance(self.microbatches, int) or isinstance(self.microbatches, bool):
            raise PlanError.single(
                "TX204", f"PP(microbatches={shown(self.microbatches)}) must be an integer", "write microbatches=8"
            )
        if not isinstance(self.schedule, str):
            raise PlanError.single(
                "TX204", f"PP(schedule={self.schedule!r}) must be a string", f"use one of {SCHEDULES}"
            )
        object.__setattr__(self, "stages", _stages_tuple(self.stages))
        if self.blocks is not None and not isinstance(self.blocks, str):
            raise PlanError.single(
                "TX204", f"PP(blocks={self.blocks!r}) must be a parameter entry name", 'write blocks="blocks"'
            )
        tolerance = self.balance_tolerance
        # Written so that NaN fails too, and a 400-digit integer is compared, never converted to float.
        in_range = isinstance(tolerance, (int, float)) and 1 <= tolerance <= MAX_BALANCE_TOLERANCE
        if isinstance(tolerance, bool) or not in_range:
            raise PlanError.single(
                "TX204",
                f"PP(balance_tolerance={shown(tolerance)}) must be a finite number from 1 to {MAX_BALANCE_TOLERANCE:.0f} "
                "(max stage cost over min stage cost)",
                "the default is 1.25; use a larger value to allow less even stages",
            )

    @property
    def blocks_entry(self) -> str:
        """The stacked-blocks entry: ``blocks`` if given, else the name the stages' ranges use, else ``"blocks"``."""
        if self.blocks is not None:
            return self.blocks
        for stage in self.stages or ():
            for text in stage.layers:
                layer = parse_layer(text)
                if layer is not None and layer.start is not None:
                    return layer.name
        return "blocks"

    @property
    def axes(self) -> tuple[str, ...]:
        """The pipeline axis as a one-element tuple."""
        return (self.axis,)
