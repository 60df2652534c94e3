"""``Activations``: what the stacked blocks keep from their forward for the backward, in any plan."""

from __future__ import annotations

from dataclasses import dataclass, field

from titanax.errors import Location, PlanError
from titanax.frontend.pipeline import REMAT_POLICIES

__all__ = ["Activations"]


@dataclass(frozen=True, kw_only=True)
class Activations:
    """The activation policy of the model's stacked blocks (``tx.pipeline.value_and_grad``).

    Without pipeline parallelism each block runs under ``jax.checkpoint`` with the policy's
    checkpoint policy; under pipeline parallelism it is the stages' policy unless
    ``tx.PP(remat=...)`` gives one. Example::

        tx.Plan(data_parallel=tx.DP(axis="data"), activations=tx.Activations(remat="dots"))
    """

    remat: str = "none"
    """One of :data:`~titanax.frontend.pipeline.REMAT_POLICIES`: ``none`` keeps every residual,
    ``dots`` keeps matmul outputs and recomputes the rest, ``full`` keeps each block's input only."""
    location: Location | None = field(default=None, compare=False, repr=False)
    """Where the policy was declared, when it came from a ``.tx`` file."""

    def __post_init__(self) -> None:
        if self.remat not in REMAT_POLICIES:
            raise PlanError.single(
                "TX234",
                f"unknown remat policy {self.remat!r}",
                f"use one of {', '.join(REMAT_POLICIES)}",
            )
