"""Run a pipeline schedule inside one ``shard_map`` program.

Every device is one pipeline device (its index on the pipeline axis), holding one
stage, or ``v`` chunks of the blocks under an interleaved schedule. A
``lax.scan`` runs the schedule's ticks; in each tick a device looks up its ops in
lookup tables (:mod:`~titanax.lowering.pipeline_tables`) and runs one
``lax.switch`` per op slot: the forward slot, the backward slot and, when the
backward is split (ZB-H1), the weight slot. Each switch's branches are idle
(which does no work and passes the gradient accumulators through untouched) or
an op of one chunk and stage kind (first, middle or last).

A forward runs its stage under ``jax.vjp`` with the plan's remat policy and
stashes the pullback's residuals in fixed-size rows
(:mod:`~titanax.lowering.residuals`); its backward rebuilds the pullback from the
stash, so no forward runs twice unless ``remat`` asks for it. A split backward
runs the input-gradient half of the backward's jaxpr and hands the weight half
what it needs through a second stash (:mod:`~titanax.lowering.split_backward`).

Both ``ppermute``s (activations forward, cotangents backward) run every tick,
outside the switches (a permute inside a per-device branch deadlocks); devices
with nothing to send send zeros, and receivers file what arrives into the slot
the tables say, or into a spare slot when nothing was meant for them.

Parameters the plan stacks as blocks are split over the pipeline axis (stored
padded when stages differ in size, in storage order when interleaved); every
other parameter is held whole by every device, and its gradients (nonzero only
on the first or last stage) are summed over the pipeline axis once. The loss,
computed on the last stage, is summed over the axis the same way. These four
collectives are the IR nodes the :class:`~titanax.lowering.step_plan.PipelinePlan` holds (found by
their operand kind), emitted by the one emitter with the node's own pairs and axes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from titanax.errors import PlanError
from titanax.ir import Schedule
from titanax.lowering.collectives import ensure_varying, varying_axes
from titanax.lowering.context import active_recorder, outside_step_context
from titanax.lowering.pipeline_tables import PipelineTables
from titanax.lowering.residuals import ResidualLayout, StashShape, apply_remat, trace_layout
from titanax.lowering.split_backward import SplitBackward, split_backward
from titanax.lowering.step_plan import PipelinePlan

__all__ = ["PipelineModelFns", "PipelineProgram", "sequential_loss", "stage_function", "stage_primals"]


def sequential_loss(
    first: Callable, block: Callable, last: Callable, blocks: str, params: dict[str, Any], batch: Any
) -> Any:
    """The model's loss without pipelining: first, every stacked block in order (a scan), last."""
    others = {name: value for name, value in params.items() if name != blocks}
    x = lax.scan(lambda h, layer: (block(layer, h), None), first(others, batch), params[blocks])[0]
    return last(others, x, batch)


def _zeros_like_aval(aval: Any, extra: frozenset[str] = frozenset()) -> jax.Array:
    axes = tuple(sorted(varying_axes(aval) | extra))
    zeros = jnp.zeros(aval.shape, aval.dtype)
    return lax.pcast(zeros, axes, to="varying") if axes else zeros


def stage_function(kind: str, first: Callable, run_blocks: Callable, last: Callable, mb: Any) -> Callable:
    """The function a stage of ``kind`` differentiates, over its primals (see :func:`stage_primals`)."""
    if kind == "first":
        return lambda o, b: run_blocks(b, first(o, mb))
    if kind == "middle":
        return run_blocks
    return lambda o, b, x: last(o, run_blocks(b, x), mb)


def stage_primals(kind: str, others: Any, blocks: Any, x: Any) -> tuple[Any, ...]:
    """What a stage of ``kind`` differentiates with respect to: the first stage has no input
    activation, a middle stage uses no whole (non-block) parameter."""
    if kind == "first":
        return (others, blocks)
    if kind == "middle":
        return (blocks, x)
    return (others, blocks, x)


