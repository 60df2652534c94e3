"""``Engine``: compiles the plan for the devices at hand and runs steps under it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from titanax.errors import Diagnostic, OptimizerError, PlanError
from titanax.frontend import MeshSpec, Plan
from titanax.ir import PlanIR, print_ir
from titanax.lowering import (
    available_devices,
    make_jax_mesh,
    optimizer_state_specs,
    param_paths_and_shapes,
    param_specs,
)
from titanax.passes import CheckStageBalance, PassPipeline, ResolveShardings, Target, compile_plan
from titanax.runtime.loggers import Logger
from titanax.runtime.optim import is_gradient_transformation
from titanax.runtime.state import TrainState

__all__ = ["Engine"]

P = jax.P


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


def _check_lowerable(ir: PlanIR) -> None:
    # float16 needs dynamic loss scaling to train; refuse it rather than train badly.
    policy = ir.precision()
    if policy is not None and "float16" in (policy.params, policy.compute, policy.output):
        raise PlanError(
            Diagnostic(
                code="TX230",
                message="the precision policy uses float16, which needs dynamic loss scaling that the Engine does not apply yet",
                hint="use bfloat16 for compute (same exponent range as float32, no loss scaling needed)",
                location=policy.location,
            )
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
    ):
        _check_optimizer(optimizer)
        self.mesh_spec = mesh
        self.plan = plan
        self.optimizer = optimizer
        self.loggers = tuple(loggers)
        self._target = Target(device_count=len(available_devices(mesh)), platform=jax.default_backend())
        self.plan_ir: PlanIR = compile_plan(mesh, plan, target=self._target)
        """The plan IR after every default pass, before any parameters are known."""
        _check_lowerable(self.plan_ir)
        self.ir: PlanIR = self.plan_ir
        """The plan IR; after :meth:`create_state` it also lists every parameter's layout."""
        self.state_specs: Any = None
        """Partition specs of the ``TrainState`` fields, set by :meth:`create_state`."""
        self.layout_version = 0
        """Bumped by each :meth:`create_state`, so compiled steps know when layouts changed."""
        self.mesh: jax.sharding.Mesh = make_jax_mesh(self.ir, mesh)
        """The JAX mesh the steps run on."""
        self.host_step = 0
        """Steps run through this engine, counted on the host (used to decide when to log)."""

    @property
    def device_count(self) -> int:
        """Devices in the mesh."""
        return math.prod(self.mesh.shape.values())

    def describe(self) -> str:
        """The compiled plan IR as text."""
        return print_ir(self.ir)

    def create_state(self, params: Any, *, stacked: str | tuple[str, ...] = ()) -> TrainState:
        """Lay ``params`` out on the mesh as the plan says and initialise the optimizer state.

        Shard rules are resolved against the parameter tree here (errors name the
        path, shape and axis). Each device receives only its shard of a
        tensor-parallel parameter, and the optimizer state follows the same layout.
        The parameters are copied, which matters because steps donate their input
        state: donating must never delete arrays the caller still holds.

        ``stacked`` names entries whose leaves stack identical layers on dimension 0
        (``"blocks"`` for a ``tx.PipelineModel``): shard rules then apply to each layer's
        shape. A pipeline plan's blocks entry is always treated so.
        """
        # A real copy, with an explicit dtype: device_put(may_alias=False) still reuses an
        # uncommitted array's buffer for a multi-device sharding (seen with jax 0.10.2), and
        # donation would then delete the caller's array. The explicit dtype drops JAX's
        # weak types, which step outputs never carry (a weak input would recompile).
        params = jax.tree.map(lambda x: jnp.array(x, dtype=self._master_dtype(jnp.asarray(x).dtype), copy=True), params)
        stacked = (stacked,) if isinstance(stacked, str) else tuple(stacked)
        resolve = ResolveShardings(parameters=param_paths_and_shapes(params), stacked=stacked)
        self.ir = PassPipeline([resolve, CheckStageBalance()]).run(self.plan_ir, self._target)
        specs = param_specs(self.ir, params)
        params = jax.tree.map(
            lambda x, spec: jax.device_put(x, NamedSharding(self.mesh, spec), may_alias=False), params, specs
        )
        opt_specs = optimizer_state_specs(jax.eval_shape(self.optimizer.init, params), params, specs)
        init = jax.shard_map(
            self.optimizer.init, mesh=self.mesh, in_specs=(specs,), out_specs=opt_specs, check_vma=True
        )
        opt_state = jax.jit(init)(params)
        step = jax.device_put(jnp.zeros((), jnp.int32), NamedSharding(self.mesh, P()))
        self.host_step = 0
        self.state_specs = TrainState(step=P(), params=specs, opt_state=opt_specs, engine=self)
        self.layout_version += 1
        return TrainState(step=step, params=params, opt_state=opt_state, engine=self)

    def _master_dtype(self, dtype: Any) -> Any:
        """The dtype a parameter is stored in: the policy's ``params`` for floating ones."""
        policy = self.plan_ir.precision()
        if policy is None or not jnp.issubdtype(dtype, jnp.floating):
            return dtype
        return jnp.dtype(policy.params)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Send scalar ``metrics`` to every logger due at ``step`` (default: the host step)."""
        step = self.host_step if step is None else step
        due = [logger for logger in self.loggers if step % logger.every == 0]
        if not due:
            return
        scalars = {name: float(value) for name, value in metrics.items() if jnp.ndim(value) == 0}
        for logger in due:
            logger.log(step, scalars)

    def close(self) -> None:
        """Close every logger."""
        for logger in self.loggers:
            logger.close()
