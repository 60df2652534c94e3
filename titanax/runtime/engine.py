"""``Engine``: compiles the plan for the devices at hand and runs steps under it."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from titanax.errors import OptimizerError, TrainingError
from titanax.frontend import MeshSpec, Plan
from titanax.ir import PlanIR, print_ir
from titanax.ir.stage_split import stage_split
from titanax.lowering import (
    FSDPPlan,
    LossScale,
    available_devices,
    make_jax_mesh,
    optimizer_state_specs,
    param_paths_and_shapes,
    param_specs,
    place_global,
    replicated_spec,
    update_specs,
)
from titanax.passes import (
    DEFAULT_PASSES,
    CheckStageBalance,
    InsertFSDPCollectives,
    PassPipeline,
    ResolveShardings,
    Target,
    compile_plan,
)
from titanax.runtime import distributed
from titanax.runtime.checkpoint import Checkpoint, Checkpointer
from titanax.runtime.fit import fit as run_fit
from titanax.runtime.layer_order import BlockOrder, BlockPadding
from titanax.runtime.loggers import Logger, host_scalars
from titanax.runtime.memory import StateMemory, estimate_memory
from titanax.runtime.optim import is_gradient_transformation
from titanax.runtime.profile import Profile
from titanax.runtime.state import TrainState

if TYPE_CHECKING:
    from titanax.runtime.step_fn import StepFn

__all__ = ["Engine"]

P = jax.P


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TrainingError.single(
            "TX720", f"create_state(seed={seed!r}) must be an integer", "write engine.create_state(params, seed=0)"
        )
    return seed


def _check_optimizer(optimizer: Any) -> None:
    if is_gradient_transformation(optimizer):
        return
    hint = "pass tx.optim.sgd(0.01), tx.optim.adamw(3e-4) or any optax.GradientTransformation"
    if callable(optimizer) and getattr(optimizer, "__module__", "").startswith("optax"):
        hint = f"{optimizer.__name__} is an optax factory: call it, e.g. optimizer={optimizer.__name__}(1e-3)"
    raise OptimizerError.single(
        "TX401",
        f"optimizer must be an optax gradient transformation, got {type(optimizer).__name__}: {optimizer!r}",
        hint,
    )


def _check_trainable(params: Any) -> None:
    """Every parameter leaf is a floating array (gradients exist only for those): TX723 otherwise."""
    problems = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        try:
            dtype = leaf.dtype if hasattr(leaf, "dtype") else np.result_type(leaf)
        except TypeError:
            problems.append(f"{jax.tree_util.keystr(path)} is a {type(leaf).__name__}")
            continue
        if not jnp.issubdtype(dtype, jnp.floating):
            problems.append(f"{jax.tree_util.keystr(path)} has dtype {dtype}")
    if problems:
        listing = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        raise TrainingError.single(
            "TX723",
            f"create_state(params) takes trainable floating-point arrays only, but {listing}",
            "keep integer tables, step counters and other non-trainable values out of params: in the batch, in "
            "a closure of the step function, or converted to float if they are meant to train",
        )


class Engine:
    """The mesh, the compiled plan, the optimizer and the loggers of a training run.

    Building an Engine validates everything it can before any XLA compile:
    the optimizer, the mesh against the devices, and the plan against the mesh.

    Example::

        engine = tx.Engine(mesh=tx.MeshSpec(axes=("data",)),
                           plan=tx.Plan(data_parallel=tx.DP(axis="data")),
                           optimizer=tx.optim.sgd(0.01))
        state = engine.create_state(params)
    """

    def __init__(
        self,
        *,
        mesh: MeshSpec,
        plan: Plan,
        optimizer: optax.GradientTransformation,
        loggers: Sequence[Logger] = (),
        checkpoint: Checkpoint | None = None,
        nonfinite: str = "raise",
    ):
        _check_optimizer(optimizer)
        # Under `titanax launch` a script that never called tx.distributed.initialize() still
        # joins the other processes here, provided nothing has used JAX yet (else TX741 says so).
        if os.environ.get(distributed.ENV_COORDINATOR):
            distributed.initialize()
        if nonfinite not in ("raise", "skip"):
            raise TrainingError.single(
                "TX720",
                f"Engine(nonfinite={nonfinite!r}) must be 'raise' or 'skip'",
                "'raise' stops fit() at the first non-finite loss, naming the step; 'skip' drops that step's update",
            )
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise TrainingError.single(
                "TX720",
                f"Engine(checkpoint=...) must be a tx.Checkpoint, got {type(checkpoint).__name__}",
                "write checkpoint=tx.Checkpoint('runs/ckpt', every=500, keep=3)",
            )
        self.mesh_spec = mesh
        self.plan = plan
        self.optimizer = optimizer
        self.loggers = tuple(loggers)
        self.checkpoint = checkpoint
        """Where and how often :meth:`fit` saves, or ``None``."""
        self.nonfinite = nonfinite
        """``"raise"``: :meth:`fit` stops at a non-finite loss; ``"skip"``: the step keeps the old parameters."""
        self.target = Target(device_count=len(available_devices(mesh)), platform=jax.default_backend())
        """What the plan is compiled for: the device count and the backend (whose collective dtypes the IR models)."""
        # Skipping non-finite updates under split state needs one more collective (see its pass).
        guard = ("insert-nonfinite-guard",) if nonfinite == "skip" else ()
        self.plan_ir: PlanIR = compile_plan(mesh, plan, target=self.target, passes=(*DEFAULT_PASSES, *guard))
        """The plan IR after every default pass, before any parameters are known."""
        self.ir: PlanIR = self.plan_ir
        """The plan IR; after :meth:`create_state` it also lists every parameter's layout."""
        self.state_memory: StateMemory | None = None
        """Per-device bytes of parameters, gradients and optimizer state, once parameters are laid out."""
        self.state_specs: Any = None
        """Partition specs of the ``TrainState`` fields, set by :meth:`create_state`."""
        self.layout_version = 0
        """Bumped by each :meth:`create_state`, so compiled steps know when layouts changed."""
        self.mesh: jax.sharding.Mesh = make_jax_mesh(self.ir, mesh)
        """The JAX mesh the steps run on."""
        pp = self.plan_ir.pipeline_parallel()
        self.block_order: BlockOrder | None = None
        """Under an interleaved pipeline, how the state stores the blocks (storage order, see
        :mod:`titanax.runtime.layer_order`); ``None`` when it stores them in model order."""
        if pp is not None and pp.virtual_stages > 1:
            self.block_order = BlockOrder(pp.axes[0], self.mesh.shape[pp.axes[0]], pp.virtual_stages)
        split = stage_split(self.plan_ir)
        self.block_padding: BlockPadding | None = None
        """When stages run different numbers of layers, how the state pads the blocks; else ``None``."""
        if pp is not None and split is not None and not split.even:
            self.block_padding = BlockPadding(pp.axes[0], split.counts)
        self._blocks_entry = pp.blocks if pp is not None else None
        self.host_step = 0
        """Training steps run through this engine, counted on the host (used to decide when to log);
        evaluation steps, which apply no gradients, are not counted. Restoring sets it."""
        self.data_position = 0
        """How many batches the training data has delivered (saved in checkpoints, restored by fit)."""
        self._checkpointer: Checkpointer | None = None
        self.last_state: TrainState | None = None
        """The newest state :meth:`create_state`, :meth:`restore` or :meth:`fit` produced; :meth:`fit`
        trains it when given no ``state``."""
        self.eval_history: list[tuple[int, dict[str, float]]] = []
        """``(step, metrics)`` of every evaluation :meth:`fit` ran."""

    @property
    def device_count(self) -> int:
        """Devices in the mesh."""
        return math.prod(self.mesh.shape.values())

    def params_in_model_order(self, state: TrainState) -> Any:
        """``state.params`` with the stacked blocks in model order (layer ``k`` at index ``k``).

        Only an interleaved pipeline and stages of different sizes store them otherwise. Under an
        interleaved pipeline the stack is exchanged over the pipeline axis (``ppermute``) and keeps its
        layout; padded stages are gathered over the pipeline axis (``all_gather``) and the padding dropped,
        so that stack comes back whole on every device of the axis.
        """
        if self.block_order is not None:
            return self.block_order.to_model(state.params)
        if self.block_padding is not None:
            return self.block_padding.to_model(state.params)
        return state.params

    def describe(self) -> str:
        """The compiled plan IR as text; once parameters are laid out (:meth:`create_state`,
        :meth:`abstract_state`), followed by the per-device bytes of parameters, gradients and
        optimizer state, next to what plain data parallelism would hold (:class:`StateMemory`)."""
        text = print_ir(self.ir)
        return text if self.state_memory is None else text + self.state_memory.table()

    def _count_state(self, params: Any, opt_state: Any, specs: Any, updated_specs: Any) -> None:
        """Record :attr:`state_memory` for ``params`` and ``opt_state`` (arrays or shapes with shardings),
        given the parameters' specs and the specs of their updates (:func:`update_specs`)."""
        fsdp = self.ir.fully_sharded()
        # FSDP stages 2 and 3 keep gradients reduce-scattered, in the optimizer state's layout.
        grad_specs = updated_specs if fsdp is not None and fsdp.stage >= 2 else specs
        grads = jax.tree.map(
            lambda x, spec: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(self.mesh, spec)),
            params,
            grad_specs,
        )
        self.state_memory = StateMemory.of(params, grads, opt_state)

    def create_state(self, params: Any, *, seed: int = 0, stacked: str | tuple[str, ...] = ()) -> TrainState:
        """Lay ``params`` out on the mesh as the plan says and initialise the optimizer state.

        Shard rules are resolved against the parameter tree here (errors name the
        path, shape and axis). Each device receives only its shard of a
        tensor-parallel parameter, and the optimizer state follows the same layout.
        The parameters are copied, which matters because steps donate their input
        state: donating must never delete arrays the caller still holds.

        ``stacked`` names entries whose leaves stack identical layers on dimension 0
        (``"blocks"`` for a ``tx.PipelineModel``): shard rules then apply to each layer's
        shape. A pipeline plan's blocks entry is always treated so.

        ``seed`` makes the state's RNG key (see :meth:`TrainState.rng_key`).
        """
        # Layouts first: a rule that does not fit is reported before any array is copied or compiled.
        self._resolve_layouts(params, stacked)
        # A real copy, with an explicit dtype: device_put(may_alias=False) still reuses an
        # uncommitted array's buffer for a multi-device sharding (seen with jax 0.10.2), and
        # donation would then delete the caller's array. The explicit dtype drops JAX's
        # weak types, which step outputs never carry (a weak input would recompile).
        params = jax.tree.map(lambda x: jnp.array(x, dtype=self._master_dtype(jnp.asarray(x).dtype), copy=True), params)
        layout = self.block_order or self.block_padding
        if layout is not None and isinstance(params, dict) and self._blocks_entry in params:
            # Each device's shard must hold its own chunks, or its stage padded: arrange before placing, on the host.
            params = {**params, self._blocks_entry: jax.tree.map(layout.to_storage_host, params[self._blocks_entry])}
        specs, updated_specs = param_specs(self.ir, params), update_specs(self.ir, params)
        params = jax.tree.map(lambda x, spec: place_global(x, NamedSharding(self.mesh, spec)), params, specs)
        opt_specs = optimizer_state_specs(jax.eval_shape(self.optimizer.init, params), params, updated_specs)
        fsdp = FSDPPlan.from_ir(self.ir)
        # Under FSDP stages 1 and 2 each device initialises the optimizer state of its own slice.
        sliced = fsdp.take_shards if fsdp is not None and fsdp.stage < 3 else (lambda p: p)
        init = jax.shard_map(
            lambda p: self.optimizer.init(sliced(p)),
            mesh=self.mesh,
            in_specs=(specs,),
            out_specs=opt_specs,
            check_vma=True,
        )
        opt_state = jax.jit(init)(params)
        replicated = NamedSharding(self.mesh, P())
        step = place_global(np.zeros((), np.int32), replicated)
        # Replicated arrays come out of a step with one None per dimension; the same spec here
        # keeps the second step from recompiling.
        rng = place_global(
            jax.random.key_data(jax.random.key(_check_seed(seed))), NamedSharding(self.mesh, replicated_spec(1))
        )
        policy = self.plan_ir.precision()
        loss_scale = None
        if policy is not None and policy.loss_scaling == "dynamic":
            loss_scale = jax.tree.map(lambda x: place_global(x, replicated), LossScale.initial(policy.loss_scale_init))
        self.host_step = 0
        self.data_position = 0
        self._adopt_layouts(specs, opt_specs, loss_scale is not None)
        self._count_state(params, opt_state, specs, updated_specs)
        state = TrainState(step=step, params=params, opt_state=opt_state, rng=rng, loss_scale=loss_scale, engine=self)
        self.last_state = state
        return state

    def _resolve_layouts(self, params: Any, stacked: str | tuple[str, ...]) -> None:
        """Check the parameters are trainable and resolve their layouts into ``self.ir`` (errors included)."""
        _check_trainable(params)
        stacked = (stacked,) if isinstance(stacked, str) else tuple(stacked)
        resolve = ResolveShardings(parameters=param_paths_and_shapes(params), stacked=stacked)
        self.ir = PassPipeline([resolve, CheckStageBalance(), InsertFSDPCollectives()]).run(self.plan_ir, self.target)

    def _adopt_layouts(self, specs: Any, opt_specs: Any, loss_scaled: bool) -> None:
        """Make these the specs of the engine's state, so compiled steps rebuild for the new layouts."""
        self.state_specs = TrainState(
            step=P(),
            params=specs,
            opt_state=opt_specs,
            rng=P(),
            loss_scale=LossScale(scale=P(), good_steps=P()) if loss_scaled else None,
            engine=self,
        )
        self.layout_version += 1

    def abstract_state(self, params: Any, *, stacked: str | tuple[str, ...] = ()) -> TrainState:
        """The state :meth:`create_state` would make, as shapes, dtypes and shardings only.

        Nothing is placed on a device: ``params`` may be arrays or ``jax.ShapeDtypeStruct`` s.
        Steps lower and compile on it (``step.lower(state, batch)`` with a batch of
        ``ShapeDtypeStruct`` s), which is how :meth:`memory_estimate` prices a plan before
        anything is allocated. Like ``create_state`` it resolves the layouts (errors included)
        and makes them the engine's.
        """
        self._resolve_layouts(params, stacked)
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), self._master_dtype(x.dtype)), params)
        if self.block_padding is not None and isinstance(shapes, dict) and self._blocks_entry in shapes:
            rows = self.block_padding.rows * len(self.block_padding.counts)  # stored padded, as create_state does
            shapes = {
                **shapes,
                self._blocks_entry: jax.tree.map(
                    lambda x: jax.ShapeDtypeStruct((rows, *x.shape[1:]), x.dtype), shapes[self._blocks_entry]
                ),
            }
        specs, updated_specs = param_specs(self.ir, shapes), update_specs(self.ir, shapes)

        def placed(x: Any, spec: P) -> jax.ShapeDtypeStruct:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(self.mesh, spec))

        params_abs = jax.tree.map(placed, shapes, specs)
        opt_shapes = jax.eval_shape(self.optimizer.init, params_abs)
        opt_specs = optimizer_state_specs(opt_shapes, params_abs, updated_specs)
        opt_abs = jax.tree.map(placed, opt_shapes, opt_specs, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
        step = placed(jax.ShapeDtypeStruct((), jnp.int32), P())
        rng = placed(jax.ShapeDtypeStruct((2,), jnp.uint32), replicated_spec(1))
        policy = self.plan_ir.precision()
        loss_scale = None
        if policy is not None and policy.loss_scaling == "dynamic":
            initial = LossScale.initial(policy.loss_scale_init)
            loss_scale = jax.tree.map(lambda x: placed(jax.ShapeDtypeStruct(x.shape, x.dtype), P()), initial)
        self._adopt_layouts(specs, opt_specs, loss_scale is not None)
        self._count_state(params_abs, opt_abs, specs, updated_specs)
        return TrainState(step=step, params=params_abs, opt_state=opt_abs, rng=rng, loss_scale=loss_scale, engine=self)

    def memory_estimate(self, step: StepFn, params: Any, batch: Any, *, stacked: str | tuple[str, ...] = ()) -> Any:
        """Per-device bytes the plan needs for ``step`` on ``params`` and ``batch``, before anything is allocated.

        Compiles the step ahead of time on :meth:`abstract_state` and the batch's shapes and reads
        XLA's ``memory_analysis``: see :class:`~titanax.runtime.memory.MemoryEstimate`.
        """
        return estimate_memory(self, step, params, batch, stacked=stacked)

    # -- checkpoints -------------------------------------------------------
    @property
    def checkpointer(self) -> Checkpointer:
        """The orbax checkpoint manager for ``checkpoint`` (built on first use)."""
        if self.checkpoint is None:
            raise TrainingError.single(
                "TX720",
                "this Engine has no checkpoint directory",
                "build it with tx.Engine(..., checkpoint=tx.Checkpoint('runs/ckpt', every=500))",
            )
        if self._checkpointer is None:
            self._checkpointer = Checkpointer(self.checkpoint)
        return self._checkpointer

    def save(self, state: TrainState) -> None:
        """Save ``state`` as a checkpoint of the current host step (asynchronously unless configured not to).

        Every process must call it; orbax writes each array's shards from the process that holds them.
        The first save makes this engine the directory's only writer (another run writing there is
        TX707). A state holding Inf or NaN values is not saved (TX712); a failure to write is TX706.
        """
        if self.block_order is not None:  # checkpoints hold the blocks in model order, for any plan
            state = state.replace(
                params=self.block_order.to_model(state.params), opt_state=self.block_order.to_model(state.opt_state)
            )
        self.checkpointer.save(
            state,
            host_step=self.host_step,
            data_position=self.data_position,
            mesh=self.mesh,
            plan_ir=self.describe(),
        )

    def restore(self, state: TrainState, step: int | None = None) -> TrainState:
        """Read checkpoint ``step`` (default: the latest complete one) into ``state``'s layout.

        ``state`` comes from this engine's :meth:`create_state` and says where each
        array goes: the checkpoint may have been saved under another mesh, plan or
        process count. Sets :attr:`host_step` and :attr:`data_position` from it.
        A checkpoint of another model, a foreign directory, damaged files, an array whose
        checksum differs from the one saved (TX708) or metadata that breaks its schema (TX709)
        raise :class:`~titanax.CheckpointError`, and Inf or NaN values :class:`~titanax.NonFiniteError`
        (TX712); each leaves ``state`` and :attr:`host_step` untouched.
        """
        tree, meta = self.checkpointer.restore(state, step)
        if self.block_order is not None:
            tree = {
                **tree,
                "params": self.block_order.to_storage(tree["params"]),
                "opt_state": self.block_order.to_storage(tree["opt_state"]),
            }
        self.host_step = int(meta["host_step"])
        self.data_position = int(meta["data_position"])
        loss_scale = None
        if "loss_scale" in tree:
            loss_scale = LossScale(scale=tree["loss_scale"]["scale"], good_steps=tree["loss_scale"]["good_steps"])
        self.last_state = state.replace(
            step=tree["step"],
            params=tree["params"],
            opt_state=tree["opt_state"],
            rng=tree["rng"],
            loss_scale=loss_scale,
        )
        return self.last_state

    # -- the training loop --------------------------------------------------
    def fit(
        self,
        step_fn: StepFn,
        data: Any,
        *,
        steps: int,
        state: TrainState | None = None,
        eval_fn: Callable[[TrainState], Mapping[str, Any]] | None = None,
        eval_every: int | None = None,
        log_every: int | None = None,
        progress: bool = True,
        resume: bool = False,
        tokens_per_sample: int | None = None,
        profile: Profile | None = None,
    ) -> TrainState:
        """Train until the host step reaches ``steps``; return the final state.

        See :func:`titanax.runtime.fit.fit` for every argument. Example::

            state = engine.fit(train_step, tx.data.ArrayLoader(arrays, 128), steps=1000,
                               eval_fn=evaluate, eval_every=250, log_every=50)
        """
        return run_fit(
            self,
            step_fn,
            data,
            steps=steps,
            state=state if state is not None else self.last_state,
            eval_fn=eval_fn,
            eval_every=eval_every,
            log_every=log_every,
            progress=progress,
            resume=resume,
            tokens_per_sample=tokens_per_sample,
            profile=profile,
        )

    def _master_dtype(self, dtype: Any) -> Any:
        """The dtype a parameter is stored in: the policy's ``params`` for floating ones."""
        policy = self.plan_ir.precision()
        if policy is None or not jnp.issubdtype(dtype, jnp.floating):
            return dtype
        return jnp.dtype(policy.params)

    def log(self, metrics: Mapping[str, Any], step: int | None = None, *, force: bool = False) -> None:
        """Send scalar ``metrics`` to every logger due at ``step`` (default: the host step).

        Nested dicts are flattened as ``outer/inner``; arrays with dimensions are left out, and so are
        values that are not numbers, with a warning naming them.

        A logger is due when ``step`` is a multiple of its ``every``, or always with ``force``
        (``fit`` forces its own log intervals and evaluations). Values cross to the host only
        when some logger is due.
        """
        step = self.host_step if step is None else step
        due = [logger for logger in self.loggers if force or step % logger.every == 0]
        if not due or not isinstance(metrics, Mapping):
            return
        scalars = host_scalars(metrics)
        for logger in due:
            logger.log(step, scalars)

    def close(self) -> None:
        """Wait for pending checkpoint saves, then close every logger."""
        checkpointer, self._checkpointer = self._checkpointer, None
        try:
            if checkpointer is not None:
                checkpointer.close()
        finally:
            for logger in self.loggers:
                logger.close()
