"""``insert-fsdp-collectives``: declare the gathers and reduce-scatters fully sharded data parallelism needs.

Which ones, and how often, follows from the FSDP stage and from each ``param``
node's ``fsdp_dim`` and ``fsdp_gather`` (set by ``resolve-shardings``), so the
runtime runs this pass once it knows the parameters. All are over the FSDP axes:

- ``fsdp_scatter``: reduce-scatter (mean) of the sharded parameters' gradients
  into shards, once per step; under stage 2 with ``accumulate_steps`` once per
  microbatch, into a sharded accumulator (cadence ``microbatch``);
- ``fsdp_whole_grads``: all-reduce (mean) of the gradients of the parameters
  FSDP keeps whole, once per step;
- ``fsdp_gather``: all-gather of sharded parameters, once per step: under
  stages 1 and 2 the updated shards after the optimizer; under stage 3 the
  parameters gathered before the forward (all of them under accumulation,
  else those outside the stacked layers);
- stage 3, stacked layers without accumulation: ``fsdp_gather_layers`` before
  each layer's forward, ``fsdp_regather_layers`` before its backward (with
  ``reshard_after_forward``), and ``fsdp_scatter_layers`` of its gradients,
  each once per layer (cadence ``layer``; ``executions`` = the layer count).

No all-reduce of whole gradients over the FSDP axes remains except for the
parameters kept whole. Data parallelism beside FSDP (HSDP) keeps its own
``grad_sync`` over its axes, applied to the shards.
"""

from __future__ import annotations

from dataclasses import dataclass

from titanax.ir import Cadence, CollectiveNode, FullyShardedNode, Operand, PlanIR
from titanax.ir.build import add_required_collective
from titanax.passes.base import Pass, PassContext, register_pass

__all__ = ["InsertFSDPCollectives"]


@register_pass
@dataclass(frozen=True, kw_only=True)
class InsertFSDPCollectives(Pass):
    """Add the FSDP gathers and reduce-scatters the resolved parameter layouts need."""

    name = "insert-fsdp-collectives"
    requires = ("infer-mesh-shape", "resolve-shardings")

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Add FSDP's collective nodes (nothing without FSDP or without parameters)."""
        found = next(ir.items(FullyShardedNode), None)
        params = list(ir.params())
        if found is None or not params:
            return
        owner, fsdp = found
        sharded = [p for p in params if p.fsdp_dim is not None]
        layer_params = [p for p in sharded if p.fsdp_gather == "layer"]
        layers = max((p.shape[0] for p in layer_params), default=0)
        accumulate = ir.accumulate_steps()
        wanted: list[tuple[str, str, str, Operand, Cadence, int]] = []
        if sharded and len(layer_params) < len(sharded):
            per_microbatch = fsdp.stage == 2 and accumulate > 1
            cadence, runs = (Cadence.MICROBATCH, accumulate) if per_microbatch else (Cadence.STEP, 1)
            wanted.append(("fsdp_scatter", "reduce-scatter", "mean", Operand.FSDP_GRADS, cadence, runs))
        if len(sharded) < len(params):
            wanted.append(("fsdp_whole_grads", "all-reduce", "mean", Operand.FSDP_WHOLE_GRADS, Cadence.STEP, 1))
        if sharded and fsdp.stage < 3:
            wanted.append(("fsdp_gather", "all-gather", None, Operand.FSDP_UPDATED_PARAMS, Cadence.STEP, 1))
        elif any(p.fsdp_gather == "step" for p in sharded):
            wanted.append(("fsdp_gather", "all-gather", None, Operand.FSDP_PARAMS, Cadence.STEP, 1))
        if layer_params:
            wanted.append(("fsdp_gather_layers", "all-gather", None, Operand.FSDP_LAYER_PARAMS, Cadence.LAYER, layers))
            if fsdp.reshard_after_forward:
                again = Operand.FSDP_LAYER_PARAMS_AGAIN
                wanted.append(("fsdp_regather_layers", "all-gather", None, again, Cadence.LAYER, layers))
            grads = Operand.FSDP_LAYER_GRADS
            wanted.append(("fsdp_scatter_layers", "reduce-scatter", "mean", grads, Cadence.LAYER, layers))
        for name, op, reduction, operand, cadence, runs in wanted:
            node = CollectiveNode(
                name=name,
                op=op,
                reduction=reduction,
                axes=fsdp.axes,
                operand=operand,
                origin="lowering",
                group_size=ir.group_size(fsdp.axes),
                cadence=cadence,
                executions=runs,
            )
            add_required_collective(ir, owner, node)
