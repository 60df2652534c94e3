"""How the stacked blocks divide over the pipeline stages: evenly, or as the ``stage`` lines say.

Stage lines may give stages different numbers of layers (7 layers over 2 stages as
``blocks[0:4]`` and ``blocks[4:7]``). Sharded over the pipeline axis, every device
holds the same number of rows, so the state stores the blocks *padded*: each stage's
layers first in its shard, then rows of zeros up to the largest stage's count. Padded
rows are never run; their gradients stay zero, and they cost memory and gradient
bytes (which the IR's parameter shapes include).
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.frontend import parse_layer
from titanax.ir.graph import PlanIR

__all__ = ["StageSplit", "stage_split"]


@dataclass(frozen=True)
class StageSplit:
    """Layers per stage (device order) and the rows each device stores."""

    counts: tuple[int, ...]

    @property
    def stages(self) -> int:
        """Stages of the split."""
        return len(self.counts)

    @property
    def layers(self) -> int:
        """Layers of the model's stack."""
        return sum(self.counts)

    @property
    def rows(self) -> int:
        """Rows of the stack each device stores: the largest stage's layers."""
        return max(self.counts)

    @property
    def even(self) -> bool:
        """True when every stage runs as many layers (nothing is padded)."""
        return len(set(self.counts)) == 1

    @property
    def stored_layers(self) -> int:
        """Rows of the stored (padded) stack: ``stages * rows``."""
        return self.stages * self.rows


def stage_split(ir: PlanIR) -> StageSplit | None:
    """The split the stage lines give, or ``None`` when the plan has no pipeline or no stage ranges
    (the blocks then divide evenly). Ranges that do not tile the stack are left to ``check-stage-balance``."""
    dim = ir.pipeline_parallel()
    stages = ir.stages()
    if dim is None or not stages:
        return None
    counts = []
    for stage in stages:
        ranges = [parse_layer(t) for t in stage.layers]
        ranges = [r for r in ranges if r is not None and r.name == dim.blocks and r.start is not None]
        counts.append(sum(r.stop - r.start for r in ranges))  # type: ignore[operator]
    if not any(counts) or not all(counts):
        return None
    return StageSplit(tuple(counts))
