"""Run a pipeline schedule inside one ``shard_map`` program.

Every device is one stage (its index on the pipeline axis). A ``lax.scan`` runs
the schedule's ticks; at each tick a device looks up its op in the table (a
constant) and runs it through one ``lax.switch``: idle, the forward of its stage
(first, middle or last kind), or the backward of its stage. The backward is a
per-stage ``jax.vjp`` that recomputes the stage's forward from the stage input
kept in a stash, so a stage holds only the inputs of the microbatches in
flight on it: about ``p - s`` under 1F1B, ``m`` under GPipe.

Both ``ppermute``s (activations forward, cotangents backward) run every tick,
outside the ``switch`` (a permute inside a per-device branch deadlocks); devices
with nothing to send send zeros, and receivers file what arrives into a stash
slot the table says, or into a spare slot when nothing was meant for them.

Parameters the plan stacks as blocks are split over the pipeline axis; every
other parameter is held whole by every stage, and its gradients (nonzero only
on the first or last stage) are summed over the pipeline axis once. The loss,
computed on the last stage, is summed over the axis the same way. These four
collectives are the IR nodes the :class:`~titanax.lowering.step_plan.PipelinePlan` holds (found by
their operand kind), emitted by the one emitter with the node's own pairs and axes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from titanax.errors import PlanError
from titanax.ir import Schedule
from titanax.lowering.collectives import ensure_varying, varying_axes
from titanax.lowering.context import active_recorder, outside_step_context
from titanax.lowering.step_plan import PipelinePlan

__all__ = ["PipelineProgram", "cotangent_slots", "sequential_loss", "stash_slots"]


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


def _fewest_slots(intervals: dict[int, list[tuple[int, int, int]]], m: int) -> int:
    """Fewest ``K`` such that no two live intervals of one stage share ``microbatch % K``.

    An interval ``(written, last_read]``: a slot is filled at the end of one tick and read
    during a later one, and within a tick every read happens before the write.
    """
    for k in range(1, m + 1):
        if all(
            not (a0 < b1 and b0 < a1)
            for spans in intervals.values()
            for x, (i, a0, a1) in enumerate(spans)
            for (j, b0, b1) in spans[x + 1 :]
            if i % k == j % k
        ):
            return k
    return m


def stash_slots(schedule: Schedule) -> int:
    """Slots for stage inputs: a microbatch's input waits on stage ``s > 0`` from the forward on
    ``s - 1`` that sends it to the backward on ``s`` that last uses it (stage 0 recomputes its
    input from the batch). About ``p`` under 1F1B, ``m`` under GPipe."""
    p, m = schedule.stages, schedule.microbatches
    tick = {(op.kind, op.stage, op.microbatch): op.tick for op in schedule.ops}
    spans = {s: [(i, tick[("F", s - 1, i)], tick[("B", s, i)]) for i in range(m)] for s in range(1, p)}
    return _fewest_slots(spans, m)


def cotangent_slots(schedule: Schedule) -> int:
    """Slots for cotangents: one waits on stage ``s < p - 1`` from the backward on ``s + 1`` that
    sends it to the backward on ``s`` (usually the next tick, so one or two slots suffice)."""
    p, m = schedule.stages, schedule.microbatches
    tick = {(op.kind, op.stage, op.microbatch): op.tick for op in schedule.ops}
    spans = {s: [(i, tick[("B", s + 1, i)], tick[("B", s, i)]) for i in range(m)] for s in range(p - 1)}
    return _fewest_slots(spans, m)


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

    def tables(self) -> dict[str, np.ndarray]:
        """Per tick and stage: op (0 idle, 1 forward, 2 backward), microbatch, and the slots the
        activation and cotangent arriving at the end of the tick go to (the last slot is a spare)."""
        s, p = self.schedule, self.schedule.stages
        k, kg = stash_slots(s), cotangent_slots(s)
        shape = (s.ticks, p)
        op, micro = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
        act_slot, grad_slot = np.full(shape, k, np.int32), np.full(shape, kg, np.int32)
        for cell in s.ops:
            op[cell.tick, cell.stage] = 1 if cell.kind == "F" else 2
            micro[cell.tick, cell.stage] = cell.microbatch
            if cell.kind == "F" and cell.stage + 1 < p:
                act_slot[cell.tick, cell.stage + 1] = cell.microbatch % k
            if cell.kind == "B" and cell.stage > 0:
                grad_slot[cell.tick, cell.stage - 1] = cell.microbatch % kg
        return {"op": op, "micro": micro, "act_slot": act_slot, "grad_slot": grad_slot}

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
        layers = jax.tree.leaves(blocks)[0].shape[0]
        with outside_step_context():
            # Outside the step, layers do no sequence splitting either: take the activation
            # shape from this same trace, not from the step's (possibly sequence-split) one.
            x = jax.eval_shape(first, *abstract((others, mb0)))
            per_block = layers * flops(block, layer, x)
            kinds = {
                "first": flops(first, others, mb0) + per_block,
                "middle": per_block,
                "last": per_block + flops(last, others, x, mb0),
            }
        costs = [kinds["first"]] + [kinds["middle"]] * (p - 2) + [kinds["last"]]
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

        def loss_fn(params: dict[str, Any]) -> Any:
            loss = sequential_loss(first_varying, block, last, self.blocks, params, batch)
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
        p, m = self.schedule.stages, self.schedule.microbatches
        if p == 1:
            return self._single_stage(first, block, last, params, batch, loss_scale)
        seed = 1.0 / m if loss_scale is None else loss_scale / m
        k, kg = stash_slots(self.schedule), cotangent_slots(self.schedule)
        tables = {name: jnp.asarray(t) for name, t in self.tables().items()}
        pipe = frozenset({self.axis})
        blocks = params[self.blocks]
        others = jax.tree.map(lambda x: ensure_varying(x, pipe), {n: v for n, v in params.items() if n != self.blocks})
        micro = jax.tree.map(lambda x: x.reshape(m, x.shape[0] // m, *x.shape[1:]), batch)

        def run_blocks(b: Any, x: Any) -> Any:
            if jax.tree.leaves(b)[0].shape[0] == 1:
                # One block per stage: no loop. XLA inlines a one-trip loop and then drops the work
                # whose result is dead (a backward's recomputed output); without the loop the
                # trace's dead-code pass sees the same, and the IR lists what XLA runs.
                return block(jax.tree.map(lambda w: w[0], b), x)
            return lax.scan(lambda h, layer: (block(layer, h), None), x, b)[0]

        def f_first(o: Any, b: Any, mb: Any) -> Any:
            return run_blocks(b, first(o, mb))

        def f_last(o: Any, b: Any, x: Any, mb: Any) -> Any:
            return last(o, run_blocks(b, x), mb)

        mb0 = jax.tree.map(lambda x: x[0], micro)
        act_aval = jax.eval_shape(f_first, others, blocks, mb0)
        self._check_flops_balance(first, block, last, others, blocks, mb0)
        mid_aval = jax.eval_shape(run_blocks, blocks, _zeros_like_aval(act_aval))
        act_axes = varying_axes(act_aval) | varying_axes(mid_aval) | pipe
        act_zero = _zeros_like_aval(act_aval, act_axes)
        loss_axes = varying_axes(jax.eval_shape(f_last, others, blocks, act_zero, mb0)) | pipe
        zero_grads = (jax.tree.map(jnp.zeros_like, others), jax.tree.map(jnp.zeros_like, blocks))
        zero_loss = ensure_varying(jnp.zeros((), jnp.float32), loss_axes)
        stage = lax.axis_index(self.axis)
        kind = jnp.where(stage == 0, 0, jnp.where(stage == p - 1, 2, 1))  # first, middle, last

        def outputs(act=None, grad=None, d_o=None, d_b=None, loss=None):
            # Every branch returns the same types, varying-ness included.
            return (
                ensure_varying(act, act_axes) if act is not None else act_zero,
                ensure_varying(grad, act_axes) if grad is not None else act_zero,
                d_o if d_o is not None else zero_grads[0],
                d_b if d_b is not None else zero_grads[1],
                ensure_varying(loss.astype(jnp.float32), loss_axes) if loss is not None else zero_loss,
            )

        def idle(o, b, x, g, mb):
            return outputs()

        def forward_first(o, b, x, g, mb):
            return outputs(act=f_first(o, b, mb))

        def forward_middle(o, b, x, g, mb):
            return outputs(act=run_blocks(b, x))

        def backward_first(o, b, x, g, mb):
            _, pullback = jax.vjp(lambda o_, b_: f_first(o_, b_, mb), o, b)
            d_o, d_b = pullback(g)
            return outputs(d_o=d_o, d_b=d_b)

        def backward_middle(o, b, x, g, mb):
            _, pullback = jax.vjp(run_blocks, b, x)
            d_b, d_x = pullback(g)
            return outputs(grad=d_x, d_b=d_b)

        def backward_last(o, b, x, g, mb):
            loss, pullback = jax.vjp(lambda o_, b_, x_: f_last(o_, b_, x_, mb), o, b, x)
            d_o, d_b, d_x = pullback(ensure_varying(jnp.asarray(seed, loss.dtype), varying_axes(jax.typeof(loss))))
            return outputs(grad=d_x, d_o=d_o, d_b=d_b, loss=loss)

        # The last stage's forward only fills the stash: its backward, the next op it
        # runs on that microbatch, recomputes it together with the loss.
        branches = [idle, forward_first, forward_middle, idle, backward_first, backward_middle, backward_last]

        def tick(carry, row):
            stash, cotangents, grads_o, grads_b, loss_sum = carry
            op, i = row["op"][stage], row["micro"][stage]
            mb = jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, keepdims=False), micro)
            x_in = lax.dynamic_index_in_dim(stash, i % k, keepdims=False)
            g_in = lax.dynamic_index_in_dim(cotangents, i % kg, keepdims=False)
            branch = jnp.where(op == 0, 0, 1 + (op - 1) * 3 + kind)
            act, grad, d_o, d_b, loss = lax.switch(branch, branches, others, blocks, x_in, g_in, mb)
            grads_o = jax.tree.map(jnp.add, grads_o, d_o)
            grads_b = jax.tree.map(jnp.add, grads_b, d_b)
            received_act = self.plan.activations(act)
            received_grad = self.plan.cotangents(grad)
            stash = lax.dynamic_update_index_in_dim(stash, received_act, row["act_slot"][stage], 0)
            cotangents = lax.dynamic_update_index_in_dim(cotangents, received_grad, row["grad_slot"][stage], 0)
            return (stash, cotangents, grads_o, grads_b, loss_sum + loss / m), None

        stash = jnp.broadcast_to(act_zero, (k + 1, *act_zero.shape))
        cotangents = jnp.broadcast_to(act_zero, (kg + 1, *act_zero.shape))
        carry = (stash, cotangents, *zero_grads, zero_loss)
        (_, _, grads_o, grads_b, loss_sum), _ = lax.scan(tick, carry, tables)
        loss = self.plan.loss(loss_sum)
        grads_o = self.plan.replicated_gradients(grads_o)
        return loss, {**grads_o, self.blocks: grads_b}
