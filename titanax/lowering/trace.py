"""Find the collectives a traced step performs by walking its jaxpr.

Titanax's own gradient and metric collectives run under the named scope
:data:`TITANAX_SCOPE` and are skipped: the IR already lists them. Everything
else (``tx.collectives``, ``titanax.nn`` layers, raw ``lax`` calls, and the
reductions autodiff adds as their transposes) is reported, with the user source
line that caused it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from titanax.passes import TracedCollective

__all__ = ["TITANAX_SCOPE", "traced_collectives"]

TITANAX_SCOPE = "titanax_plan_collectives"
"""Named scope around the collectives the lowering inserts from the IR."""

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


def _where(eqn: Any) -> str:
    """The first frame outside JAX and outside Titanax's thin collective helpers."""
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


def _walk(jaxpr: Any) -> Iterator[Any]:
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                yield from _walk(sub)


def traced_collectives(closed_jaxpr: Any) -> tuple[TracedCollective, ...]:
    """Every communicating collective in ``closed_jaxpr`` outside Titanax's own scope, in trace order."""
    found = []
    for eqn in _walk(closed_jaxpr.jaxpr):
        mapped = _PRIMITIVES.get(eqn.primitive.name)
        if mapped is None or TITANAX_SCOPE in str(eqn.source_info.name_stack):
            continue
        axes = _axes(eqn.params)
        if not axes:
            continue
        op, reduction = mapped
        payload = sum(v.aval.size * v.aval.dtype.itemsize for v in eqn.outvars)
        found.append(
            TracedCollective(
                op=op,
                reduction=reduction,
                axes=axes,
                payload_bytes=int(payload),
                primitive=eqn.primitive.name,
                where=_where(eqn),
                backward="transpose" in str(eqn.source_info.name_stack),
            )
        )
    return tuple(found)
