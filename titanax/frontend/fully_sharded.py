"""``FSDP``: fully sharded data parallelism (ZeRO stages 1, 2 and 3), over its own mesh axes.

The batch is split over the FSDP axes as over data-parallel ones. What else is
split there depends on the stage:

- stage 1: the optimizer state; gradients are reduce-scattered, each device
  updates its shard, and the updated parameters are all-gathered;
- stage 2: also the gradients; under ``accumulate_steps`` each microbatch's
  gradients are reduce-scattered into a sharded accumulator;
- stage 3: also the parameters, gathered just before use (one stacked layer at
  a time inside the scan over blocks) and their gradients reduce-scattered.

Each parameter is split along one dimension: a pass picks it (the largest one
that divides over the FSDP axes and that tensor parallelism does not split);
``rules`` override the choice by path (a dimension, or ``None`` to keep it
whole), and parameters with fewer than ``min_size`` elements stay whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from titanax.errors import Location, PlanError
from titanax.frontend.axes import axes_tuple
from titanax.frontend.bounds import MAX_MICROBATCHES, shown

__all__ = ["FSDP", "FSDP_STAGES", "FSDPRule"]

FSDP_STAGES = (1, 2, 3)
"""ZeRO stages: 1 shards optimizer state, 2 also gradients, 3 also parameters."""

MAX_MIN_SIZE = 2**40
"""The largest ``min_size`` accepted (elements); no parameter is larger."""


@dataclass(frozen=True, kw_only=True)
class FSDPRule:
    """Which dimension of the parameters matching ``pattern`` to shard (``None``: keep them whole).

    Dimensions count in each layer's shape for stacked blocks, as tensor-parallel rules do.
    """

    pattern: str
    """Glob over ``/``-joined parameter paths, as in tensor-parallel rules."""
    dim: int | None
    """The dimension split over the FSDP axes, or ``None`` to keep matching parameters whole."""
    location: Location | None = field(default=None, compare=False, repr=False)
    """Where the rule was written, when it came from a ``.tx`` file."""

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise PlanError.single(
                "TX204",
                f"an FSDP rule pattern must be a non-empty string, got {self.pattern!r}",
                'write rules={"blocks/mlp/up/w": 1}',
            )
        if self.dim is not None and (not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 0):
            raise PlanError.single(
                "TX241",
                f"FSDP rule {self.pattern!r} gives dimension {self.dim!r}; it must be a dimension index >= 0 or none",
                f'write "{self.pattern}" = 0 to split dimension 0, or "{self.pattern}" = none to keep it whole',
            )


def _rules_tuple(rules: object) -> tuple[FSDPRule, ...]:
    if isinstance(rules, Mapping):
        return tuple(FSDPRule(pattern=p, dim=d) for p, d in rules.items())
    if isinstance(rules, (tuple, list)) and all(isinstance(r, FSDPRule) for r in rules):
        return tuple(rules)
    raise PlanError.single(
        "TX204",
        f"FSDP(rules=...) must be a dict from glob to a dimension (or None), got {rules!r}",
        'write rules={"embed/tokens": 1, "pos": None}',
    )


@dataclass(frozen=True, kw_only=True)
class FSDP:
    """Fully sharded data parallelism over ``axis``.

    Example::

        tx.Plan(fully_sharded=tx.FSDP(axis="fsdp", stage=3))
        # HSDP: replicated over "data", sharded over "fsdp"
        tx.Plan(data_parallel=tx.DP(axis="data"), fully_sharded=tx.FSDP(axis="fsdp"))
    """

    axis: str | tuple[str, ...]
    """Mesh axis (or axes) the batch and the shards are split over."""
    stage: int = 3
    """1: optimizer state; 2: also gradients; 3: also parameters (see :data:`FSDP_STAGES`)."""
    min_size: int = 1024
    """Parameters with fewer elements than this stay whole (gathering them costs more than it saves)."""
    reshard_after_forward: bool = True
    """Stage 3: free each gathered layer after its forward and gather it again for the backward
    (``False`` keeps the gathered layers from forward to backward, as FSDP2's option of that name)."""
    accumulate_steps: int = 1
    """Microbatches per device per step, as ``tx.DP``'s (give it on one of the two)."""
    rules: Mapping[str, int | None] | tuple[FSDPRule, ...] = ()
    """Glob -> dimension to shard (or ``None`` for whole), overriding the chosen one."""
    location: Location | None = field(default=None, compare=False, repr=False)
    """Where the dimension was declared, when it came from a ``.tx`` file."""

    def __post_init__(self) -> None:
        axes_tuple(self.axis, "FSDP(axis=...)")
        if self.stage not in FSDP_STAGES or isinstance(self.stage, bool):
            raise PlanError.single(
                "TX238",
                f"FSDP stage {self.stage!r} is not a ZeRO stage",
                "use stage = 1 (optimizer state), 2 (also gradients) or 3 (also parameters)",
            )
        size = self.min_size
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_MIN_SIZE:
            raise PlanError.single(
                "TX239",
                f"FSDP min_size = {size!r} must be a number of elements from 0 to 2**40",
                "use min_size = 0 to shard every parameter that divides, or e.g. 1024 to keep small ones whole",
            )
        if not isinstance(self.reshard_after_forward, bool):
            raise PlanError.single(
                "TX204",
                f"FSDP(reshard_after_forward={self.reshard_after_forward!r}) must be True or False",
                "write reshard_after_forward=False to keep gathered layers for the backward",
            )
        steps = self.accumulate_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_MICROBATCHES:
            raise PlanError.single(
                "TX203",
                f"FSDP accumulate_steps = {shown(steps)} must be an integer from 1 to 2**16 = {MAX_MICROBATCHES}",
                "use accumulate_steps = 1 for no accumulation",
            )
        object.__setattr__(self, "rules", _rules_tuple(self.rules))

    @property
    def axes(self) -> tuple[str, ...]:
        """The FSDP axes as a tuple, even when one name was given."""
        return axes_tuple(self.axis, "FSDP(axis=...)")
