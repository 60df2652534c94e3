"""Split a stage's backward into its input-gradient part (``B``) and its weight-gradient part (``W``).

Zero-bubble schedules run the two parts at different ticks: ``B`` at once, so the
cotangent reaches the previous stage without waiting, and ``W`` later, in a tick
where the device would otherwise wait. The split is done on the backward's
jaxpr: ``B`` keeps every equation the input gradient depends on; ``W`` keeps the
remaining equations the weight gradients depend on. What ``W`` reads from ``B``'s
equations (for a dense layer, the cotangent of its output), and the incoming
cotangent itself when ``W`` reads it, is handed from ``B`` to ``W`` through a
stash; the forward's residuals stay in their own stash until ``W`` has run.

Nothing runs twice: every equation of the backward is in exactly one part. How
much ``W`` gets depends on how the stage was written: a loop over layers
(``lax.scan``) is one equation, which the input gradient needs, so it lands in
``B`` whole; the pipeline therefore runs a split stage's blocks as straight-line
code, one layer after another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
from jax.extend.core import ClosedJaxpr, DebugInfo, Jaxpr, Literal, jaxpr_as_fun

__all__ = ["SplitBackward", "split_backward"]


@dataclass(frozen=True)
class SplitBackward:
    """The two halves of one backward, as functions of flat arguments."""

    input_part: Callable[..., list[Any]]
    """``(*residuals, *cotangent) -> [*input gradients, *handoff]``."""
    weight_part: Callable[..., list[Any]]
    """``(*residuals, *handoff) -> [*weight gradients]``."""
    input_outputs: int
    """How many of the input part's results are input gradients (the rest is the handoff)."""
    handoff_count: int
    """How many values the input part hands to the weight part."""
    weight_equations: int
    """Equations in the weight part (0 means the split saved nothing)."""


def _needed(jaxpr: Jaxpr, targets: Sequence[Any]) -> set[int]:
    """Indices of the equations ``targets`` depend on."""
    need = {v for v in targets if not isinstance(v, Literal)}
    keep: set[int] = set()
    for index in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[index]
        if any(out in need for out in eqn.outvars):
            keep.add(index)
            need.update(v for v in eqn.invars if not isinstance(v, Literal))
    return keep


def _debug_info(part: str, inputs: int, outputs: int) -> DebugInfo:
    return DebugInfo(
        f"pipeline {part} half of a backward",
        None,
        tuple(f"arg{k}" for k in range(inputs)),
        tuple(f"result{k}" for k in range(outputs)),
    )


def split_backward(
    backward: Callable[..., list[Any]], residuals: Sequence[Any], cotangent: Sequence[Any], input_outputs: Sequence[int]
) -> SplitBackward:
    """Split ``backward(*residuals, *cotangent) -> flat gradients`` so the outputs at ``input_outputs`` come first.

    ``residuals`` and ``cotangent`` are example values (traced or abstract) giving the argument types.
    """
    closed = jax.make_jaxpr(backward)(*residuals, *cotangent)
    jaxpr = closed.jaxpr
    outs = list(jaxpr.outvars)
    wanted = set(input_outputs)
    input_vars = [outs[k] for k in input_outputs]
    weight_vars = [out for k, out in enumerate(outs) if k not in wanted]
    input_eqns = _needed(jaxpr, input_vars)
    weight_eqns = _needed(jaxpr, weight_vars) - input_eqns
    made_by_input = {out for k in input_eqns for out in jaxpr.eqns[k].outvars}
    cotangent_vars = set(jaxpr.invars[len(residuals) :])
    used_by_weight = [v for k in sorted(weight_eqns) for v in jaxpr.eqns[k].invars] + weight_vars
    handoff: list[Any] = []
    for var in used_by_weight:
        if isinstance(var, Literal) or var in handoff:
            continue
        if var in made_by_input or var in cotangent_vars:
            handoff.append(var)
    residual_vars = list(jaxpr.invars[: len(residuals)])
    input_jaxpr = Jaxpr(
        jaxpr.constvars,
        jaxpr.invars,
        input_vars + handoff,
        [jaxpr.eqns[k] for k in sorted(input_eqns)],
        jaxpr.effects,
        _debug_info("input-gradient", len(jaxpr.invars), len(input_vars) + len(handoff)),
    )
    weight_jaxpr = Jaxpr(
        jaxpr.constvars,
        residual_vars + handoff,
        weight_vars,
        [jaxpr.eqns[k] for k in sorted(weight_eqns)],
        jaxpr.effects,
        _debug_info("weight-gradient", len(residual_vars) + len(handoff), len(weight_vars)),
    )
    return SplitBackward(
        input_part=jaxpr_as_fun(ClosedJaxpr(input_jaxpr, closed.consts)),
        weight_part=jaxpr_as_fun(ClosedJaxpr(weight_jaxpr, closed.consts)),
        input_outputs=len(input_vars),
        handoff_count=len(handoff),
        weight_equations=len(weight_eqns),
    )