@dataclass(frozen=True)
class PipelineProgram:
    """The static part of a pipelined step: the plan's axis, table, blocks entry and collectives."""

    plan: PipelinePlan

    @property
    def axis(self) -> str:
        """The pipeline axis."""
        return self.plan.axis

    @property
    def schedule(self) -> Schedule:
        """The schedule table the program runs."""
        return self.plan.schedule

    @property
    def blocks(self) -> str:
        """The parameter entry holding the stacked blocks."""
        return self.plan.blocks

    @property
    def balance_tolerance(self) -> float:
        """Largest allowed ratio of the costliest stage's forward FLOPs to the cheapest's."""
        return self.plan.balance_tolerance

    def _check_flops_balance(self, first, block, last, others, blocks, mb0) -> None:
        """Compare the forward FLOPs of the first, middle and last stages (XLA's cost analysis).

        ``first``, one block and ``last`` are lowered on their own, on this device's shard
        shapes, outside the step (tensor-parallel layers then lower as plain math on their
        shards, which keeps the proportions). Blocks are priced one layer at a time because
        cost analysis counts a loop's body once, not once per iteration.
        """

        def abstract(tree: Any) -> Any:
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)

        def flops(fn: Callable, *args: Any) -> float:
            cost = jax.jit(fn).lower(*abstract(args)).cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            return float((cost or {}).get("flops", 0.0))

        p = self.schedule.stages
        layer = jax.tree.map(lambda x: x[0], blocks)
        rows = jax.tree.leaves(blocks)[0].shape[0]
        counts = self.plan.stage_layers or (rows,) * p  # uneven stages run fewer than their stored rows
        with outside_step_context():
            # Outside the step, layers do no sequence splitting either: take the activation
            # shape from this same trace, not from the step's (possibly sequence-split) one.
            x = jax.eval_shape(first, *abstract((others, mb0)))
            one_block = flops(block, layer, x)
            costs = [count * one_block for count in counts]
            costs[0] += flops(first, others, mb0)
            costs[-1] += flops(last, others, x, mb0)
        recorder = active_recorder()
        if recorder is not None:
            recorder.stage_flops = tuple(costs)
        if min(costs) > 0 and max(costs) / min(costs) > self.balance_tolerance:
            listing = ", ".join(f"stage {i}: {c:,.0f}" for i, c in enumerate(costs))
            heavy = "first" if costs[0] == max(costs) else "last" if costs[-1] == max(costs) else "middle"
            raise PlanError.single(
                "TX228",
                f"pipeline stages are unbalanced: forward FLOPs per microbatch {listing} (XLA cost analysis; "
                f"max/min {max(costs) / min(costs):.2f} > balance_tolerance {self.balance_tolerance})",
                f"the {heavy} stage does the most work: move work out of the model's "
                f"{'first' if heavy == 'first' else 'last'} function into the blocks, use more blocks per stage, "
                "or raise balance_tolerance",
            )

    def _single_stage(self, first, block, last, params, batch, loss_scale):
        # One stage: no neighbours to talk to, so the whole model runs on the whole batch;
        # the two all-reduces over the (size-1) axis stay, as the IR declares them.
        def first_varying(others: Any, mb: Any) -> Any:
            # The blocks are split over the (size-1) pipeline axis, so the scan over them carries a
            # value varying over it: the carry must start that way too.
            return ensure_varying(first(others, mb), (self.axis,))

        remat_block = apply_remat(block, self.plan.remat)

        def loss_fn(params: dict[str, Any]) -> Any:
            loss = sequential_loss(first_varying, remat_block, last, self.blocks, params, batch)
            return (loss * loss_scale.astype(loss.dtype) if loss_scale is not None else loss), loss

        (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        others = self.plan.replicated_gradients({n: g for n, g in grads.items() if n != self.blocks})
        return self.plan.loss(loss), {**others, self.blocks: grads[self.blocks]}

    def value_and_grad(
        self,
        first: Callable[[Any, Any], Any],
        block: Callable[[Any, Any], Any],
        last: Callable[[Any, Any, Any], Any],
        params: dict[str, Any],
        batch: Any,
        loss_scale: Any = None,
    ) -> tuple[jax.Array, dict[str, Any]]:
        """Mean loss over the microbatches and its gradients, by running the schedule.

        With a float16 ``loss_scale`` the backward starts from the scaled loss, so the
        gradients come back multiplied by it (the step unscales them); the loss does not.
        """
        if self.schedule.stages == 1:
            return self._single_stage(first, block, last, params, batch, loss_scale)
        run = _ScheduleRun(self, PipelineModelFns(first, block, last), params, batch, loss_scale)
        mb0 = run.microbatch(0)
        self._check_flops_balance(first, block, last, run.others, run.blocks, mb0)
        return run.execute()


@dataclass(frozen=True)
class PipelineModelFns:
    """The model's three functions: ``first(o, mb)``, ``block(layer, x)``, ``last(o, x, mb)``."""

    first: Callable[[Any, Any], Any]
    block: Callable[[Any, Any], Any]
    last: Callable[[Any, Any, Any], Any]


_COTANGENT_NAMES = {"first": ("o", "b"), "middle": ("b", "x"), "last": ("o", "b", "x")}
"""What each entry of a stage's pullback result is the gradient of (see :func:`stage_primals`)."""

Branch = tuple[int, str, int]
"""A branch of the loop: (chunk, stage kind, layers), see :class:`~titanax.lowering.pipeline_tables.PipelineTables`."""


class _ScheduleRun:
    """One trace of the pipelined step: the values every branch shares, the branches, the loop.

    A forward runs its stage under ``jax.vjp`` and stashes the pullback's residuals
    (:mod:`titanax.lowering.residuals`); its backward rebuilds the pullback from the stash. With a
    split backward (ZB-H1) the backward runs only the input-gradient half and stashes what the
    weight half needs (:mod:`titanax.lowering.split_backward`); the ``W`` op runs that half later.
    """

    def __init__(
        self, program: PipelineProgram, model: PipelineModelFns, params: dict[str, Any], batch: Any, loss_scale: Any
    ):
        schedule = program.schedule
        self.program, self.model = program, model
        self.p, self.m, self.v = schedule.stages, schedule.microbatches, schedule.virtual_stages
        self.split = schedule.split_backward
        self.tables = PipelineTables.build(schedule, program.plan.stage_layers)
        self.seed = 1.0 / self.m if loss_scale is None else loss_scale / self.m
        pipe = frozenset({program.axis})
        self.blocks = params[program.blocks]
        self.others = jax.tree.map(
            lambda x: ensure_varying(x, pipe), {n: val for n, val in params.items() if n != program.blocks}
        )
        m = self.m
        # Varying over the pipeline axis from the start, as the per-device slices in the loop are:
        # the residual layout traced before the loop must match the loop's.
        self.micro = jax.tree.map(lambda x: ensure_varying(x.reshape(m, x.shape[0] // m, *x.shape[1:]), pipe), batch)
        self.per_chunk = jax.tree.leaves(self.blocks)[0].shape[0] // self.v
        mb0 = self.microbatch(0)
        first_blocks = self.chunk_of(self.blocks, 0)
        act_aval = jax.eval_shape(
            lambda o, b, mb: self.run_blocks(b, model.first(o, mb)), self.others, first_blocks, mb0
        )
        mid_aval = jax.eval_shape(self.run_blocks, first_blocks, _zeros_like_aval(act_aval))
        self.act_axes = varying_axes(act_aval) | varying_axes(mid_aval) | pipe
        self.act_zero = _zeros_like_aval(act_aval, self.act_axes)
        loss_aval = jax.eval_shape(
            lambda o, b, x, mb: model.last(o, self.run_blocks(b, x), mb), self.others, first_blocks, self.act_zero, mb0
        )
        self.loss_axes = varying_axes(loss_aval) | pipe
        self.zero_loss = ensure_varying(jnp.zeros((), jnp.float32), self.loss_axes)
        self.layouts: dict[Branch, ResidualLayout] = {}
        self.handoffs: dict[Branch, ResidualLayout] = {}
        self.loss_types: dict[Branch, tuple[Any, frozenset[str]]] = {}
        for key in self.tables.forward_branches:
            # Traced once outside the loop (nothing of this trace stays in the program): the
            # stashes are sized from it before the loop starts.
            jax.eval_shape(partial(self._probe, key), self.others, self.blocks, self.act_zero, mb0)

    # -- pieces every branch uses ---------------------------------------------------------
    def chunk_of(self, b: Any, c: int, layers: int = 0) -> Any:
        """Chunk ``c`` of this device's blocks; only its first ``layers`` rows when given (uneven
        stages store padding rows after a stage's own layers)."""
        if self.v == 1 and not layers:
            return b
        lo = c * self.per_chunk
        hi = lo + (layers or self.per_chunk)
        return jax.tree.map(lambda w: w[lo:hi], b)

    def run_blocks(self, b: Any, x: Any) -> Any:
        """The blocks of one chunk, in order."""
        layers = jax.tree.leaves(b)[0].shape[0]
        if layers == 1 or self.split:
            # Straight-line layers: with one layer, XLA would inline a one-trip loop and drop the
            # dead work, and the trace's dead-code pass sees the same without it; with a split
            # backward, each layer's weight gradient must be an equation of its own.
            for k in range(layers):
                x = self.model.block(jax.tree.map(lambda w, k=k: w[k], b), x)
            return x
        return lax.scan(lambda h, layer: (self.model.block(layer, h), None), x, b)[0]

    def microbatch(self, i: Any) -> Any:
        """Microbatch ``i`` (traced index)."""
        return jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, keepdims=False), self.micro)

    @staticmethod
    def references(o: Any, b: Any, mb: Any) -> list[Any]:
        """Values a residual may be, which are taken again rather than stashed."""
        return [*jax.tree.leaves(o), *jax.tree.leaves(b), *jax.tree.leaves(mb)]

    def stage_vjp(self, key: Branch, o: Any, b: Any, x: Any, mb: Any) -> tuple[Any, Any, Any]:
        """Run branch ``key``'s stage forward under ``jax.vjp``: (output, pullback, chunk blocks)."""
        c, kind, layers = key
        b_c = self.chunk_of(b, c, layers)
        fn = apply_remat(
            stage_function(kind, self.model.first, self.run_blocks, self.model.last, mb), self.program.plan.remat
        )
        out, pullback = jax.vjp(fn, *stage_primals(kind, o, b_c, x))
        return out, pullback, b_c

    def seed_cotangent(self, key: Branch) -> Any:
        """d(mean loss)/d(this microbatch's loss), typed as the loss."""
        dtype, axes = self.loss_types[key]
        return ensure_varying(jnp.asarray(self.seed, dtype), axes)

    def split_of(self, key: Branch, leaves: list[Any], g: Any) -> SplitBackward:
        """The backward of branch ``key``'s stage, split into its input and weight halves."""
        kind = key[1]
        treedef = self.layouts[key].treedef
        count = len(leaves)

        def backward(*args: Any) -> list[Any]:
            return jax.tree.leaves(jax.tree.unflatten(treedef, list(args[:count]))(*args[count:]))

        n_out = len(jax.tree.leaves(jax.eval_shape(backward, *leaves, g)))
        inputs = [n_out - 1] if "x" in _COTANGENT_NAMES[kind] else []
        return split_backward(backward, leaves, [g], inputs)

    def _probe(self, key: Branch, o: Any, b: Any, x: Any, mb: Any) -> None:
        out, pullback, b_c = self.stage_vjp(key, o, b, x, mb)
        layout, leaves = trace_layout(pullback, self.references(o, b_c, mb))
        self.layouts[key] = layout
        self.loss_types[key] = (out.dtype, varying_axes(out))
        if self.split:
            g = self.seed_cotangent(key) if key[1] == "last" else self.act_zero
            halves = self.split_of(key, leaves, g)
            handed = halves.input_part(*leaves, g)[halves.input_outputs :]
            self.handoffs[key] = trace_layout(list(handed), [])[0]

    def accumulate(self, key: Branch, grads_o: Any, grads_b: Any, d_o: Any, d_b: Any) -> tuple[Any, Any]:
        """Add one microbatch's gradients into the step's (the rows of the blocks branch ``key`` runs)."""
        c, _, layers = key
        if d_o is not None:
            grads_o = jax.tree.map(jnp.add, grads_o, d_o)
        if self.v == 1 and not layers:
            return grads_o, jax.tree.map(jnp.add, grads_b, d_b)
        lo = c * self.per_chunk
        hi = lo + (layers or self.per_chunk)
        grads_b = jax.tree.map(
            lambda acc, d: lax.dynamic_update_slice_in_dim(acc, lax.slice_in_dim(acc, lo, hi) + d, lo, 0), grads_b, d_b
        )
        return grads_o, grads_b

    def unflatten_weights(self, kind: str, b_c: Any, flat: list[Any]) -> tuple[Any, Any]:
        """Weight gradients (whole parameters, chunk blocks) from the flat list a backward half returns."""
        n_o = len(jax.tree.leaves(self.others)) if "o" in _COTANGENT_NAMES[kind] else 0
        d_o = jax.tree.unflatten(jax.tree.structure(self.others), flat[:n_o]) if n_o else None
        d_b = jax.tree.unflatten(jax.tree.structure(b_c), flat[n_o:])
        return d_o, d_b

    # -- branches -------------------------------------------------------------------------
    def forward_branch(self, key: Branch) -> Callable:
        """Run branch ``key``'s forward, returning what to send, its residual rows and its loss."""
        kind = key[1]

        def run(o, b, x, mb, rows):
            out, pullback, b_c = self.stage_vjp(key, o, b, x, mb)
            layout, leaves = trace_layout(pullback, self.references(o, b_c, mb))
            if layout.sources != self.layouts[key].sources:
                raise RuntimeError("a stage's residuals changed between two traces")  # pragma: no cover
            rows = layout.pack(leaves, rows)
            if kind == "last":
                return self.act_zero, rows, ensure_varying(out.astype(jnp.float32), self.loss_axes)
            return ensure_varying(out, self.act_axes), rows, self.zero_loss

        return run

    def forward_idle(self, o, b, x, mb, rows):
        """Nothing to run: send zeros, leave the residual row as it was."""
        return self.act_zero, rows, self.zero_loss

    def backward_branch(self, key: Branch) -> Callable:
        """Run branch ``key``'s whole backward: the cotangent to send, and the gradients added in."""
        c, kind, layers = key

        def run(o, b, g, mb, rows, grads_o, grads_b):
            b_c = self.chunk_of(b, c, layers)
            pullback = self.layouts[key].rebuild(rows, self.references(o, b_c, mb))
            g = self.seed_cotangent(key) if kind == "last" else g
            cotangents = dict(zip(_COTANGENT_NAMES[kind], pullback(g), strict=True))
            grads_o, grads_b = self.accumulate(key, grads_o, grads_b, cotangents.get("o"), cotangents["b"])
            d_x = ensure_varying(cotangents["x"], self.act_axes) if "x" in cotangents else self.act_zero
            return d_x, grads_o, grads_b

        return run

    def backward_idle(self, o, b, g, mb, rows, grads_o, grads_b):
        """Nothing to run: send zeros, gradients unchanged."""
        return self.act_zero, grads_o, grads_b

    def input_branch(self, key: Branch) -> Callable:
        """Run the input-gradient half of branch ``key``'s backward; stash what its ``W`` needs."""
        c, kind, layers = key

        def run(o, b, g, mb, rows, wrows):
            b_c = self.chunk_of(b, c, layers)
            leaves = self.layouts[key].leaves(rows, self.references(o, b_c, mb))
            g = self.seed_cotangent(key) if kind == "last" else g
            halves = self.split_of(key, leaves, g)
            results = halves.input_part(*leaves, g)
            wrows = self.handoffs[key].pack(results[halves.input_outputs :], wrows)
            d_x = ensure_varying(results[0], self.act_axes) if halves.input_outputs else self.act_zero
            return d_x, wrows

        return run

    def input_idle(self, o, b, g, mb, rows, wrows):
        """Nothing to run: send zeros, leave the handoff row as it was."""
        return self.act_zero, wrows

    def weight_branch(self, key: Branch) -> Callable:
        """Run the weight-gradient half of branch ``key``'s backward and add the gradients in."""
        c, kind, layers = key

        def run(o, b, mb, rows, wrows, grads_o, grads_b):
            b_c = self.chunk_of(b, c, layers)
            leaves = self.layouts[key].leaves(rows, self.references(o, b_c, mb))
            handed = self.handoffs[key].leaves(wrows, [])
            g = self.seed_cotangent(key) if kind == "last" else self.act_zero
            halves = self.split_of(key, leaves, g)
            d_o, d_b = self.unflatten_weights(kind, b_c, halves.weight_part(*leaves, *handed))
            return self.accumulate(key, grads_o, grads_b, d_o, d_b)

        return run

    @staticmethod
    def weight_idle(o, b, mb, rows, wrows, grads_o, grads_b):
        """Nothing to run: gradients unchanged."""
        return grads_o, grads_b

    # -- the loop -------------------------------------------------------------------------
    def execute(self) -> tuple[jax.Array, dict[str, Any]]:
        """Run every tick of the schedule; the mean loss and the gradients, reduced as the IR says."""
        plan, tables, m = self.program.plan, self.tables, self.m
        o, b = self.others, self.blocks
        stage = lax.axis_index(self.program.axis)
        forward_fns = [self.forward_idle] + [self.forward_branch(k) for k in tables.forward_branches]
        if self.split:
            backward_fns = [self.input_idle] + [self.input_branch(k) for k in tables.backward_branches]
            weight_fns = [self.weight_idle] + [self.weight_branch(k) for k in tables.weight_branches]
        else:
            backward_fns = [self.backward_idle] + [self.backward_branch(k) for k in tables.backward_branches]
        res_shape = StashShape.covering(list(self.layouts.values()), tables.res_slots)
        wres_shape = StashShape.covering(list(self.handoffs.values()), tables.wres_slots)

        def tick(carry, row):
            acts, cots, stash, wstash, grads_o, grads_b, loss_sum = carry
            at = {name: row[name][stage] for name in row}
            # The forward slot first, then the backward, then the weight slot: each later read of a
            # stash then depends on the earlier write, so XLA updates the stash in place instead of
            # copying it every tick (a slot a backward frees is taken from the next tick on).
            rows = StashShape.read(stash, at["f_res"])
            x_in = lax.dynamic_index_in_dim(acts, at["f_act"], keepdims=False)
            y, rows, loss = lax.switch(at["f_branch"], forward_fns, o, b, x_in, self.microbatch(at["f_micro"]), rows)
            stash = StashShape.write(stash, rows, at["f_res"])
            rows = StashShape.read(stash, at["b_res"])
            g_in = lax.dynamic_index_in_dim(cots, at["b_cot"], keepdims=False)
            mb = self.microbatch(at["b_micro"])
            if self.split:
                wrows = StashShape.read(wstash, at["b_wres"])
                d_x, wrows = lax.switch(at["b_branch"], backward_fns, o, b, g_in, mb, rows, wrows)
                wstash = StashShape.write(wstash, wrows, at["b_wres"])
                rows = StashShape.read(stash, at["w_res"])
                wrows = StashShape.read(wstash, at["w_wres"])
                grads_o, grads_b = lax.switch(
                    at["w_branch"], weight_fns, o, b, self.microbatch(at["w_micro"]), rows, wrows, grads_o, grads_b
                )
            else:
                d_x, grads_o, grads_b = lax.switch(at["b_branch"], backward_fns, o, b, g_in, mb, rows, grads_o, grads_b)
            # Both sends run every tick, outside the branches (a permute in a per-device branch deadlocks).
            acts = lax.dynamic_update_index_in_dim(acts, plan.activations(y), at["act_in"], 0)
            cots = lax.dynamic_update_index_in_dim(cots, plan.cotangents(d_x), at["cot_in"], 0)
            return (acts, cots, stash, wstash, grads_o, grads_b, loss_sum + loss / m), None

        acts = jnp.broadcast_to(self.act_zero, (tables.act_slots + 1, *self.act_zero.shape))
        cots = jnp.broadcast_to(self.act_zero, (tables.cot_slots + 1, *self.act_zero.shape))
        zero_grads = (jax.tree.map(jnp.zeros_like, o), jax.tree.map(jnp.zeros_like, b))
        carry = (acts, cots, res_shape.zeros(), wres_shape.zeros(), *zero_grads, self.zero_loss)
        arrays = {name: jnp.asarray(t) for name, t in tables.arrays.items()}
        (*_, grads_o, grads_b, loss_sum), _ = lax.scan(tick, carry, arrays)
        loss = plan.loss(loss_sum)
        grads_o = plan.replicated_gradients(grads_o)
        return loss, {**grads_o, self.program.blocks: grads_b}
