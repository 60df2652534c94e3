"""The partial-sum checker: a forgotten tensor-parallel reduction is an error, not a different model.

Under tensor parallelism a matmul that contracts a dimension split over a TP
axis leaves each device with a *partial sum*: the true result is the sum of
every device's value (Megatron's row-parallel layer). Until a ``psum`` over that
axis, the value may only pass through linear operations (a sum of partial sums
is a partial sum). If it reaches a nonlinearity, is added to a whole value, is
multiplied by another partial sum, or leaves the step (a metric, a new
parameter), each device goes on with its own piece and the program trains a
different model from the one written, with no error from JAX: ``check_vma``
types both a split value and a partial sum as "varying".

This module follows, through a traced step's jaxpr, which values are split
along which dimension over which TP axis (from the parameters' partition specs)
and which are partial sums, and reports each misuse at the user's source line,
with the line of the contraction that made the partial sum. It knows the
linear primitives and the common nonlinear ones; any other primitive ends the
tracking of its result without a report, so a correct program is never refused.
One pass over the jaxpr: linear in its size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from titanax.errors import Diagnostic, StepFnError
from titanax.lowering.trace import source_line

__all__ = ["Layout", "PartialSumProblem", "check_partial_sums", "partial_sum_diagnostics", "partial_sum_problems"]


@dataclass(frozen=True)
class Layout:
    """What the checker knows of one value: per dimension the TP axes it is split over, and the
    TP axes it is a partial sum over (with the source line of the contraction that made it)."""

    split: tuple[frozenset[str], ...] = ()
    partial: frozenset[str] = frozenset()
    origin: str = ""
    """Where the partial sum was made (``file:line (function)``)."""

    @property
    def plain(self) -> bool:
        """Nothing split, nothing partial: a whole value (or one the checker does not follow)."""
        return not self.partial and not any(self.split)


WHOLE = Layout()


@dataclass(frozen=True)
class PartialSumProblem:
    """One misuse of a partial sum (or of a split value where the whole is needed)."""

    axes: tuple[str, ...]
    made_at: str
    """Where the partial sum was made: the contraction (matmul) or reduction over a split dimension."""
    used_at: str
    """Where it was used as if whole."""
    use: str
    """How: ``reaches tanh``, ``is added to a whole value``, ``is returned by the step``..."""


# Elementwise primitives that are linear in each operand taken alone.
_LINEAR_UNARY = frozenset(
    {
        "neg", "convert_element_type", "copy", "copy_p", "reduce_precision", "real", "imag", "conj",
        "pvary", "pcast", "optimization_barrier", "cumsum", "transpose", "reshape",
        "broadcast_in_dim", "squeeze", "expand_dims", "rev", "slice", "dynamic_slice", "pad",
    }
)  # fmt: skip
# Primitives whose result is not a sum of per-device results when an input is a partial sum.
_NONLINEAR = frozenset(
    {
        "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan", "asin", "acos",
        "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "sqrt", "rsqrt", "cbrt", "pow", "integer_pow",
        "erf", "erfc", "erf_inv", "lgamma", "digamma", "max", "min", "abs", "sign", "floor", "ceil", "round",
        "is_finite", "lt", "le", "gt", "ge", "eq", "ne", "argmax", "argmin", "reduce_max", "reduce_min",
        "atan2", "square", "rem", "clamp", "sort", "top_k",
    }
)  # fmt: skip
_ADDITIVE = frozenset({"add", "sub", "add_any"})
_REDUCING = {"psum": "sum", "psum_invariant": "sum", "reduce_scatter": "sum", "pmax": "max", "pmin": "min"}
_CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _names(entry: Any) -> frozenset[str]:
    if entry is None:
        return frozenset()
    return frozenset((entry,) if isinstance(entry, str) else entry)


def _axes_param(params: dict[str, Any]) -> frozenset[str]:
    names = params.get("axes", params.get("axis_name", ()))
    return frozenset((names,) if isinstance(names, str) else names)


def _ndim(var: Any) -> int:
    return len(getattr(getattr(var, "aval", None), "shape", ()) or ())


def _shape(var: Any) -> tuple[int, ...]:
    return tuple(getattr(getattr(var, "aval", None), "shape", ()) or ())


@dataclass
class _Checker:
    tp_axes: frozenset[str]
    problems: list[PartialSumProblem] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    # -- bookkeeping --------------------------------------------------------
    def report(self, layout: Layout, eqn: Any, use: str) -> None:
        """Record a misuse of ``layout``'s partial sum by equation ``eqn``."""
        self.record(layout, source_line(eqn), use)

    def record(self, layout: Layout, used_at: str, use: str) -> None:
        """Record a misuse at ``used_at``; one per partial sum: its first (the ones after it follow from it)."""
        if layout.origin not in self._seen:
            self._seen.add(layout.origin)
            self.problems.append(
                PartialSumProblem(axes=tuple(sorted(layout.partial)), made_at=layout.origin, used_at=used_at, use=use)
            )

    @staticmethod
    def read(env: dict[Any, Layout], var: Any) -> Layout:
        return env.get(var, WHOLE) if not hasattr(var, "val") else WHOLE

    # -- the walk -----------------------------------------------------------
    def run(self, jaxpr: Any, inputs: Sequence[Layout]) -> list[Layout]:
        env: dict[Any, Layout] = {}
        for var, layout in zip(jaxpr.invars, inputs, strict=False):
            env[var] = layout
        for eqn in jaxpr.eqns:
            ins = [self.read(env, v) for v in eqn.invars]
            outs = self.equation(eqn, ins)
            for var, layout in zip(eqn.outvars, outs, strict=False):
                if not layout.plain:
                    env[var] = layout
        return [self.read(env, v) for v in jaxpr.outvars]

    def equation(self, eqn: Any, ins: list[Layout]) -> list[Layout]:
        name = eqn.primitive.name
        n_out = len(eqn.outvars)
        if all(layout.plain for layout in ins):
            return [WHOLE] * n_out  # nothing split or partial goes in (every input is explicit in a jaxpr)
        handler = getattr(self, f"_rule_{name}", None)
        if handler is not None:
            return handler(eqn, ins)
        if name in _REDUCING:
            return [self._collective(eqn, ins[0])]
        if name in _NONLINEAR:
            for layout in ins:
                if layout.partial:
                    self.report(layout, eqn, f"reaches {name}, which is not linear")
            return [self._elementwise(eqn, ins, keep_partial=False)] * n_out
        if name in _ADDITIVE:
            return [self._additive(eqn, ins)]
        if name in _LINEAR_UNARY:
            return [self._reshaped(eqn, ins[0])]
        if any(k in eqn.params for k in _CALLS):
            return self._call(eqn, ins)
        return [WHOLE] * n_out  # a primitive the checker does not know: stop following, never refuse

    # -- rules --------------------------------------------------------------
    def _collective(self, eqn: Any, layout: Layout) -> Layout:
        axes = _axes_param(eqn.params)
        name = eqn.primitive.name
        partial = layout.partial - axes
        split = layout.split
        if name == "reduce_scatter":
            dim = eqn.params.get("scatter_dimension", 0)
            split = tuple(s | axes if i == dim else s for i, s in enumerate(split)) or split
        return Layout(split=split, partial=partial, origin=layout.origin if partial else "")

    def _rule_all_gather(self, eqn: Any, ins: list[Layout]) -> list[Layout]:
        axes, layout = _axes_param(eqn.params), ins[0]
        dim = eqn.params.get("all_gather_dimension", 0)
        split = tuple(s - axes if i == dim else s for i, s in enumerate(layout.split))
        return [Layout(split=split, partial=layout.partial, origin=layout.origin)]

    _rule_all_gather_invariant = _rule_all_gather

    def _elementwise(self, eqn: Any, ins: list[Layout], *, keep_partial: bool) -> Layout:
        ndim = _ndim(eqn.outvars[0])
        split = [frozenset()] * ndim
        for layout in ins:
            if len(layout.split) == ndim:
                split = [a | b for a, b in zip(split, layout.split, strict=True)]
        partial = frozenset().union(*(layout.partial for layout in ins)) if keep_partial else frozenset()
        origin = next((layout.origin for layout in ins if layout.partial), "") if partial else ""
        return Layout(split=tuple(split), partial=partial, origin=origin)

    def _additive(self, eqn: Any, ins: list[Layout]) -> Layout:
        partial_sets = [layout.partial for layout in ins]
        for layout in ins:
            missing = [other for other in partial_sets if layout.partial - other]
            if layout.partial and missing:
                self.report(layout, eqn, "is added to a value that is not a partial sum (added on every device)")
        return self._elementwise(eqn, ins, keep_partial=True)

    def _rule_mul(self, eqn: Any, ins: list[Layout]) -> list[Layout]:
        if sum(bool(layout.partial) for layout in ins) > 1:
            self.report(next(x for x in ins if x.partial), eqn, "is multiplied by another partial sum")
        return [self._elementwise(eqn, ins, keep_partial=True)]

    def _rule_div(self, eqn: Any, ins: list[Layout]) -> list[Layout]:
        if ins[1].partial:
            self.report(ins[1], eqn, "divides another value")
        return [self._elementwise(eqn, ins, keep_partial=bool(ins[0].partial))]

    def _rule_select_n(self, eqn: Any, ins: list[Layout]) -> list[Layout]:
        if ins[0].partial:
            self.report(ins[0], eqn, "decides a select")
        return [self._additive(eqn, ins[1:])] if len(ins) > 2 else [self._elementwise(eqn, ins[1:], keep_partial=True)]

    def _rule_reduce_sum(self, eqn: Any, ins: list[Layout]) -> list[Layout]:
        layout = ins[0]
        dims = set(eqn.params.get("axes", ()))
        shape = _shape(eqn.invars[0])
        # A dimension of local size 1 may be a broadcast one (autodiff sums those away): only a sum
        # over a split dimension with several elements is known to be a partial sum.
        summed = (
            frozenset().union(*(layout.split[d] for d in dims if d < len(layout.split) and shape[d] > 1)) & self.tp_axes
        )
        split = tuple(s for i, s in enumerate(layout.split) if i not in dims)
        partial = layout.partial | summed
        origin = layout.origin if layout.partial else (source_line(eqn) if summed else "")
        return [Layout(split=split, partial=partial, origin=origin)]

    def _rule_dot_general(self, eqn: Any, ins: list[Layout]) -> list[Layout]:
        lhs, rhs = ins
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        if lhs.partial and rhs.partial:
            self.report(lhs, eqn, "is multiplied by another partial sum")
        lsplit = lhs.split or (frozenset(),) * _ndim(eqn.invars[0])
        rsplit = rhs.split or (frozenset(),) * _ndim(eqn.invars[1])
        contracted = frozenset()
        for a, b in zip(lc, rc, strict=True):
            contracted |= lsplit[a] & rsplit[b]
        batch = [lsplit[a] | rsplit[b] for a, b in zip(lb, rb, strict=True)]
        lfree = [lsplit[i] for i in range(len(lsplit)) if i not in lc and i not in lb]
        rfree = [rsplit[i] for i in range(len(rsplit)) if i not in rc and i not in rb]
        partial = lhs.partial | rhs.partial | contracted
        origin = lhs.origin or rhs.origin or (source_line(eqn) if contracted else "")
        return [Layout(split=tuple(batch + lfree + rfree), partial=partial, origin=origin)]

    def _reshaped(self, eqn: Any, layout: Layout) -> Layout:
        """Unary linear ops: keep the partial sum; carry split dimensions where the mapping is clear."""
        name = eqn.primitive.name
        out_ndim = _ndim(eqn.outvars[0])
        split = layout.split
        if name == "transpose" and split:
            split = tuple(split[p] for p in eqn.params["permutation"])
        elif name == "broadcast_in_dim" and split:
            new = [frozenset()] * out_ndim
            for src, dst in enumerate(eqn.params["broadcast_dimensions"]):
                if _shape(eqn.invars[0])[src] == _shape(eqn.outvars[0])[dst]:
                    new[dst] = split[src]
            split = tuple(new)
        elif name == "squeeze" and split:
            removed = set(eqn.params["dimensions"])
            split = tuple(s for i, s in enumerate(split) if i not in removed)
        elif name == "reshape" and split:
            split = _reshape_split(_shape(eqn.invars[0]), _shape(eqn.outvars[0]), split)
        elif len(split) != out_ndim:
            split = (frozenset(),) * out_ndim
        return Layout(split=split, partial=layout.partial, origin=layout.origin)

    def _call(self, eqn: Any, ins: list[Layout]) -> list[Layout]:
        for key in _CALLS:
            if key in eqn.params:
                inner = eqn.params[key]
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    return self._pad(self.run(inner, ins), len(eqn.outvars))
        return [WHOLE] * len(eqn.outvars)

    @staticmethod
    def _pad(layouts: list[Layout], count: int) -> list[Layout]:
        return (layouts + [WHOLE] * count)[:count]

    def _rule_cond(self, eqn: Any, ins: list[Layout]) -> list[Layout]:
        results = [self.run(branch.jaxpr, ins[1:]) for branch in eqn.params["branches"]]
        return [_union(layouts) for layouts in zip(*results, strict=True)] if results else []

    def _rule_scan(self, eqn: Any, ins: list[Layout]) -> list[Layout]:
        body = eqn.params["jaxpr"].jaxpr
        n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
        consts, carry, xs = ins[:n_consts], ins[n_consts : n_consts + n_carry], ins[n_consts + n_carry :]
        xs = [Layout(split=x.split[1:], partial=x.partial, origin=x.origin) for x in xs]
        outs = self.run(body, consts + carry + xs)
        # A second pass with the carries the first pass produced: a partial sum made in one
        # iteration and carried into the next is seen too.
        carry = [_union([a, b]) for a, b in zip(carry, outs[:n_carry], strict=True)]
        outs = self.run(body, consts + carry + xs)
        ys = [Layout(split=(frozenset(), *y.split), partial=y.partial, origin=y.origin) for y in outs[n_carry:]]
        return outs[:n_carry] + ys

    def _rule_while(self, eqn: Any, ins: list[Layout]) -> list[Layout]:
        body = eqn.params["body_jaxpr"].jaxpr
        n_consts = eqn.params["body_nconsts"]
        cond_consts = eqn.params["cond_nconsts"]
        consts, carry = ins[cond_consts : cond_consts + n_consts], ins[cond_consts + n_consts :]
        outs = self.run(body, consts + carry)
        carry = [_union([a, b]) for a, b in zip(carry, outs, strict=True)]
        return self.run(body, consts + carry)


