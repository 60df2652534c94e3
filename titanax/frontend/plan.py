"""``Plan`` and its parallel dimensions: what is split over which mesh axis."""

from __future__ import annotations

from dataclasses import dataclass

from titanax.errors import PlanError

__all__ = ["DP", "Plan"]


def _axes_tuple(value: object, what: str) -> tuple[str, ...]:
    axes = (value,) if isinstance(value, str) else value
    if not isinstance(axes, (tuple, list)) or not axes or not all(isinstance(a, str) for a in axes):
        raise PlanError.single(
            "TX204",
            f"{what} must be an axis name or a tuple of axis names, got {value!r}",
            'write axis="data" or axis=("data", "replica")',
        )
    return tuple(axes)


@dataclass(frozen=True, kw_only=True)
class DP:
    """Data parallelism: shard each batch over ``axis`` and average gradients across it.

    Example::

        tx.DP(axis="data")                      # one gradient all-reduce per step
        tx.DP(axis="data", accumulate_steps=4)  # 4 microbatches per device, still one sync
    """

    axis: str | tuple[str, ...]
    """Mesh axis (or axes, outermost first) the batch is split over."""
    accumulate_steps: int = 1
    """Microbatches per device per step; gradients are summed locally and synced once."""

    def __post_init__(self) -> None:
        _axes_tuple(self.axis, "DP(axis=...)")
        steps = self.accumulate_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise PlanError.single(
                "TX203",
                f"DP(accumulate_steps={steps!r}) must be a positive integer",
                "use accumulate_steps=1 for no accumulation",
            )

    @property
    def axes(self) -> tuple[str, ...]:
        """The DP axes as a tuple, even when one name was given."""
        return _axes_tuple(self.axis, "DP(axis=...)")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The parallel plan: one entry per parallel dimension, each over named mesh axes.

    Example::

        tx.Plan(data_parallel=tx.DP(axis="data"))
    """

    data_parallel: DP | None = None
    """Data parallelism, or ``None`` to replicate the batch on every device."""

    def __post_init__(self) -> None:
        if self.data_parallel is not None and not isinstance(self.data_parallel, DP):
            raise PlanError.single(
                "TX204",
                f"Plan(data_parallel=...) must be a tx.DP, got {type(self.data_parallel).__name__}",
                'write tx.Plan(data_parallel=tx.DP(axis="data"))',
            )
