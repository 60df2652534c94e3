"""``@tx.step_fn``: turn a ``(state, batch) -> (state, metrics)`` function into a compiled step."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

from titanax.errors import StepFnError
from titanax.ir import PlanIR
from titanax.lowering import CollectiveAudit, CompiledStep, StepReport, audit_collectives
from titanax.passes import AnnotatePayloads, InsertTracedCollectives, PassPipeline
from titanax.runtime.engine import Engine
from titanax.runtime.state import TrainState

__all__ = ["StepFn", "step_fn"]


class StepFn:
    """A step function compiled under the plan of the engine its state belongs to.

    Calling it runs one training step: ``new_state, metrics = step(state, batch)``.
    The input state is donated (its buffers reused for the output) unless
    ``donate_state=False``: keep using the returned state, not the old one.
    """

    def __init__(self, fn: Callable[[Any, Any], tuple[Any, Any]], *, donate_state: bool = True):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.donate_state = donate_state
        self._compiled: weakref.WeakKeyDictionary[Engine, tuple[int, CompiledStep]] = weakref.WeakKeyDictionary()

    def compiled(self, state: TrainState) -> CompiledStep:
        """The :class:`CompiledStep` for ``state``'s engine (built on first use)."""
        if not isinstance(state, TrainState):
            raise StepFnError.single(
                "TX503",
                f"a @tx.step_fn takes the TrainState as its first argument, got {type(state).__name__}",
                "create it with state = engine.create_state(params)",
            )
        engine = state.engine
        version, compiled = self._compiled.get(engine, (None, None))
        if version != engine.layout_version or compiled is None:
            compiled = CompiledStep(
                self.fn,
                engine.ir,
                engine.mesh,
                donate_state=self.donate_state,
                state_specs=engine.state_specs,
                skip_nonfinite=engine.nonfinite == "skip",
            )
            self._compiled[engine] = (engine.layout_version, compiled)
        return compiled

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, Any]:
        """Run one step; a training step sends its metrics to the engine's loggers that are due."""
        new_state, metrics = self.run(state, batch)
        if state.engine.loggers and self.compiled(state).applies_update:
            state.engine.log(metrics)
        return new_state, metrics

    def run(self, state: TrainState, batch: Any) -> tuple[TrainState, Any]:
        """Run one step without logging; a training step (one that applies gradients) advances
        ``engine.host_step``, an evaluation step does not."""
        compiled = self.compiled(state)
        new_state, metrics = compiled(state, batch)
        if compiled.applies_update:
            state.engine.host_step += 1
        return new_state, metrics

    def lower(self, state: TrainState, batch: Any) -> Any:
        """JAX's ``Lowered`` for this step: ``.as_text()``, ``.compile().as_text()``,
        ``.compile().cost_analysis()``, ``.compile().memory_analysis()``."""
        return self.compiled(state).lower(state, batch)

    def plan_ir(self, state: TrainState, batch: Any) -> PlanIR:
        """The IR of this step: the engine's plan and parameter layouts, every collective the
        step's own code performs (traced from its jaxpr), and the bytes and dtypes each moves per
        execution on this backend, with how many times it runs per step.
        """
        return self.annotate(state, self.trace(state, batch))

    def trace(self, state: TrainState, batch: Any) -> StepReport:
        """Trace the step (without running it) and report what it does: see :class:`StepReport`."""
        compiled = self.compiled(state)
        report = compiled.trace(state, batch)
        if compiled.report is None:
            compiled.report = report
        return report

    def audit(self, state: TrainState, batch: Any) -> CollectiveAudit:
        """Compile the step and compare its HLO's collectives with the IR's, row by row.

        ``audit.ok`` is True when the compiled program communicates exactly what the IR lists
        (kind, mesh axes, reduction, permute pairs, runs per step, bytes and dtypes);
        ``audit.table()`` shows both sides. Compiles, but does not run, the step.
        """
        ir = self.plan_ir(state, batch)
        hlo = self.lower(state, batch).compile().as_text()
        return audit_collectives(ir, hlo, state.engine.mesh.shape)

    @staticmethod
    def annotate(state: TrainState, report: StepReport) -> PlanIR:
        """The engine's IR with the facts of ``report`` applied: user collectives listed, payloads set."""
        engine = state.engine
        pipeline = PassPipeline(
            [
                InsertTracedCollectives(collectives=report.user_collectives()),
                AnnotatePayloads(node_payloads=report.node_payloads(engine.ir)),
            ]
        )
        return pipeline.run(engine.ir, engine.target)


def step_fn(fn: Callable[[Any, Any], tuple[Any, Any]] | None = None, *, donate_state: bool = True) -> Any:
    """Decorate a training step ``(state, batch) -> (state, metrics)``.

    Inside it, compute gradients of ``state.params`` and call
    ``state.apply_gradients(grads=...)`` once; the plan adds the collectives.

    Example::

        @tx.step_fn
        def train_step(state, batch):
            loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
            return state.apply_gradients(grads=grads), {"loss": loss}
    """
    if fn is None:
        return functools.partial(step_fn, donate_state=donate_state)
    return StepFn(fn, donate_state=donate_state)