def _union(layouts: Iterable[Layout]) -> Layout:
    layouts = list(layouts)
    ndim = max((len(x.split) for x in layouts), default=0)
    split = [frozenset()] * ndim
    for layout in layouts:
        if len(layout.split) == ndim:
            split = [a | b for a, b in zip(split, layout.split, strict=True)]
    partial = frozenset().union(*(x.partial for x in layouts))
    origin = next((x.origin for x in layouts if x.partial), "")
    return Layout(split=tuple(split), partial=partial, origin=origin)


def _reshape_split(
    old: tuple[int, ...], new: tuple[int, ...], split: tuple[frozenset[str], ...]
) -> tuple[frozenset[str], ...]:
    """Split dimensions through a reshape. A split dimension maps to the output dimension that starts
    at the same element offset (the product of the sizes before it) when that dimension holds it
    whole or is its first piece; a split dimension of size 1 maps only to an output dimension of
    size 1, and is dropped when the reshape removes it."""

    def prefixes(shape: tuple[int, ...]) -> list[int]:
        out, total = [], 1
        for size in shape:
            out.append(total)
            total *= size
        return out

    old_prefix, new_prefix = prefixes(old), prefixes(new)
    result = [frozenset()] * len(new)
    for dim, axes in enumerate(split):
        if not axes:
            continue
        candidates = [e for e, start in enumerate(new_prefix) if start == old_prefix[dim]]
        if old[dim] == 1:
            candidates = [e for e in candidates if new[e] == 1]
        else:
            candidates = [e for e in candidates if new[e] > 1 and (new[e] % old[dim] == 0 or old[dim] % new[e] == 0)]
        if candidates:
            result[candidates[0]] = axes
    return tuple(result)


