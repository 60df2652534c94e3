"""The FSDP dimension of each parameter: which dimension is split over the FSDP axes, and when it is gathered.

Used by ``resolve-shardings`` once the tensor-parallel spec of a parameter is
known. For each parameter:

1. an FSDP rule whose glob matches the path decides (the most specific rule
   wins, as for tensor-parallel rules): a dimension, or ``none`` for whole;
2. else a parameter with fewer than ``min_size`` elements (per layer, for
   stacked blocks) stays whole;
3. else the largest dimension that tensor parallelism leaves whole and that
   divides over the FSDP axes is split (the first such on a tie); when tensor
   parallelism splits every dimension the parameter stays whole, and when no
   dimension it leaves divides, TX240 names the shape.

Dimensions are counted in each layer's shape for stacked blocks (their dimension
0 is the layer), so rules read the same for stacked and unstacked models; the
``param`` node records the dimension of the stored shape. Under stage 3 the
parameter's spec splits that dimension too; a stacked layer is then gathered
inside the scan over layers (``fsdp_gather = layer``) unless gradients are
accumulated or a pipeline runs the blocks, when everything is gathered once per
step (``step``): each pipeline stage then gathers only its own blocks.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

from titanax.ir import FullyShardedNode, PlanIR
from titanax.passes.base import PassContext
from titanax.passes.globs import glob_matches, rule_specificity

__all__ = ["FSDPLayouts"]

Spec = tuple[str | tuple[str, ...] | None, ...]


@dataclass
class FSDPLayouts:
    """Decides the FSDP layout of each parameter for one IR (see the module docstring)."""

    node: FullyShardedNode
    group: int
    """Devices along the FSDP axes."""
    accumulate_steps: int
    pipelined: bool
    """Under pipeline parallelism each stage's blocks are gathered once per step, before the schedule runs."""
    matched: set[str] = field(default_factory=set)
    """Patterns of the FSDP rules that matched some parameter."""

    @classmethod
    def for_ir(cls, ir: PlanIR) -> FSDPLayouts | None:
        """The layouts of ``ir``'s FSDP dimension, or ``None`` without one."""
        node = ir.fully_sharded()
        if node is None:
            return None
        return cls(
            node=node,
            group=ir.group_size(node.axes),
            accumulate_steps=ir.accumulate_steps(),
            pipelined=ir.pipeline_parallel() is not None,
        )

    @property
    def entry(self) -> str | tuple[str, ...]:
        """The spec entry of a dimension split over the FSDP axes."""
        axes = self.node.axes
        return axes[0] if len(axes) == 1 else axes

    def _rule(self, path: str) -> tuple[str, int | None] | None:
        matching = [(pattern, dim) for pattern, dim in self.node.rules if glob_matches(pattern, path)]
        if not matching:
            return None
        self.matched.update(pattern for pattern, _ in matching)
        return max(matching, key=lambda rule: rule_specificity(rule[0]))

    def decide(
        self, path: str, shape: tuple[int, ...], spec: Spec, stacked: bool, ctx: PassContext
    ) -> tuple[Spec, int | None, str | None] | None:
        """``(spec, fsdp_dim, fsdp_gather)`` of one parameter, or ``None`` after reporting why it cannot be split."""
        lead = 1 if stacked else 0
        layer_shape = shape[lead:]
        node = self.node
        rule = self._rule(path)
        if rule is not None:
            pattern, dim = rule
            if dim is None:
                return spec, None, None
            problem = None
            if dim >= len(layer_shape):
                problem = f"has no dimension {dim} (its {'layer ' if stacked else ''}shape is {layer_shape})"
            elif spec[lead + dim] is not None:
                problem = f"has dimension {dim} split over tensor-parallel axis {spec[lead + dim]!r} already"
            elif layer_shape[dim] % self.group:
                problem = f"has dimension {dim} of {layer_shape[dim]}, which does not split over {self.group} devices"
            if problem is not None:
                ctx.error(
                    "TX241",
                    f"FSDP rule {pattern!r} splits dimension {dim} of parameter {path} {shape}, but the parameter "
                    + problem,
                    f'name another dimension in the rule, or write "{pattern}" = none to keep it whole',
                    node.location,
                )
                return None
            return self._split(spec, lead + dim, stacked)
        if math.prod(layer_shape) < node.min_size:
            return spec, None, None
        unsplit = [d for d in range(len(layer_shape)) if spec[lead + d] is None]
        if not unsplit:
            return spec, None, None  # tensor parallelism splits every dimension already: nothing left to shard
        free = [d for d in unsplit if layer_shape[d] % self.group == 0]
        if not free:
            ctx.error(
                "TX240",
                f"parameter {path} {shape} has no dimension that divides over the {self.group} FSDP devices "
                f"(axes {node.axes}) and that tensor parallelism leaves whole",
                f'keep it whole with an FSDP rule "{path}" = none, raise min_size above '
                f"{math.prod(layer_shape)}, or make a dimension a multiple of {self.group}",
                node.location,
            )
            return None
        best = max(free, key=lambda d: (layer_shape[d], -d))
        return self._split(spec, lead + best, stacked)

    def _split(self, spec: Spec, dim: int, stacked: bool) -> tuple[Spec, int, str | None]:
        if self.node.stage < 3:
            return spec, dim, None
        split = tuple(self.entry if i == dim else entry for i, entry in enumerate(spec))
        gather = "layer" if stacked and self.accumulate_steps == 1 and not self.pipelined else "step"
        return split, dim, gather

    def report_unmatched(self, paths: list[str], ctx: PassContext) -> None:
        """TX242 for each FSDP rule that matched no parameter."""
        for pattern, _ in self.node.rules:
            if pattern in self.matched:
                continue
            close = difflib.get_close_matches(pattern, paths, n=3, cutoff=0.3)
            ctx.error(
                "TX242",
                f"FSDP rule {pattern!r} matches no parameter",
                (f"closest parameter paths: {close}" if close else f"parameter paths look like {paths[:3]}")
                + "; * matches within one key, ** across keys",
                self.node.location,
            )
