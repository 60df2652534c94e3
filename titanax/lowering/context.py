"""The step context: how ``state.apply_gradients`` inside a traced step reaches the lowering.

While the lowering traces a user's step function, a :class:`StepContext` is
active. ``TrainState.apply_gradients`` hands its gradients to it, and the
context decides what happens: synchronise them with the IR's collectives and
apply the optimizer (one microbatch), or only record them (accumulation). It
also carries what ``state.rng_key()`` and ``tx.value_and_grad`` need to know
about the step: the data-parallel axes, the microbatch index, the loss scale.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax

from titanax.errors import StepFnError

__all__ = [
    "StepContext",
    "StepState",
    "TraceRecorder",
    "active_recorder",
    "active_step_context",
    "outside_step_context",
    "recording",
]


class StepState(Protocol):
    """What the lowering needs from a training state."""

    params: Any

    def replace(self, **changes: Any) -> StepState:
        """Return a copy with ``changes`` applied."""
        ...

    def apply_update(self, grads: Any) -> StepState:
        """Apply already-synchronised gradients with the optimizer, communicating nothing."""
        ...

    @property
    def loss_scale(self) -> Any:
        """The float16 ``LossScale``, or ``None`` without loss scaling."""
        ...


_ACTIVE: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar("titanax_step", default=None)


class TraceRecorder:
    """What one trace of a step learns that the jaxpr does not show; read once the trace ends.

    :meth:`CompiledStep.trace <titanax.lowering.step.CompiledStep.trace>` makes a fresh one per
    trace and turns it into an immutable report; nothing is written onto long-lived objects.
    """

    def __init__(self) -> None:
        self.applies_update: bool | None = None
        """Whether the step called ``apply_gradients`` (evaluation steps do not)."""
        self.stage_flops: tuple[float, ...] = ()
        """Forward FLOPs per microbatch of each pipeline stage (XLA's cost analysis), under PP."""


_RECORDER: contextvars.ContextVar[TraceRecorder | None] = contextvars.ContextVar("titanax_recorder", default=None)


def active_recorder() -> TraceRecorder | None:
    """The recorder of the trace in progress, or ``None`` (a trace nobody asked to report on)."""
    return _RECORDER.get()


@contextlib.contextmanager
def recording() -> Iterator[TraceRecorder]:
    """Record the facts of the traces run inside the block into a fresh :class:`TraceRecorder`."""
    recorder = TraceRecorder()
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


def active_step_context() -> StepContext | None:
    """The context of the step being traced, or ``None`` outside a compiled step."""
    return _ACTIVE.get()


@contextlib.contextmanager
def outside_step_context() -> Iterator[None]:
    """Trace code as if no step were active (layers then use no mesh axes), then restore."""
    token = _ACTIVE.set(None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class StepContext:
    """Receives the gradients of one trace of the user's step function."""

    def __init__(
        self,
        *,
        state: StepState,
        update: Callable[[StepState, Any], tuple[StepState, Any]],
        accumulate: bool,
        tp_axes: tuple[str, ...] = (),
        dp_axes: tuple[str, ...] = (),
        sequence_parallel: bool = False,
        mesh_axes: tuple[str, ...] = (),
        pipeline: Any = None,
        loss_scale: Any = None,
        microbatch: Any = None,
        remat: str = "none",
        fsdp: Any = None,
    ):
        self._state = state
        self._update = update
        self._accumulate = accumulate
        self.dp_axes = dp_axes
        """The plan's data-parallel axes; ``state.rng_key()`` folds in the position along them."""
        self.loss_scale = loss_scale
        """The float16 loss scale (a scalar) the loss is multiplied by, or ``None`` without loss scaling."""
        self.loss_scaled = False
        """Set by ``tx.value_and_grad`` once it has scaled the loss of this step."""
        self.microbatch = microbatch
        """The accumulation microbatch index (a traced scalar), or ``None`` without accumulation."""
        self.tp_axes = tp_axes
        """The plan's tensor-parallel axes (empty without TP); ``titanax.nn`` layers read them."""
        self.sequence_parallel = sequence_parallel
        """Whether the plan shards activations along the sequence between TP regions."""
        self.mesh_axes = mesh_axes
        """Every mesh axis name, for checking the axes ``tx.collectives`` are given."""
        self.pipeline = pipeline
        """The plan's :class:`~titanax.lowering.pipeline.PipelineProgram`, or ``None`` without PP."""
        self.remat = remat
        """The remat policy of the stacked blocks (``none``, ``dots`` or ``full``), from the IR."""
        self.fsdp = fsdp
        """Under FSDP stage 3 without accumulation, the :class:`~titanax.lowering.fully_sharded.FSDPPlan`
        whose gathers ``tx.value_and_grad`` and ``tx.pipeline.value_and_grad`` run; else ``None``."""
        self.param_structure = jax.tree.structure(state.params)
        """The tree structure of the state's parameters (how ``tx.value_and_grad`` finds them among its arguments)."""
        self.fsdp_gathered = False
        """Set once ``tx.value_and_grad`` (or ``tx.pipeline.value_and_grad``) gathered the FSDP shards."""
        self.grads: Any = None
        self.overflow: Any = None
        """Under float16 loss scaling, whether the applied gradients overflowed (a traced bool)."""
        self.pipeline_used = False
        """Set by ``tx.pipeline.value_and_grad`` once it ran the plan's schedule in this trace."""
        self.called = False
        self.returned: Any = None
        """Under accumulation, the state ``apply_gradients`` returned (edits after it cannot be kept)."""

    @contextlib.contextmanager
    def active(self) -> Iterator[StepContext]:
        """Make this the context ``apply_gradients`` talks to, for the duration of the block."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def apply_gradients(self, seen_state: StepState, grads: Any) -> StepState:
        """Take the step's gradients; return the state the user's function should see next."""
        if self.called:
            raise StepFnError.single(
                "TX501",
                "state.apply_gradients was called twice in one step",
                "compute all gradients first, then call apply_gradients once per step",
            )
        expected, got = jax.tree.structure(self._state.params), jax.tree.structure(grads)
        if expected != got:
            raise StepFnError.single(
                "TX502",
                f"gradients do not match the parameters: params are {expected}, grads are {got}",
                "differentiate with respect to state.params, e.g. jax.grad(loss)(state.params)",
            )
        if self.loss_scale is not None and not self.loss_scaled:
            raise StepFnError.single(
                "TX513",
                "the plan computes in float16, which needs dynamic loss scaling, but the gradients were not taken "
                "with tx.value_and_grad (or tx.pipeline.value_and_grad)",
                "write loss, grads = tx.value_and_grad(loss_fn)(state.params): it scales the loss, and "
                "apply_gradients unscales the gradients and skips a step that overflowed",
            )
        if self.fsdp is not None and not self.fsdp_gathered:
            raise StepFnError.single(
                "TX519",
                "the plan shards parameters (FSDP stage 3), but the gradients were not taken with "
                "tx.value_and_grad or tx.pipeline.value_and_grad, which gather the shards before use",
                "write loss, grads = tx.value_and_grad(loss_fn)(state.params, batch) (or "
                "tx.pipeline.value_and_grad(model, state.params, batch) for stacked blocks)",
            )
        # Under a precision policy the gradients come in the compute dtype; the sync and the
        # optimizer work in the master parameters' dtype.
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, self._state.params)
        self.called, self.grads = True, grads
        if self._accumulate:
            self.returned = seen_state
            return seen_state
        # Keep any edits the user made to the state, but update the replicated parameters:
        # the ones the user saw are marked varying only so that autodiff stays local.
        new_state, self.overflow = self._update(seen_state.replace(params=self._state.params), grads)
        return new_state
