"""Lower a user's step function under a compiled plan: one ``jit`` of one ``shard_map``.

The program, per device:

1. parameters are marked varying over the DP (and FSDP) axes, so autodiff adds no
   hidden reduction;
2. the user's function runs on the local batch shard, once or once per
   microbatch inside a ``lax.scan`` when ``accumulate_steps > 1``;
3. the gradients pass through the IR's gradient collectives (one all-reduce
   mean over the DP axes; under FSDP first its reduce-scatters, see
   :mod:`titanax.lowering.fully_sharded`), the optimizer runs on each device's
   parameter shards (whole parameters without tensor parallelism or FSDP), and
   the metrics pass through the IR's metric collectives.

Under a precision policy the parameters the user's function sees and the
floating batch leaves are cast to the compute dtype (integer leaves never are),
gradients come back to the master parameters' dtype before the sync and the
optimizer, and floating metrics are cast to the output dtype.

The state's partition specs come from the IR's ``param`` nodes: replicated
without tensor parallelism, split over the TP axes where a shard rule says so.
Everything else the program needs from the plan comes from one
:class:`~titanax.lowering.step_plan.StepPlan` read from the IR when the step is
built. Collectives the lowering inserts go through the one emitter
(:func:`titanax.lowering.collectives.emit`), each under the scope of its IR
node, so that tracing checks them against their nodes and tells them apart
from the ones the user's code performs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding

from titanax.errors import BatchError, Diagnostic, StepFnError
from titanax.ir import PlanIR
from titanax.lowering.collectives import ensure_varying, ensure_varying_tree, varying_axes
from titanax.lowering.context import StepContext, StepState, active_recorder, recording
from titanax.lowering.contracts import check_live_arrays, check_step_result
from titanax.lowering.partial_sums import check_partial_sums, partial_sum_diagnostics
from titanax.lowering.pipeline import PipelineProgram
from titanax.lowering.placement import global_shapes, place_global_batch
from titanax.lowering.report import StepReport
from titanax.lowering.stages import (
    apply_optimizer,
    cast_floating,
    count_nonfinite,
    keep_where,
    reduce_metrics,
    state_is_finite,
    sync_gradients,
    unscale_gradients,
)
from titanax.lowering.step_plan import StepPlan
from titanax.lowering.trace import check_emitted, traced_collectives

__all__ = ["CompiledStep", "replicated_spec"]

P = jax.P

UserStep = Callable[[Any, Any], tuple[Any, Any]]


def replicated_spec(ndim: int) -> jax.sharding.PartitionSpec:
    """The spec of a replicated array, written with one ``None`` per dimension.

    Step outputs come back with this full-rank form; putting inputs in the same
    form keeps the second call from recompiling.
    """
    return P(*([None] * ndim))


def _varying_output_diagnostic(err: ValueError) -> Diagnostic:
    """TX509 for shard_map's "out_specs require replication", saying what to do."""
    first_line = str(err).strip().splitlines()[0]
    return Diagnostic(
        code="TX509",
        message="a value the step returns (new state or metrics) differs across devices where the plan says it is "
        f"replicated; JAX says: {first_line[:300]}",
        hint="if the value comes from a matmul over a dimension split over a tensor-parallel axis (a row-parallel "
        "layer), its result is a partial sum: add tx.collectives.psum(y, 'model') right after that matmul "
        "(reducing only the metric would train a different model; TX518 then points at the line); a metric "
        "that is meant to differ per device is reduced with tx.collectives.pmean(x, 'model'); an optimizer "
        "that mixes split and whole parameters, such as optax.clip_by_global_norm, must count split ones "
        "whole: use tx.optim.clip_by_global_norm",
    )


def _is_varying_output_error(err: Exception) -> bool:
    return isinstance(err, ValueError) and "out_specs" in str(err) and "replicat" in str(err)


@contextlib.contextmanager
def _explained_varying_outputs() -> Iterator[None]:
    """Turn shard_map's "out_specs require replication" into TX509 saying what to do."""
    try:
        yield
    except ValueError as err:
        if not _is_varying_output_error(err):
            raise
        raise StepFnError([_varying_output_diagnostic(err)]) from None


def _path_text(path: tuple[Any, ...]) -> str:
    return jax.tree_util.keystr(path) or "<batch>"


