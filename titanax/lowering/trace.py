"""Find the collectives a traced step performs by walking its jaxpr.

Every collective equation becomes a :class:`~titanax.ir.TracedCollective`
with its bytes per dtype, the number of times it runs per step (the product of
the trip counts of the ``scan`` loops around it; ``None`` inside a ``while``
whose count is not static) and whether it sits in a branch of a ``cond``.
Titanax's own collectives carry the IR node id of their ``titanax:<id>`` scope
(:func:`titanax.lowering.collectives.emit`), and :func:`check_emitted` checks
each against its node; the others come from the user's code (``tx.collectives``,
``titanax.nn`` layers, raw ``lax`` calls, and the reductions autodiff adds as
their transposes) and carry the user source line that caused them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from titanax.errors import Diagnostic, IRVerificationError
from titanax.ir import CollectiveNode, PlanIR, TracedCollective
from titanax.lowering.collectives import node_id_of_scope

__all__ = ["check_emitted", "source_line", "traced_collectives"]

# JAX primitive -> (XLA op, reduction). pvary / pcast only change a value's type.
_PRIMITIVES: dict[str, tuple[str, str | None]] = {
    "psum_invariant": ("all-reduce", "sum"),
    "psum": ("all-reduce", "sum"),
    "pmax": ("all-reduce", "max"),
    "pmin": ("all-reduce", "min"),
    "all_gather": ("all-gather", None),
    "all_gather_invariant": ("all-gather", None),
    "reduce_scatter": ("reduce-scatter", "sum"),
    "ppermute": ("collective-permute", None),
    "all_to_all": ("all-to-all", None),
}


def _sub_jaxprs(value: Any) -> Iterator[Any]:
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def _axes(params: dict[str, Any]) -> tuple[str, ...]:
    names = params.get("axes", params.get("axis_name", ()))
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(n for n in names if isinstance(n, str))


_HELPERS = ("titanax/runtime/collectives.py", "titanax/lowering/collectives.py")
"""Files whose frames are skipped when naming where a collective came from."""


def source_line(eqn: Any) -> str:
    """Where a jaxpr equation came from: the first frame outside JAX and outside Titanax's thin
    collective helpers, as ``file:line (function)``."""
    try:
        from jax._src import source_info_util

        frames = source_info_util.user_frames(eqn.source_info.traceback)
        frame = next((f for f in frames if not f.file_name.replace("\\", "/").endswith(_HELPERS)), None)
    except Exception:  # noqa: BLE001 - the location is a courtesy; never fail the trace for it
        frame = None
    if frame is None:
        return "<unknown>"
    parts = frame.file_name.replace("\\", "/").split("/")
    short = "/".join(parts[parts.index("titanax") :]) if "titanax" in parts else "/".join(parts[-2:])
    return f"{short}:{frame.start_line} ({frame.function_name})"


def _times(count: int | None, factor: int | None) -> int | None:
    return None if count is None or factor is None else count * factor


def _walk(jaxpr: Any, executions: int | None, conditional: bool) -> Iterator[tuple[Any, int | None, bool]]:
    """Every equation with how many times it runs per call of ``jaxpr``'s caller, and whether in a branch."""
    for eqn in jaxpr.eqns:
        yield eqn, executions, conditional
        name = eqn.primitive.name
        for key, value in eqn.params.items():
            inner, branch = executions, conditional
            if name == "scan":
                inner = _times(executions, int(eqn.params["length"]))
            elif name == "while" and key == "body_jaxpr":
                inner = None  # a while loop's trip count is not static in the jaxpr
            elif name == "cond":
                branch = True
            for sub in _sub_jaxprs(value):
                yield from _walk(sub, inner, branch)


def _payload(eqn: Any) -> tuple[tuple[str, int], ...]:
    sizes: dict[str, int] = {}
    for var in eqn.outvars:
        dtype = str(var.aval.dtype)
        sizes[dtype] = sizes.get(dtype, 0) + int(var.aval.size * var.aval.dtype.itemsize)
    return tuple(sorted(sizes.items()))


def _live(jaxpr: Any) -> Any:
    """``jaxpr`` without the equations whose results nothing uses, as XLA will compile it.

    A pipeline stage's backward recomputes its forward only for the residuals; the forward's own
    output (and the all-reduce that made it) is dead, and XLA removes it. Counting it would make
    the IR list a collective the program never runs.
    """
    try:
        from jax._src.interpreters import partial_eval as pe

        live, _ = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars), instantiate=True)
        return live
    except Exception:  # noqa: BLE001 - an internal API: without it, count every equation
        return jaxpr


def traced_collectives(closed_jaxpr: Any) -> tuple[TracedCollective, ...]:
    """Every communicating collective in ``closed_jaxpr`` whose result is used, in trace order."""
    found = []
    for eqn, executions, conditional in _walk(_live(closed_jaxpr.jaxpr), 1, False):
        mapped = _PRIMITIVES.get(eqn.primitive.name)
        axes = _axes(eqn.params) if mapped else ()
        if not axes:
            continue
        op, reduction = mapped
        name_stack = str(eqn.source_info.name_stack)
        node_id = node_id_of_scope(name_stack)
        found.append(
            TracedCollective(
                op=op,
                reduction=reduction,
                axes=axes,
                payload=_payload(eqn),
                primitive=eqn.primitive.name,
                where="titanax" if node_id else source_line(eqn),
                backward="transpose" in name_stack,
                executions=executions,
                conditional=conditional,
                node_id=node_id,
                permutation=tuple(tuple(pair) for pair in eqn.params.get("perm", ())),
            )
        )
    return tuple(found)


def _mismatch(traced: TracedCollective, node_id: str, node: CollectiveNode | None) -> str | None:
    if node is None:
        return f"a collective ({traced.primitive}) was emitted for %{node_id}, which the IR does not have"
    reduction = "sum" if node.reduction == "mean" else node.reduction  # pmean traces as a psum
    expected = (node.op, reduction, node.axes, node.permutation)
    got = (traced.op, traced.reduction, traced.axes, traced.permutation)
    if expected != got:
        return f"%{node_id} declares (op, reduction, axes, pairs) {expected} but the step emitted {got}"
    if node.executions is not None and traced.executions != node.executions:
        return f"%{node_id} runs {node.executions} time(s) per step but the step emits it {traced.executions} time(s)"
    return None


def check_emitted(traced: tuple[TracedCollective, ...], ir: PlanIR) -> None:
    """Raise TX903 (a Titanax bug) if a collective emitted for an IR node differs from the node."""
    problems = []
    for record in traced:
        if record.node_id is None:
            continue
        node = ir.node(record.node_id) if record.node_id in ir else None
        problem = _mismatch(record, record.node_id, node if isinstance(node, CollectiveNode) else None)
        if problem:
            problems.append(
                Diagnostic(code="TX903", message=problem, hint="this is a Titanax bug; please report it with the IR")
            )
    if problems:
        raise IRVerificationError(problems)