def partial_sum_problems(closed_jaxpr: Any, tp_axes: Iterable[str]) -> list[PartialSumProblem]:
    """Every misuse of a partial sum over ``tp_axes`` in the step ``closed_jaxpr`` (a ``jit`` of a
    ``shard_map``); the inputs' split dimensions come from the ``shard_map``'s ``in_specs``."""
    axes = frozenset(tp_axes)
    if not axes:
        return []
    checker = _Checker(tp_axes=axes)

    def visit(jaxpr: Any) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "shard_map":
                inputs = [
                    Layout(split=tuple(_names(entry) & axes for entry in _spec_entries(spec, _ndim(var))))
                    for spec, var in zip(eqn.params["in_specs"], eqn.invars, strict=True)
                ]
                body = eqn.params["jaxpr"]
                body = getattr(body, "jaxpr", body)
                outs = checker.run(body, inputs)
                for layout in outs:
                    if layout.partial:
                        checker.record(
                            layout, "the step's result", "is returned by the step (as a metric or in the new state)"
                        )
                continue
            for key in _CALLS:
                inner = eqn.params.get(key)
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    visit(inner)

    visit(closed_jaxpr.jaxpr)
    return checker.problems


def _spec_entries(spec: Any, ndim: int) -> list[Any]:
    entries = list(spec) if spec is not None else []
    return (entries + [None] * ndim)[:ndim]


