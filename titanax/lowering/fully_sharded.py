"""Fully sharded data parallelism in the step: gathers before use, reduce-scatters after, shard updates.

What each stage does inside the step, every collective emitted from its IR
node (``insert-fsdp-collectives``) on the dimension the parameter's ``param``
node names:

- stages 1 and 2: parameters are whole on every device. The gradients of the
  sharded parameters are reduce-scattered (``fsdp_scatter``), each device
  updates its own slice of the parameters with its shard of the optimizer
  state (:meth:`FSDPPlan.take_shards`), and the updated slices are gathered
  whole (``fsdp_gather``). Under stage 2 with accumulation each microbatch's
  gradients are scattered into a sharded accumulator.
- stage 3: parameters are stored as shards. :meth:`FSDPPlan.gather_for_step`
  gathers them through a ``custom_vjp`` whose backward reduce-scatters the
  cotangent (``fsdp_gather`` then ``fsdp_scatter``); :meth:`FSDPPlan.layer`
  does the same for one stacked layer inside the scan over layers
  (``fsdp_gather_layers`` / ``fsdp_scatter_layers``) and, with
  ``reshard_after_forward``, keeps no gathered layer for the backward: the
  pullback's residuals that are the gathered parameters are dropped and
  gathered again in the backward (``fsdp_regather_layers``). Under
  accumulation, and under pipeline parallelism (each stage then gathers only
  its own blocks, once for all its microbatches), everything is gathered once
  per step before the step's function runs, and the gradients are
  reduce-scattered once after it.

Gradients of the parameters FSDP keeps whole are averaged over the FSDP axes
by ``fsdp_whole_grads``. Every reduce-scatter takes the mean, as the
data-parallel all-reduce does, since each device's loss is the mean over its
own slice of the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
from jax import lax

from titanax.ir import Operand, PlanIR
from titanax.lowering.collectives import IRCollective, ensure_varying, lowering_collective
from titanax.lowering.sharding import path_text

__all__ = ["FSDPPlan"]


@dataclass(frozen=True, kw_only=True)
class FSDPPlan:
    """What the step needs to run FSDP, read from the IR's FSDP dimension, ``param`` nodes and collectives."""

    axes: tuple[str, ...]
    size: int
    """Devices along the FSDP axes."""
    stage: int
    accumulate_steps: int
    pipelined: bool
    """Under pipeline parallelism every shard is gathered once per step, before the schedule runs."""
    reshard_after_forward: bool
    dims: dict[str, int | None]
    """Each parameter path's FSDP dimension (of the stored shape), ``None`` for whole."""
    gather_kind: dict[str, str | None]
    """Each parameter path's ``fsdp_gather`` (``layer``, ``step`` or ``None``)."""
    scatter: IRCollective | None
    whole_grads: IRCollective | None
    gather: IRCollective | None
    gather_layers: IRCollective | None
    regather_layers: IRCollective | None
    scatter_layers: IRCollective | None

    @classmethod
    def from_ir(cls, ir: PlanIR) -> FSDPPlan | None:
        """The FSDP plan of ``ir``, or ``None`` without an FSDP dimension."""
        node = ir.fully_sharded()
        if node is None:
            return None
        params = list(ir.params())
        gather = lowering_collective(ir, Operand.FSDP_UPDATED_PARAMS) or lowering_collective(ir, Operand.FSDP_PARAMS)
        return cls(
            axes=node.axes,
            size=ir.group_size(node.axes),
            stage=node.stage,
            accumulate_steps=ir.accumulate_steps(),
            pipelined=ir.pipeline_parallel() is not None,
            reshard_after_forward=node.reshard_after_forward,
            dims={p.path: p.fsdp_dim for p in params},
            gather_kind={p.path: p.fsdp_gather for p in params},
            scatter=lowering_collective(ir, Operand.FSDP_GRADS),
            whole_grads=lowering_collective(ir, Operand.FSDP_WHOLE_GRADS),
            gather=gather,
            gather_layers=lowering_collective(ir, Operand.FSDP_LAYER_PARAMS),
            regather_layers=lowering_collective(ir, Operand.FSDP_LAYER_PARAMS_AGAIN),
            scatter_layers=lowering_collective(ir, Operand.FSDP_LAYER_GRADS),
        )

    # -- which arrays ------------------------------------------------------
    def dims_of(self, params: Any, *, kinds: tuple[str | None, ...] | None = None, layer: bool = False) -> Any:
        """A tree like ``params`` of FSDP dimensions (``None`` where whole, or where the parameter's
        gather kind is not in ``kinds``). With ``layer``, ``params`` is one layer of the stacked
        entry and dimensions count in the layer's shape."""

        def dim(path: tuple[Any, ...], _: Any) -> int | None:
            text = path_text(path)
            found = self.dims.get(text)
            if found is None or (kinds is not None and self.gather_kind.get(text) not in kinds):
                return None
            return found - 1 if layer else found

        return jax.tree_util.tree_map_with_path(dim, params)

    @property
    def grads_arrive_scattered(self) -> bool:
        """Whether the sharded parameters' gradients reach the update already scattered: by the
        gathers' backward (stage 3 without accumulation) or per microbatch (stage 2 with it)."""
        return self.gathers_in_backward or self.scatters_per_microbatch

    @property
    def scatters_per_microbatch(self) -> bool:
        """Stage 2 under accumulation: each microbatch's gradients go into a sharded accumulator."""
        return self.stage == 2 and self.accumulate_steps > 1

    @property
    def gathers_in_backward(self) -> bool:
        """Stage 3 without accumulation or pipeline: ``tx.value_and_grad`` and ``tx.pipeline.value_and_grad``
        gather the shards themselves, their backward reduce-scatters."""
        return self.stage == 3 and self.accumulate_steps == 1 and not self.pipelined

    # -- stages 1 and 2: update a slice, gather it ------------------------
    def take_shards(self, params: Any) -> Any:
        """This device's slice of each sharded parameter (stages 1 and 2 hold them whole); no communication."""
        index = lax.axis_index(self.axes if len(self.axes) > 1 else self.axes[0])

        def take(x: Any, dim: int | None) -> Any:
            if dim is None:
                return x
            width = x.shape[dim] // self.size
            return lax.dynamic_slice_in_dim(ensure_varying(x, self.axes), index * width, width, dim)

        leaves, treedef = jax.tree.flatten(params)
        dims = treedef.flatten_up_to(self.dims_of(params))
        return jax.tree.unflatten(treedef, [take(x, d) for x, d in zip(leaves, dims, strict=True)])

    # -- gradients ----------------------------------------------------------
    def scatter_gradients(self, grads: Any) -> Any:
        """Sharded parameters' gradients reduce-scattered (mean) into shards; whole ones untouched."""
        return self.scatter(grads, self.dims_of(grads)) if self.scatter is not None else grads

    def sync_gradients(self, grads: Any) -> Any:
        """Gradients as the update needs them: scattered (unless they arrive so) and whole ones averaged."""
        if not self.grads_arrive_scattered:
            grads = self.scatter_gradients(grads)
        if self.whole_grads is not None:
            leaves, treedef = jax.tree.flatten(grads)
            # The all-reduce takes the whole parameters' gradients only (any dimension marks one taken).
            taken = [0 if d is None else None for d in treedef.flatten_up_to(self.dims_of(grads))]
            grads = self.whole_grads(grads, jax.tree.unflatten(treedef, taken))
        return grads

    # -- stage 3: gather before use, scatter in the backward -----------------
    def gather_all(self, params: Any) -> Any:
        """Every sharded parameter gathered whole by ``fsdp_gather``, once per step: stage 3 under
        accumulation or a pipeline (before the forward), stages 1 and 2 (the updated slices, which
        the node's operand gathers back replicated)."""
        return self.gather(params, self.dims_of(params)) if self.gather is not None else params

    def gather_for_step(self, params: Any) -> Any:
        """The parameters gathered once per step (not the stacked layers), with a backward that
        reduce-scatters their gradients (stage 3 without accumulation)."""
        dims = self.dims_of(params, kinds=("step",))
        if self.gather is None:
            return params
        return _gathered(self.gather, self.scatter, params, dims)

    def layer(self, block: Callable[[Any, Any], Any], layer_params: Any) -> Callable[[Any, Any], Any]:
        """``block`` taking one stacked layer's shards: gathered before its forward, its gradients
        reduce-scattered in its backward, gathered again there under ``reshard_after_forward``."""
        dims = self.dims_of(layer_params, kinds=("layer",), layer=True)
        if self.gather_layers is None:
            return block
        regather = self.regather_layers if self.reshard_after_forward else None
        return _layer_call(block, dims, self.gather_layers, regather, self.scatter_layers)


