"""``Plan`` and its parallel dimensions: what is split over which mesh axis."""

from __future__ import annotations

from dataclasses import dataclass, field

from titanax.errors import Location, PlanError
from titanax.frontend.activations import Activations
from titanax.frontend.axes import axes_tuple
from titanax.frontend.bounds import MAX_MICROBATCHES, shown
from titanax.frontend.fully_sharded import FSDP
from titanax.frontend.pipeline import PP
from titanax.frontend.precision import Precision
from titanax.frontend.tensor_parallel import TP

__all__ = ["DP", "Plan"]


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
    location: Location | None = field(default=None, compare=False, repr=False)
    """Where the dimension was declared, when it came from a ``.tx`` file."""

    def __post_init__(self) -> None:
        axes_tuple(self.axis, "DP(axis=...)")
        steps = self.accumulate_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_MICROBATCHES:
            raise PlanError.single(
                "TX203",
                f"data parallelism's accumulate_steps = {shown(steps)} must be an integer from 1 to 2**16 = "
                f"{MAX_MICROBATCHES}",
                "use accumulate_steps = 1 for no accumulation; more microbatches per step than 2**16 means a "
                "larger batch per microbatch",
            )

    @property
    def axes(self) -> tuple[str, ...]:
        """The DP axes as a tuple, even when one name was given."""
        return axes_tuple(self.axis, "DP(axis=...)")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The parallel plan: one entry per parallel dimension, each over its own mesh axes.

    Example::

        tx.Plan(data_parallel=tx.DP(axis="data"))
        tx.Plan(
            data_parallel=tx.DP(axis="data"),
            tensor_parallel=tx.TP(axis="model", rules={"*/attn/qkv/w": "column"}),
            pipeline_parallel=tx.PP(axis="pipe", microbatches=8),
            precision=tx.Precision(compute="bfloat16"),
        )
    """

    data_parallel: DP | None = None
    """Data parallelism, or ``None`` to replicate the batch on every device."""
    tensor_parallel: TP | None = None
    """Tensor parallelism, or ``None`` to keep every parameter whole on each device."""
    pipeline_parallel: PP | None = None
    """Pipeline parallelism, or ``None`` to run the whole model on every device."""
    precision: Precision | None = None
    """Mixed-precision policy, or ``None`` to compute in the parameters' own dtype."""
    activations: Activations | None = None
    """What the stacked blocks keep for their backward (a remat policy), or ``None`` to keep everything."""
    fully_sharded: FSDP | None = None
    """Fully sharded data parallelism (ZeRO 1, 2 or 3), or ``None`` to keep every replica whole."""

    def __post_init__(self) -> None:
        expected = (
            ("data_parallel", DP, 'tx.DP(axis="data")'),
            ("tensor_parallel", TP, 'tx.TP(axis="model", rules={...})'),
            ("pipeline_parallel", PP, 'tx.PP(axis="pipe", microbatches=8)'),
            ("precision", Precision, 'tx.Precision(compute="bfloat16")'),
            ("activations", Activations, 'tx.Activations(remat="dots")'),
            ("fully_sharded", FSDP, 'tx.FSDP(axis="fsdp", stage=3)'),
        )
        for name, cls, example in expected:
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise PlanError.single(
                    "TX204",
                    f"Plan({name}=...) must be a tx.{cls.__name__}, got {type(value).__name__}",
                    f"write tx.Plan({name}={example})",
                )
        dp, fsdp = self.data_parallel, self.fully_sharded
        if dp is not None and fsdp is not None and dp.accumulate_steps > 1 and fsdp.accumulate_steps > 1:
            raise PlanError.single(
                "TX204",
                f"both data parallelism (accumulate_steps = {dp.accumulate_steps}) and FSDP (accumulate_steps = "
                f"{fsdp.accumulate_steps}) set accumulate_steps",
                "give accumulate_steps once, on either",
            )
        pp, policy = self.pipeline_parallel, self.activations
        if pp is not None and policy is not None and pp.remat != "none" and pp.remat != policy.remat:
            raise PlanError.single(
                "TX204",
                f"the plan's activations say remat = {policy.remat} but its pipeline says remat = {pp.remat}",
                "give the policy once: in tx.Activations, or in tx.PP(remat=...)",
            )