def check_partial_sums(closed_jaxpr: Any, tp_axes: Iterable[str]) -> None:
    """Raise TX518 listing every partial sum that is used as if it were whole."""
    diagnostics = partial_sum_diagnostics(closed_jaxpr, tp_axes)
    if diagnostics:
        raise StepFnError(diagnostics)


def partial_sum_diagnostics(closed_jaxpr: Any, tp_axes: Iterable[str]) -> list[Diagnostic]:
    """A TX518 diagnostic for every partial sum used as if it were whole (empty when there is none)."""
    problems = partial_sum_problems(closed_jaxpr, tp_axes)
    return [
        Diagnostic(
            code="TX518",
            message=(
                f"the value made at {p.made_at} is a partial sum over {', '.join(repr(a) for a in p.axes)} (a "
                f"contraction or sum over a dimension split over it), and {p.use} at {p.used_at} without a "
                "reduction: each device would go on with its own piece, training a different model"
            ),
            hint=(
                f"reduce it right where it is made: tx.collectives.psum(y, {p.axes[0]!r}) after the matmul at "
                f"{p.made_at} (titanax.nn.row_dense does this for a row-parallel layer; for a stock nnx.Linear "
                "or eqx.nn.Linear, use titanax.nn.nnx_layers.RowParallelLinear or "
                "titanax.nn.eqx_layers.RowParallelLinear, which also add the bias after the reduction)"
            ),
        )
        for p in problems
    ]
