"""Lower a user's step function under a compiled plan: one ``jit`` of one ``shard_map``.

The program, per device:

1. parameters are marked varying over the DP axes (so autodiff adds no hidden
   reduction);
2. the user's function runs on the local batch shard, once or once per
   microbatch inside a ``lax.scan`` when ``accumulate_steps > 1``;
3. the gradients pass through the IR's gradient collectives (one all-reduce
   mean over the DP axes), the optimizer runs on each device's parameter
   shards (whole parameters without tensor parallelism), and the metrics pass
   through the IR's metric collectives.

Under a precision policy the parameters the user's function sees and the
floating batch leaves are cast to the compute dtype (integer leaves never are),
gradients come back to the master parameters' dtype before the sync and the
optimizer, and floating metrics are cast to the output dtype.

The state's partition specs come from the IR's ``param`` nodes: replicated
without tensor parallelism, split over the TP axes where a shard rule says so.
Collectives the lowering inserts run under the named scope ``TITANAX_SCOPE``,
so that tracing tells them apart from the ones the user's code performs.
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
from titanax.lowering.collectives import emit_collectives, ensure_varying, make_varying
from titanax.lowering.context import StepContext, StepState
from titanax.lowering.loss_scale import nonfinite_count
from titanax.lowering.pipeline import PipelineProgram
from titanax.lowering.placement import global_shapes, place_global_batch
from titanax.lowering.trace import TITANAX_SCOPE
from titanax.passes import schedule_from_ir

__all__ = ["CompiledStep", "replicated_spec"]

P = jax.P

UserStep = Callable[[Any, Any], tuple[Any, Any]]


def replicated_spec(ndim: int) -> jax.sharding.PartitionSpec:
    """The spec of a replicated array, written with one ``None`` per dimension.

    Step outputs come back with this full-rank form; putting inputs in the same
    form keeps the second call from recompiling.
    """
    return P(*([None] * ndim))


@contextlib.contextmanager
def _explained_varying_outputs() -> Iterator[None]:
    """Turn shard_map's "out_specs require replication" into a Titanax error saying what to do."""
    try:
        yield
    except ValueError as err:
        if "out_specs" not in str(err) or "replicat" not in str(err):
            raise
        first_line = str(err).strip().splitlines()[0]
        raise StepFnError.single(
            "TX509",
            "a value the step returns (new state or metrics) differs across devices where the plan says it is "
            f"replicated; JAX says: {first_line[:300]}",
            "reduce metrics over the axes they vary along (e.g. tx.collectives.pmean(x, 'model')); an optimizer "
            "that mixes split and whole parameters, such as optax.clip_by_global_norm, must count split ones "
            "whole: use tx.optim.clip_by_global_norm",
        ) from None