class CompiledStep:
    """A user step function lowered under one IR and mesh; call it like the function."""

    def __init__(
        self,
        fn: UserStep,
        ir: PlanIR,
        mesh: Mesh,
        *,
        donate_state: bool,
        state_specs: Any = None,
        skip_nonfinite: bool = False,
    ):
        self.fn = fn
        self.ir = ir
        self.mesh = mesh
        self.plan = StepPlan.from_ir(ir)
        """Everything the program reads from the plan, read once."""
        self.pipeline = PipelineProgram(self.plan.pipeline) if self.plan.pipeline is not None else None
        self.skip_nonfinite = skip_nonfinite
        self.report: StepReport | None = None
        """What the first trace found (set before the first run, or by :meth:`trace`)."""
        batch_spec = P(self.plan.dp_axes) if self.plan.dp_axes else P()
        self.batch_sharding = NamedSharding(mesh, batch_spec)
        # A spec tree for the state (TrainState-shaped), or P() for an all-replicated state.
        self.state_specs = P() if state_specs is None else state_specs
        self._batch_spec = batch_spec
        program = self._shard_map(self._body)
        self._program = program
        self.donate_state = donate_state
        self._jitted = jax.jit(program, donate_argnums=(0,) if donate_state else ())
        self._checked_batches: set[Any] = set()

    def _shard_map(self, body: Callable[[Any, Any], tuple[Any, Any]]) -> Callable[[Any, Any], tuple[Any, Any]]:
        return jax.shard_map(
            body,
            mesh=self.mesh,
            in_specs=(self.state_specs, self._batch_spec),
            out_specs=(self.state_specs, P()),
            check_vma=True,
        )

    @property
    def applies_update(self) -> bool | None:
        """Whether the step calls ``apply_gradients`` (``None`` until it was traced)."""
        return self.report.applies_update if self.report is not None else None

    # -- call path --------------------------------------------------------
    def __call__(self, state: Any, batch: Any) -> tuple[Any, Any]:
        """Run one step: ``(state, batch) -> (new_state, metrics)``."""
        check_live_arrays(state, batch)
        with _explained_varying_outputs():
            placed = self.place_batch(batch)
            if self.report is None:
                # Before the first run: check what the step emits against the IR, and learn whether it
                # applies gradients: an evaluation step must not donate the state its caller keeps using.
                self.report = self._trace_placed(state, placed)
                if self.donate_state and not self.report.applies_update:
                    self._jitted = jax.jit(self._program)
            return self._jitted(state, placed)

    def trace(self, state: Any, batch: Any) -> StepReport:
        """Trace the step and report what it does: whether it applies gradients, every collective
        (Titanax's own checked against their IR nodes, TX903 on a mismatch), stage FLOPs under PP."""
        with _explained_varying_outputs():
            return self._trace_placed(state, self.place_batch(batch))

    def _trace_placed(self, state: Any, placed: Any) -> StepReport:
        # JAX caches traces by function: a fresh closure makes the body run (and record) again.
        program = self._shard_map(lambda state, batch: self._body(state, batch))
        with recording() as recorder:
            try:
                jaxpr = jax.make_jaxpr(program)(state, placed)
            except ValueError as err:
                if not _is_varying_output_error(err):
                    raise
                causes = self._partial_sum_causes(state, placed)
                raise StepFnError([*causes, _varying_output_diagnostic(err)]) from None
        collectives = traced_collectives(jaxpr)
        check_emitted(collectives, self.ir)
        check_partial_sums(jaxpr, self.plan.tp_axes)
        return StepReport(
            applies_update=bool(recorder.applies_update),
            collectives=collectives,
            stage_flops=recorder.stage_flops,
        )

    def _partial_sum_causes(self, state: Any, placed: Any) -> list[Diagnostic]:
        """When a result varies where it should not (TX509), the partial sums that explain it (TX518).

        The step is traced once more with every output declared split over every mesh axis (a
        leading dimension added), which shard_map accepts whatever varies; that trace only feeds
        the partial-sum checker, so the error can name the matmul as well as the symptom.
        """
        if not self.plan.tp_axes:
            return []
        axes = tuple(self.mesh.axis_names)
        relaxed = jax.shard_map(
            lambda state, batch: jax.tree.map(lambda x: x[None], self._body(state, batch)),
            mesh=self.mesh,
            in_specs=(self.state_specs, self._batch_spec),
            out_specs=P(axes),
            check_vma=True,
        )
        try:
            jaxpr = jax.make_jaxpr(relaxed)(state, placed)
        except Exception:  # noqa: BLE001 - only a better explanation is at stake; TX509 is raised regardless
            return []
        return partial_sum_diagnostics(jaxpr, self.plan.tp_axes)

    def lower(self, state: Any, batch: Any) -> jax.stages.Lowered:
        """Return JAX's ``Lowered`` for this step, for HLO, cost and memory analysis."""
        with _explained_varying_outputs():
            return self._jitted.lower(state, self.place_batch(batch))

    def jaxpr(self, state: Any, batch: Any) -> Any:
        """The step's closed jaxpr (the ``shard_map`` body included), for finding its collectives."""
        with _explained_varying_outputs():
            return jax.make_jaxpr(self._program)(state, self.place_batch(batch))

    def eval_shape(self, state: Any, batch: Any) -> Any:
        """Shapes and dtypes of ``(new_state, metrics)``, without running the step."""
        return jax.eval_shape(self._jitted, state, self.place_batch(batch))

    def cache_size(self) -> int:
        """How many programs JAX has compiled for this step (1 in steady state)."""
        return self._jitted._cache_size()

    def place_batch(self, batch: Any) -> Any:
        """Check the batch splits as the plan requires, then shard it over the DP axes.

        Under an explicit mesh ``jit`` does not move uncommitted inputs to match
        ``in_specs``, so the step places the batch itself. With several processes
        a :class:`~titanax.lowering.placement.PerProcess` batch is assembled from
        every process's rows; other host arrays are taken as the whole global batch.
        A batch already placed with the step's sharding (the previous step's, or one
        placed ahead of time) is used as it is.
        """
        leaves, treedef = jax.tree.flatten(batch)
        if leaves and all(isinstance(x, jax.Array) and x.sharding == self.batch_sharding for x in leaves):
            signature = (treedef, tuple(x.shape for x in leaves))
            if signature in self._checked_batches:
                return batch
        if leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
            # An abstract batch (ahead-of-time compilation, memory estimates): checked, never placed.
            self._check_batch(batch)
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.batch_sharding), batch)
        shapes = global_shapes(batch)
        leaves, treedef = jax.tree.flatten(shapes)
        signature = (treedef, tuple(x.shape for x in leaves))
        if signature not in self._checked_batches:
            self._check_batch(shapes)
            self._checked_batches.add(signature)
        return place_global_batch(batch, self.batch_sharding)

    def _check_batch(self, batch: Any) -> None:
        problems = []
        plan = self.plan
        dp_axes, dp_size, accumulate, microbatches = (
            plan.dp_axes,
            plan.dp_size,
            plan.accumulate_steps,
            plan.microbatches,
        )
        per_device = dp_size * accumulate * microbatches
        for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
            shape = tuple(leaf.shape)
            where = f"batch leaf {_path_text(path)} with shape {shape}"
            if (dp_axes or microbatches > 1) and not shape:
                problems.append(
                    (
                        "TX303",
                        f"{where} is a scalar; data parallelism and pipeline microbatches split dimension 0",
                        "give every batch leaf a leading batch dimension",
                    )
                )
            elif dp_axes and shape[0] % dp_size:
                lower = shape[0] // per_device * per_device
                problems.append(
                    (
                        "TX301",
                        f"{where}: dimension 0 ({shape[0]}) is not divisible by the DP size {dp_size} (axes {dp_axes})",
                        f"use a batch size that is a multiple of {per_device} (DP size x accumulate_steps), e.g. "
                        + (f"{lower} or {lower + per_device}" if lower else f"{per_device}"),
                    )
                )
            elif shape and microbatches > 1 and shape[0] % per_device:
                problems.append(
                    (
                        "TX304",
                        f"{where}: dimension 0 ({shape[0]}) does not split into {microbatches} pipeline "
                        f"microbatches on each of the {dp_size} data-parallel replicas",
                        f"use a global batch that is a multiple of {per_device} (microbatches x DP size"
                        + (" x accumulate_steps)" if accumulate > 1 else ")"),
                    )
                )
            elif shape and shape[0] % per_device:
                problems.append(
                    (
                        "TX302",
                        f"{where}: each device's {shape[0] // dp_size} examples do not split into "
                        f"accumulate_steps={accumulate} microbatches",
                        f"use a batch size that is a multiple of {per_device} (DP size x accumulate_steps)",
                    )
                )
        if problems:
            raise BatchError([Diagnostic(code=c, message=m, hint=h) for c, m, h in problems])

    # -- the per-device program -------------------------------------------
    @contextlib.contextmanager
    def _pipeline_used_check(self, ctx: StepContext) -> Iterator[None]:
        """Under a pipeline plan, a step must run its model through ``tx.pipeline.value_and_grad``."""
        if self.pipeline is None:
            yield
            return
        failure: Exception | None = None
        try:
            yield
        except StepFnError:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised below, explained if the pipeline was skipped
            failure = err
        if not ctx.pipeline_used:
            raise StepFnError.single(
                "TX512",
                "the plan has pipeline parallelism but the step never called tx.pipeline.value_and_grad",
                "compute the loss and gradients with tx.pipeline.value_and_grad(model, state.params, batch); "
                "the blocks on each device are only its stage's share",
            ) from failure
        if failure is not None:
            raise failure

    def _update(self, state: StepState, grads: Any) -> tuple[StepState, Any]:
        """Synchronise ``grads`` and apply them; under loss scaling, unscale them first and skip
        the update (halving the scale) when any device's gradients overflowed.

        Returns the new state and, under loss scaling, whether the gradients overflowed (else ``None``).
        """
        plan = self.plan
        if plan.fsdp is not None:
            grads = plan.fsdp.sync_gradients(grads)
        grads = sync_gradients(plan.gradient_sync, grads)
        loss_scale = state.loss_scale
        if loss_scale is None:
            return self._optimize(state, grads), None
        grads = unscale_gradients(grads, loss_scale.scale)
        finite = count_nonfinite(grads, plan.nonfinite_count) == 0
        kept = keep_where(finite, self._optimize(state, grads), state)
        new_state = kept.replace(loss_scale=loss_scale.adjust(finite, plan.loss_scale_growth_interval))
        return new_state, ~finite

    def _optimize(self, state: StepState, grads: Any) -> StepState:
        """The optimizer applied to ``grads``; under FSDP stages 1 and 2 to this device's slice of the
        parameters (with its shard of the optimizer state), the updated slices then gathered whole."""
        fsdp = self.plan.fsdp
        if fsdp is None or fsdp.stage == 3:
            return apply_optimizer(state, grads)
        updated = apply_optimizer(state.replace(params=fsdp.take_shards(state.params)), grads)
        return updated.replace(params=fsdp.gather_all(updated.params))

    def _context(self, state: StepState, accumulate: bool, microbatch: Any = None) -> StepContext:
        loss_scale = state.loss_scale
        plan = self.plan
        return StepContext(
            state=state,
            update=self._update,
            accumulate=accumulate,
            tp_axes=plan.tp_axes,
            dp_axes=plan.dp_axes,
            sequence_parallel=plan.sequence_parallel,
            mesh_axes=tuple(self.mesh.axis_names),
            pipeline=self.pipeline,
            loss_scale=loss_scale.scale if loss_scale is not None else None,
            microbatch=microbatch,
            remat=plan.remat,
            fsdp=plan.fsdp if plan.fsdp is not None and plan.fsdp.gathers_in_backward else None,
        )

    def _body(self, state: StepState, batch: Any) -> tuple[Any, Any]:
        plan = self.plan
        params = state.params
        if plan.fsdp is not None and plan.fsdp.stage == 3 and not plan.fsdp.gathers_in_backward:
            # Under accumulation or a pipeline: gathered once per step, not once per microbatch.
            params = plan.fsdp.gather_all(params)
        # Parameters vary over the batch axes so that autodiff adds no hidden reduction (FSDP shards already do).
        seen = state.replace(params=cast_floating(ensure_varying_tree(params, plan.dp_axes), plan.compute_dtype))
        batch = cast_floating(batch, plan.compute_dtype)
        if plan.accumulate_steps == 1:
            ctx = self._context(state, accumulate=False)
            with ctx.active(), self._pipeline_used_check(ctx):
                returned, metrics = check_step_result(self.fn(seen, batch), type(state))
            # What the user returns after apply_gradients (clipped, replaced...) is kept; a step
            # that never applied gradients returns the replicated input state unchanged.
            new_state = returned if ctx.called else state
            applies, overflow = ctx.called, ctx.overflow
        else:
            new_state, metrics, applies, overflow = self._accumulated(state, seen, batch)
        recorder = active_recorder()
        if recorder is not None:
            recorder.applies_update = applies
        metrics = reduce_metrics(plan.metric_reduce, metrics, plan.output_dtype)
        if applies:
            new_state, metrics = self._guarded(state, new_state, metrics, overflow)
        return new_state, metrics

    def _guarded(self, state: StepState, new_state: Any, metrics: Any, overflow: Any) -> tuple[Any, Any]:
        """Report the loss scale, and under ``nonfinite="skip"`` keep the old parameters when the loss or
        the updated state is not finite (a finite loss can come with an update that overflows).

        The reduced loss is the same on every device, so it decides with no collective. So does the
        check of the new state where the state is whole on every device; where tensor or pipeline
        parallelism splits it, the IR's ``state_finite`` all-reduce (``insert-nonfinite-guard``) sums
        every device's verdict first.
        """
        if not isinstance(metrics, Mapping):
            if self.skip_nonfinite:
                raise StepFnError.single(
                    "TX514",
                    f"the engine skips steps with a non-finite loss, but the step returned metrics of type "
                    f"{type(metrics).__name__}, not a dict with a 'loss'",
                    'return metrics as a dict, e.g. {"loss": loss}, or build the Engine with nonfinite="raise"',
                )
            return new_state, metrics
        metrics = dict(metrics)
        if new_state.loss_scale is not None:
            metrics["loss_scale"] = new_state.loss_scale.scale
            metrics["overflow"] = overflow.astype(jnp.float32)
        if self.skip_nonfinite:
            if "loss" not in metrics:
                raise StepFnError.single(
                    "TX514",
                    f"the engine skips steps with a non-finite loss, but the step's metrics have no 'loss' "
                    f"(they have {sorted(metrics)})",
                    'return the loss as metrics["loss"], or build the Engine with nonfinite="raise"',
                )
            finite = jnp.all(jnp.isfinite(metrics["loss"]))
            state_finite = state_is_finite(new_state)
            if self.plan.state_guard:
                # Each device checked its own shards: the IR's state_finite sums the flags so all agree.
                flags = (~state_finite).astype(jnp.int32)
                for collective in self.plan.state_guard:
                    flags = collective(ensure_varying(flags, collective.node.axes))
                state_finite = flags == 0
            if not varying_axes(state_finite):
                finite = finite & state_finite
            new_state = keep_where(finite, new_state, state)
            metrics["skipped"] = (~finite).astype(jnp.float32)
        return new_state, metrics

    def _accumulated(self, state: StepState, seen: Any, batch: Any) -> tuple[Any, Any, bool, Any]:
        """Run the user's function once per microbatch in a scan, then apply the averaged gradients once.

        Returns the new state, the microbatch-averaged metrics, whether gradients were applied, and the
        overflow flag under loss scaling.
        """
        k = self.plan.accumulate_steps
        micro = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), batch)
        traced: list[StepContext] = []

        def one_microbatch(grad_sum: Any, indexed: tuple[Any, Any]) -> tuple[Any, Any]:
            index, microbatch = indexed
            ctx = self._context(state, accumulate=True, microbatch=index)
            traced.append(ctx)
            with ctx.active():
                returned, metrics = check_step_result(self.fn(seen, microbatch), type(state))
            if not ctx.called:  # an evaluation step: nothing to accumulate
                return grad_sum, metrics
            if returned is not ctx.returned:
                raise StepFnError.single(
                    "TX515",
                    "with accumulate_steps > 1 the step must return the state apply_gradients returned: the update "
                    "is applied once after all microbatches, so edits made to the state after it would be lost",
                    "return state.apply_gradients(grads=grads) unchanged; transform gradients before it, or "
                    "updates inside the optimizer (optax.chain)",
                )
            grads = ctx.grads
            if fsdp is not None and fsdp.scatters_per_microbatch:
                grads = fsdp.scatter_gradients(grads)  # stage 2: the accumulator holds shards only
            return jax.tree.map(jnp.add, grad_sum, grads), metrics

        fsdp = self.plan.fsdp
        # zeros_like of a varying value is varying, as a scan carry must be here.
        carried = seen.params
        if fsdp is not None and fsdp.scatters_per_microbatch:
            carried = fsdp.take_shards(carried)
        zeros = jax.tree.map(lambda s, p: jnp.zeros_like(s, dtype=p.dtype), carried, state.params)
        grad_sum, metrics = lax.scan(one_microbatch, zeros, (jnp.arange(k), micro))
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        if not traced[-1].called:
            return state, metrics, False, None
        grads = jax.tree.map(lambda g: g / k, grad_sum)
        new_state, overflow = self._update(state, grads)
        return new_state, metrics, True, overflow
