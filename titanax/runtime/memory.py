"""Memory before launch: what a plan's step needs on each device, from an ahead-of-time compile.

:func:`estimate_memory` lays the parameters out abstractly (``Engine.abstract_state``: shapes,
dtypes and shardings, nothing placed), lowers and compiles the step on them and on the batch's
shapes, and reads XLA's ``memory_analysis`` of that program: the very numbers the real step's
compile gives, since it is the same program. Parameters and optimizer state are also counted
from their shardings, so the report says what each holds per device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax

if TYPE_CHECKING:
    from titanax.runtime.engine import Engine
    from titanax.runtime.step_fn import StepFn

__all__ = ["MemoryEstimate", "StateMemory", "estimate_memory"]


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _per_device(tree: Any) -> int:
    """Bytes one device holds of ``tree``'s arrays (each leaf's shard), the most any device holds."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def _whole(tree: Any) -> int:
    """Bytes of ``tree``'s arrays taken whole: what every device holds under plain data parallelism."""
    return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


@dataclass(frozen=True)
class StateMemory:
    """Per-device bytes of the training state under the plan, next to what plain data parallelism holds.

    Gradients are counted as the step keeps them: in the parameters' layout, or in the optimizer
    state's (shards) where FSDP stage 2 or 3 reduce-scatters them.
    """

    parameters: int
    gradients: int
    optimizer_state: int
    whole_parameters: int
    """What plain data parallelism holds per device (every array whole)."""
    whole_optimizer_state: int

    @classmethod
    def of(cls, params: Any, gradients: Any, opt_state: Any) -> StateMemory:
        """Count arrays or ``ShapeDtypeStruct`` s with shardings (``gradients``: shapes in their layout)."""
        return cls(
            parameters=_per_device(params),
            gradients=_per_device(gradients),
            optimizer_state=_per_device(opt_state),
            whole_parameters=_whole(params),
            whole_optimizer_state=_whole(opt_state),
        )

    def table(self) -> str:
        """The three rows, per device, with plain DP's figure beside each."""
        rows = [
            ("parameters", self.parameters, self.whole_parameters),
            ("gradients", self.gradients, self.whole_parameters),
            ("optimizer state", self.optimizer_state, self.whole_optimizer_state),
            (
                "total",
                self.parameters + self.gradients + self.optimizer_state,
                2 * self.whole_parameters + self.whole_optimizer_state,
            ),
        ]
        lines = [f"per-device state bytes{'':<10} {'this plan':>14} {'plain DP':>14} {'ratio':>7}"]
        for name, mine, whole in rows:
            ratio = f"{mine / whole:.3f}" if whole else "-"
            lines.append(f"  {name:<30} {mine:>14,} {whole:>14,} {ratio:>7}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-device bytes of one compiled step, before anything is allocated."""

    parameters: int
    """The device's shards of the parameters."""
    optimizer_state: int
    """The device's shards of the optimizer state."""
    other_state: int
    """Step counter, RNG key and loss scale."""
    batch: int
    """The device's share of the batch."""
    temporaries: int
    """XLA's temporary buffers: gradients, activations, pipeline stashes, collectives' buffers."""
    outputs_not_aliased: int
    """Outputs that do not reuse a donated input's buffer (the metrics, mostly)."""
    generated_code: int
    """The compiled program itself."""

    @property
    def total(self) -> int:
        """Everything live at once: inputs, temporaries, outputs that need buffers of their own, code."""
        inputs = self.parameters + self.optimizer_state + self.other_state + self.batch
        return inputs + self.temporaries + self.outputs_not_aliased + self.generated_code

    def fits(self, device_memory: int) -> bool:
        """Whether :attr:`total` fits in ``device_memory`` bytes."""
        return self.total <= device_memory

    def report(self, device_memory: int | None = None) -> str:
        """The estimate as text; with ``device_memory``, whether it fits and, if not, what to change."""
        rows = [
            ("parameters", self.parameters),
            ("optimizer state", self.optimizer_state),
            ("other state", self.other_state),
            ("batch", self.batch),
            ("temporaries (gradients, activations, ...)", self.temporaries),
            ("outputs not aliased", self.outputs_not_aliased),
            ("generated code", self.generated_code),
            ("total", self.total),
        ]
        lines = ["per-device memory of the compiled step (XLA memory_analysis):"]
        lines += [f"  {name:<42} {value:>14,} B  {_gib(value):>12}" for name, value in rows]
        if device_memory is not None:
            if self.fits(device_memory):
                lines.append(f"fits in {_gib(device_memory)}: {self.total / device_memory:.1%} used")
            else:
                lines.append(
                    f"does not fit in {_gib(device_memory)}: needs {_gib(self.total)}; to fit, split the work over "
                    "more microbatches (pipeline microbatches or accumulate_steps), keep fewer activations "
                    "(remat = dots or full), or split the parameters further (tensor or pipeline parallelism)"
                )
        return "\n".join(lines) + "\n"


def estimate_memory(
    engine: Engine, step: StepFn, params: Any, batch: Any, *, stacked: str | tuple[str, ...] = ()
) -> MemoryEstimate:
    """Compile ``step`` ahead of time for ``params`` and ``batch`` (arrays or ``ShapeDtypeStruct`` s) on
    ``engine``'s plan and mesh, allocating nothing, and return its per-device memory."""
    state = engine.abstract_state(params, stacked=stacked)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype), batch)
    compiled = step.lower(state, shapes).compile()
    analysis = compiled.memory_analysis()
    placed_batch = step.compiled(state).place_batch(shapes)
    other = [state.step, state.rng, state.loss_scale]
    return MemoryEstimate(
        parameters=_per_device(state.params),
        optimizer_state=_per_device(state.opt_state),
        other_state=_per_device([x for x in other if x is not None]),
        batch=_per_device(placed_batch),
        temporaries=int(analysis.temp_size_in_bytes),
        outputs_not_aliased=max(0, int(analysis.output_size_in_bytes) - int(analysis.alias_size_in_bytes)),
        generated_code=int(analysis.generated_code_size_in_bytes),
    )