def _cast_floating(tree: Any, dtype: str | None) -> Any:
    """Floating arrays of ``tree`` cast to ``dtype`` (a precision policy's); integers (ids, labels)
    stay as they are. ``None`` leaves the tree untouched."""
    if dtype is None:
        return tree
    target = jnp.dtype(dtype)
    return jax.tree.map(lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _select(keep_new: jax.Array, new: Any, old: Any) -> Any:
    """``new``'s parameters and optimizer state where ``keep_new`` holds, else ``old``'s (a skipped update)."""

    def pick(a: Any, b: Any) -> Any:
        return jax.tree.map(lambda x, y: jnp.where(keep_new, x, y), a, b)

    return new.replace(params=pick(new.params, old.params), opt_state=pick(new.opt_state, old.opt_state))


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
        dp, tp = ir.data_parallel(), ir.tensor_parallel()
        self.tp_axes: tuple[str, ...] = tp.axes if tp else ()
        self.sequence_parallel = bool(tp and tp.sequence_parallel)
        self.fn = fn
        self.ir = ir
        self.mesh = mesh
        self.dp_axes: tuple[str, ...] = dp.axes if dp else ()
        self.dp_size = ir.group_size(self.dp_axes)
        self.accumulate_steps = dp.accumulate_steps if dp else 1
        pp = ir.pipeline_parallel()
        self.pipeline = (
            PipelineProgram(
                axis=pp.axes[0],
                schedule=schedule_from_ir(ir),
                blocks=pp.blocks,
                collectives={c.name: c for c in ir.collectives() if c.name.startswith("pp_")},
                balance_tolerance=pp.balance_tolerance,
            )
            if pp is not None
            else None
        )
        self.microbatches = pp.microbatches if pp is not None else 1
        self.precision = ir.precision()
        self.skip_nonfinite = skip_nonfinite
        self._grad_collectives = ir.collectives("gradients")
        self._finite_collectives = ir.collectives("nonfinite_count")
        self._overflow: Any = None
        self.applies_update: bool | None = None
        """Whether the step calls ``apply_gradients`` (known once traced; evaluation steps do not)."""
        self._metric_collectives = ir.collectives("metrics")
        batch_spec = P(self.dp_axes) if self.dp_axes else P()
        self.batch_sharding = NamedSharding(mesh, batch_spec)
        # A spec tree for the state (TrainState-shaped), or P() for an all-replicated state.
        self.state_specs = P() if state_specs is None else state_specs
        program = jax.shard_map(
            self._body,
            mesh=mesh,
            in_specs=(self.state_specs, batch_spec),
            out_specs=(self.state_specs, P()),
            check_vma=True,
        )
        self._program = program
        self.donate_state = donate_state
        self._jitted = jax.jit(program, donate_argnums=(0,) if donate_state else ())
        self._donation_checked = False
        self._checked_batches: set[Any] = set()

    # -- call path --------------------------------------------------------
    def __call__(self, state: Any, batch: Any) -> tuple[Any, Any]:
        """Run one step: ``(state, batch) -> (new_state, metrics)``."""
        with _explained_varying_outputs():
            placed = self.place_batch(batch)
            if self.donate_state and not self._donation_checked:
                # Before the first run: a step that applies no gradients (evaluation) must not
                # donate the state, which its caller keeps using. Tracing tells which it is.
                if self.applies_update is None:
                    jax.eval_shape(self._program, state, placed)
                if not self.applies_update:
                    self._jitted = jax.jit(self._program)
                self._donation_checked = True
            return self._jitted(state, placed)

    def lower(self, state: Any, batch: Any) -> jax.stages.Lowered:
        """Return JAX's ``Lowered`` for this step, for HLO, cost and memory analysis."""
        with _explained_varying_outputs():
            return self._jitted.lower(state, self.place_batch(batch))

    def jaxpr(self, state: Any, batch: Any) -> Any:
        """The step's closed jaxpr (the ``shard_map`` body included), for finding its collectives."""
        return jax.make_jaxpr(self._jitted)(state, self.place_batch(batch))

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
        """
        shapes = global_shapes(batch)
        leaves, treedef = jax.tree.flatten(shapes)
        signature = (treedef, tuple(x.shape for x in leaves))
        if signature not in self._checked_batches:
            self._check_batch(shapes)
            self._checked_batches.add(signature)
        return place_global_batch(batch, self.batch_sharding)

    def _check_batch(self, batch: Any) -> None:
        problems = []
        per_device = self.dp_size * self.accumulate_steps * self.microbatches
        for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
            shape = tuple(leaf.shape)
            where = f"batch leaf {_path_text(path)} with shape {shape}"
            if (self.dp_axes or self.microbatches > 1) and not shape:
                problems.append(
                    (
                        "TX303",
                        f"{where} is a scalar; data parallelism and pipeline microbatches split dimension 0",
                        "give every batch leaf a leading batch dimension",
                    )
                )
            elif self.dp_axes and shape[0] % self.dp_size:
                lower = shape[0] // per_device * per_device
                problems.append(
                    (
                        "TX301",
                        f"{where}: dimension 0 ({shape[0]}) is not divisible by the DP size {self.dp_size} "
                        f"(axes {self.dp_axes})",
                        f"use a batch size that is a multiple of {per_device} (DP size x accumulate_steps), e.g. "
                        + (f"{lower} or {lower + per_device}" if lower else f"{per_device}"),
                    )
                )
            elif shape and self.microbatches > 1 and shape[0] % per_device:
                problems.append(
                    (
                        "TX304",
                        f"{where}: dimension 0 ({shape[0]}) does not split into {self.microbatches} pipeline "
                        f"microbatches on each of the {self.dp_size} data-parallel replicas",
                        f"use a global batch that is a multiple of {per_device} (microbatches x DP size"
                        + (" x accumulate_steps)" if self.accumulate_steps > 1 else ")"),
                    )
                )
            elif shape and shape[0] % per_device:
                problems.append(
                    (
                        "TX302",
                        f"{where}: each device's {shape[0] // self.dp_size} examples do not split into "
                        f"accumulate_steps={self.accumulate_steps} microbatches",
                        f"use a batch size that is a multiple of {per_device} (DP size x accumulate_steps)",
                    )
                )
        if problems:
            raise BatchError([Diagnostic(code=c, message=m, hint=h) for c, m, h in problems])

    # -- the per-device program -------------------------------------------
    def _sync_gradients(self, grads: Any) -> Any:
        with jax.named_scope(TITANAX_SCOPE):
            return emit_collectives(self._grad_collectives, grads)

    @contextlib.contextmanager
    def _pipeline_used_check(self) -> Iterator[None]:
        """Under a pipeline plan, a step must run its model through ``tx.pipeline.value_and_grad``."""
        if self.pipeline is None:
            yield
            return
        before = len(self.pipeline.used)
        failure: Exception | None = None
        try:
            yield
        except StepFnError:
            raise
        except Exception as err:  # noqa: BLE001 - re-raised below, explained if the pipeline was skipped
            failure = err
        if len(self.pipeline.used) == before:
            raise StepFnError.single(
                "TX512",
                "the plan has pipeline parallelism but the step never called tx.pipeline.value_and_grad",
                "compute the loss and gradients with tx.pipeline.value_and_grad(model, state.params, batch); "
                "the blocks on each device are only its stage's share",
            ) from failure
        if failure is not None:
            raise failure

    def _update(self, state: StepState, grads: Any) -> StepState:
        """Synchronise ``grads`` and apply them; under loss scaling, unscale them first and skip
        the update (halving the scale) when any device's gradients overflowed."""
        grads = self._sync_gradients(grads)
        loss_scale = state.loss_scale
        if loss_scale is None:
            return state.apply_update(grads)
        grads = jax.tree.map(lambda g: g / loss_scale.scale.astype(g.dtype), grads)
        count = nonfinite_count(grads)
        if self._finite_collectives:
            # Split gradients differ across TP shards and pipeline stages: every device must agree.
            with jax.named_scope(TITANAX_SCOPE):
                count = ensure_varying(count, self._finite_collectives[0].axes)
                count = emit_collectives(self._finite_collectives, count)
        finite = count == 0
        self._overflow = ~finite  # reported as a metric by _guarded, in the same trace
        updated = state.apply_update(grads)
        kept = _select(finite, updated, state)
        return kept.replace(
            step=state.step + 1,
            loss_scale=loss_scale.adjust(finite, self.precision.loss_scale_growth_interval),
        )

    def _context(self, state: StepState, accumulate: bool, microbatch: Any = None) -> StepContext:
        loss_scale = state.loss_scale
        return StepContext(
            state=state,
            update=self._update,
            accumulate=accumulate,
            tp_axes=self.tp_axes,
            dp_axes=self.dp_axes,
            sequence_parallel=self.sequence_parallel,
            mesh_axes=tuple(self.mesh.axis_names),
            pipeline=self.pipeline,
            loss_scale=loss_scale.scale if loss_scale is not None else None,
            microbatch=microbatch,
        )

    def _body(self, state: StepState, batch: Any) -> tuple[Any, Any]:
        compute = self.precision.compute if self.precision else None
        seen = state.replace(params=_cast_floating(make_varying(state.params, self.dp_axes), compute))
        batch = _cast_floating(batch, compute)
        if self.accumulate_steps == 1:
            ctx = self._context(state, accumulate=False)
            with ctx.active(), self._pipeline_used_check():
                returned, metrics = self.fn(seen, batch)
            # What the user returns after apply_gradients (clipped, replaced...) is kept; a step
            # that never applied gradients returns the replicated input state unchanged.
            new_state = returned if ctx.called else state
            self.applies_update = ctx.called
        else:
            new_state, metrics = self._accumulated(state, seen, batch)
        with jax.named_scope(TITANAX_SCOPE):
            output = self.precision.output if self.precision else None
            metrics = emit_collectives(self._metric_collectives, _cast_floating(metrics, output))
        if self.applies_update:
            new_state, metrics = self._guarded(state, new_state, metrics)
        return new_state, metrics

    def _guarded(self, state: StepState, new_state: Any, metrics: Any) -> tuple[Any, Any]:
        """Report the loss scale, and under ``nonfinite="skip"`` keep the old parameters when the loss is
        not finite. The reduced loss is the same on every device, so no collective is needed to agree."""
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
            metrics["overflow"] = self._overflow.astype(jnp.float32)
        if self.skip_nonfinite:
            if "loss" not in metrics:
                raise StepFnError.single(
                    "TX514",
                    f"the engine skips steps with a non-finite loss, but the step's metrics have no 'loss' "
                    f"(they have {sorted(metrics)})",
                    'return the loss as metrics["loss"], or build the Engine with nonfinite="raise"',
                )
            finite = jnp.all(jnp.isfinite(metrics["loss"]))
            new_state = _select(finite, new_state, state).replace(step=new_state.step, loss_scale=new_state.loss_scale)
            metrics["skipped"] = (~finite).astype(jnp.float32)
        return new_state, metrics

    def _accumulated(self, state: StepState, seen: Any, batch: Any) -> tuple[Any, Any]:
        k = self.accumulate_steps
        micro = jax.tree.map(lambda x: x.reshape(k, x.shape[0] // k, *x.shape[1:]), batch)
        traced: list[StepContext] = []

        def one_microbatch(grad_sum: Any, indexed: tuple[Any, Any]) -> tuple[Any, Any]:
            index, microbatch = indexed
            ctx = self._context(state, accumulate=True, microbatch=index)
            traced.append(ctx)
            with ctx.active():
                returned, metrics = self.fn(seen, microbatch)
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
            return jax.tree.map(jnp.add, grad_sum, ctx.grads), metrics

        # zeros_like of a varying value is varying, as a scan carry must be here.
        zeros = jax.tree.map(lambda s, p: jnp.zeros_like(s, dtype=p.dtype), seen.params, state.params)
        grad_sum, metrics = lax.scan(one_microbatch, zeros, (jnp.arange(k), micro))
        metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        self.applies_update = traced[-1].called
        if not traced[-1].called:
            return state, metrics
        grads = jax.tree.map(lambda g: g / k, grad_sum)
        return self._update(state, grads), metrics