def _gathered(gather: IRCollective, scatter: IRCollective, params: Any, dims: Any) -> Any:
    @jax.custom_vjp
    def run(shards: Any) -> Any:
        return gather(shards, dims)

    def forward(shards: Any) -> tuple[Any, None]:
        return gather(shards, dims), None

    def backward(_: None, cotangent: Any) -> tuple[Any]:
        return (scatter(cotangent, dims),)

    run.defvjp(forward, backward)
    return run(params)


def _layer_call(
    block: Callable[[Any, Any], Any],
    dims: Any,
    gather: IRCollective,
    regather: IRCollective | None,
    scatter: IRCollective,
) -> Callable[[Any, Any], Any]:
    # What the forward's trace learns about the pullback (its structure, and which of its leaves
    # are the gathered parameters), for the backward to rebuild it; static, set when traced.
    layout: dict[str, Any] = {}

    @jax.custom_vjp
    def run(shards: Any, x: Any) -> Any:
        return block(gather(shards, dims), x)

    def forward(shards: Any, x: Any) -> tuple[Any, Any]:
        whole = gather(shards, dims)
        y, pullback = jax.vjp(block, whole, x)
        leaves, treedef = jax.tree.flatten(pullback)
        gathered = jax.tree.leaves(whole)
        position = {id(leaf): k for k, leaf in enumerate(gathered)}
        # A residual that is a gathered parameter is gathered again in the backward, not kept.
        slots = tuple(position.get(id(leaf)) if regather is not None else None for leaf in leaves)
        layout.update(treedef=treedef, slots=slots)
        kept = [leaf for leaf, slot in zip(leaves, slots, strict=True) if slot is None]
        return y, (shards, kept)

    def backward(residuals: Any, cotangent: Any) -> tuple[Any, Any]:
        shards, kept = residuals
        again = jax.tree.leaves(regather(shards, dims)) if regather is not None else []
        remaining = iter(kept)
        leaves = [again[slot] if slot is not None else next(remaining) for slot in layout["slots"]]
        pullback = jax.tree.unflatten(layout["treedef"], leaves)
        d_whole, d_x = pullback(cotangent)
        return scatter(d_whole, dims), d_x

    run.defvjp(forward, backward)
    return run
