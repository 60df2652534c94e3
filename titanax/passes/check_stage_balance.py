"""``check-stage-balance``: the stages of a pipeline cost about the same, and fit the lowering.

Runs once parameter shapes are known (after ``resolve-shardings``), when the plan
names each stage's layers. A stage's cost is the number of parameters it runs:
its range of the stacked blocks (layers x parameters per layer) plus every
top-level entry it names (``embed``, ``head``). The costliest stage over the
cheapest may not exceed the pipeline's ``balance_tolerance`` (TX228): a pipeline
runs at the pace of its slowest stage. The lowering also needs each stage to run
consecutive blocks, in order, covering the whole stack (TX227); stages may run
different numbers of layers (the state then stores the blocks padded), except
under an interleaved schedule, whose chunks split evenly. Every named entry must
exist (TX229).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from titanax.frontend import parse_layer
from titanax.ir import PipelineParallelNode, PlanIR
from titanax.ir.stage_split import stage_split
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["CheckStageBalance"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class CheckStageBalance(Pass):
    """Reject unbalanced stages (TX228), a blocks split the lowering cannot run (TX227: not in order,
    not consecutive, not covering the stack), and stages naming parameter entries that do not exist (TX229)."""

    name = "check-stage-balance"
    validates = True
    requires = ("resolve-shardings",)

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Report stage costs out of balance, and stage layouts the lowering cannot run."""
        dim = next((node for _, node in ir.items(PipelineParallelNode)), None)
        stages = ir.stages()
        params = ir.params()
        if dim is None or not params or not any(stage.layers for stage in stages):
            return
        if any(d.code == "TX226" for d in ctx.diagnostics):
            return  # the blocks could not be laid out, so their cost is unknown
        blocks = [p for p in params if p.path == dim.blocks or p.path.startswith(dim.blocks + "/")]
        split = stage_split(ir)
        # Uneven stages are stored padded: the model's layer count is the stage lines' total.
        layers = split.layers if split is not None and not split.even else (blocks[0].shape[0] if blocks else 0)
        per_layer = sum(math.prod(p.shape[1:]) for p in blocks)
        # Every top-level entry's parameter count, in one pass over the parameters, so that a
        # stage naming an entry costs a lookup rather than another pass over every parameter.
        entry_cost: dict[str, int] = {}
        for p in params:
            entry = p.path.split("/", 1)[0]
            entry_cost[entry] = entry_cost.get(entry, 0) + math.prod(p.shape)
        entries = sorted(entry_cost)
        costs = []
        next_start = 0
        for stage in stages:
            cost = 0
            for text in stage.layers:
                ref = parse_layer(text)
                if ref is None:
                    continue  # check-pipeline reported it
                if ref.name == dim.blocks and ref.start is not None:
                    cost += (ref.stop - ref.start) * per_layer
                elif ref.name not in entry_cost:
                    ctx.error(
                        "TX229",
                        f"stage {stage.index} names '{ref.name}', which is not a parameter entry",
                        _entry_hint(ref.name, entries),
                        stage.location,
                    )
                else:
                    cost += entry_cost[ref.name]
            costs.append(cost)
            next_start = self._check_split(stage, dim, layers, len(stages), next_start, ctx)
        if costs and min(costs) > 0 and max(costs) / min(costs) > dim.balance_tolerance:
            listing = ", ".join(f"stage {i}: {c:,}" for i, c in enumerate(costs))
            heavy, light = costs.index(max(costs)), costs.index(min(costs))
            ctx.error(
                "TX228",
                f"pipeline stages are unbalanced: parameters per stage {listing} (max/min "
                f"{max(costs) / min(costs):.2f} > balance_tolerance {dim.balance_tolerance})",
                f"move work from stage {heavy} to stage {light} (e.g. its non-block entries), use more layers per "
                "stage, or raise balance_tolerance",
                dim.location,
            )

    @staticmethod
    def _check_split(stage, dim, layers: int, count: int, start: int, ctx: PassContext) -> int:
        """Check that ``stage`` runs consecutive blocks from ``start`` on; return where the next stage starts.

        Stages may run different numbers of layers (they are stored padded, see ``ir/stage_split.py``),
        but under an interleaved schedule the chunks must split evenly.
        """
        ranges = [parse_layer(t) for t in stage.layers]
        ranges = sorted(
            (r for r in ranges if r is not None and r.name == dim.blocks and r.start is not None), key=lambda r: r.start
        )
        covered = sum(r.stop - r.start for r in ranges)
        contiguous = all(a.stop == b.start for a, b in zip(ranges, ranges[1:], strict=False))
        got = (ranges[0].start, ranges[-1].stop) if ranges else None
        per_stage = layers // count if count else 0
        even_only = dim.virtual_stages > 1
        want_stop = start + per_stage if even_only else None
        wrong = not ranges or got[0] != start or not contiguous or got[1] > layers  # type: ignore[index]
        wrong = wrong or (even_only and (got[1] != want_stop or covered != per_stage))  # type: ignore[index]
        wrong = wrong or (stage.index == count - 1 and got is not None and got[1] != layers)
        if layers and wrong:
            expect = (
                f"{dim.blocks}[{start}:{start + per_stage}] (interleaved chunks split the blocks evenly)"
                if even_only
                else (
                    f"{dim.blocks}[{start}:{layers}]"
                    if stage.index == count - 1
                    else f"consecutive blocks from {dim.blocks}[{start}] on"
                )
            )
            ctx.error(
                "TX227",
                f"stage {stage.index} runs {[str(t) for t in stage.layers]}, but the stages must run the {layers} "
                f"stacked blocks in order, each stage consecutive blocks: stage {stage.index} must run {expect}",
                "give each stage a range that starts where the previous one stopped, the last ending at "
                f"{dim.blocks}[{layers}]",
                stage.location,
            )
            return start + max(covered, 1)
        return got[1] if got else start  # type: ignore[index]


def _entry_hint(name: str, entries: list[str]) -> str:
    close = difflib.get_close_matches(name, entries, n=1)
    return (f"did you mean '{close[0]}'? " if close else "") + f"the parameter entries are {entries}"
