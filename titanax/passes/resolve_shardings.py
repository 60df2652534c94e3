"""``resolve-shardings``: give every parameter a partition spec from the shard rules.

The runtime runs this pass once it knows the parameter tree (paths and shapes);
it adds one ``param`` node per parameter, laid out by the rule that won.

Patterns are globs over ``/``-joined key paths: ``*`` matches within one key,
``**`` across any number of keys, ``?`` one character. When several rules match
a path, the most specific wins: the one with the most literal characters, then
the one with fewer wildcards; the default rule (``**``, replicated) loses to
every tensor-parallel rule. Two equally specific rules that give different
layouts are an error (TX222), as is a rule that matches no parameter (TX221).

Roles, for a parameter stored with its input dimension first (``weight_layout = in_out``, the
default; under ``out_in``, for models that store ``(out, in)`` as Equinox does, ``column`` splits
dimension 0 and ``row`` the last):

- ``replicated``: every device holds the whole parameter.
- ``column``: split the first output dimension (dimension 1 of a matrix such as
  ``(d_model, d_ff)`` or a head-major ``(d_model, heads, 3, head_dim)``;
  dimension 0 of a bias).
- ``row``: split the input dimension (dimension 0); a row-parallel layer's
  bias stays replicated (it is added after the all-reduce).
- an explicit spec: one entry per leading dimension, the rest unsplit.

Under pipeline parallelism, the stacked blocks entry (``blocks/...``, leading
dimension = layer) is split evenly over the pipeline axis on that leading
dimension; rules then apply to the per-layer shape (``shape[1:]``), so the same
``column``/``row`` rules serve stacked and unstacked models.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from titanax.errors import PlanError
from titanax.ir import EdgeKind, ParamNode, PipelineParallelNode, PlanIR, ShardRuleNode, TensorParallelNode
from titanax.ir.build import connect_over_axes
from titanax.ir.stage_split import stage_split
from titanax.passes.base import Pass, PassContext, register_pass
from titanax.passes.fsdp_layout import FSDPLayouts
from titanax.passes.globs import glob_matches, glob_regex, rule_specificity

__all__ = ["ResolveShardings", "glob_matches", "rule_specificity"]

Spec = tuple[str | tuple[str, ...] | None, ...]


def _under(path: str, entry: str) -> bool:
    return path == entry or path.startswith(entry + "/")


def _axis_entry(axes: tuple[str, ...]) -> str | tuple[str, ...]:
    return axes[0] if len(axes) == 1 else axes


def _entry_axes(entry: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else entry


@register_pass
@dataclass(frozen=True, kw_only=True)
class ResolveShardings(Pass):
    """Resolve every parameter's partition spec from the shard rules (most specific
    rule wins); reject a rule matching no parameter (TX221), an ambiguous tie (TX222), a
    split dimension not divisible by its axes (TX223), a spec longer than the
    parameter's rank (TX224), a role that cannot apply to the shape (TX225) and
    stacked blocks that do not split evenly over the pipeline stages (TX226)."""

    name = "resolve-shardings"
    requires = ("check-mesh", "check-tensor-parallel", "infer-mesh-shape")
    parameters: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """``(path, shape)`` of every parameter; an empty tuple leaves the IR as it is."""
    stacked: tuple[str, ...] = ()
    """Entries whose leaves stack layers on dimension 0 (besides the pipeline's blocks, which
    always do): rules apply to the per-layer shape, and dimension 0 stays whole."""

    @classmethod
    def from_options(cls, options: dict[str, str]) -> ResolveShardings:
        """``resolve-shardings{block/w=64x256,block/b=256}``: parameter shapes by path."""
        parameters = []
        for path, dims in options.items():
            try:
                shape = tuple(int(d) for d in dims.split("x")) if dims else ()
            except ValueError:
                raise PlanError.single(
                    "TX220",
                    f"resolve-shardings option {path}={dims!r} is not a shape",
                    "write path=4x8 (dimensions joined by x)",
                ) from None
            parameters.append((path, shape))
        return cls(parameters=tuple(parameters))

    def run(self, ir: PlanIR, ctx: PassContext) -> None:
        """Add a ``param`` node per parameter, or report why its layout cannot be decided."""
        if not self.parameters:
            return
        tp_id, tp = next(ir.items(TensorParallelNode), (None, None))
        rules = ir.shard_rules(tp_id) if tp_id else []
        # Each rule's matcher and specificity, worked out once: the loop below is then
        # O(rules) per parameter and nothing in it grows with the number of parameters.
        matchers = [(rid, r, glob_regex(r.pattern).fullmatch, rule_specificity(r.pattern)) for rid, r in rules]
        default = ("rule.default", ir.node("rule.default"))
        sizes = ir.axis_sizes()
        pp = next((node for _, node in ir.items(PipelineParallelNode)), None)
        split = stage_split(ir)
        uneven = split is not None and not split.even
        matched: set[str] = set()
        fsdp = FSDPLayouts.for_ir(ir)
        for path, shape in self.parameters:
            if uneven and pp is not None and _under(path, pp.blocks):
                if not shape or shape[0] != split.layers:
                    ctx.error(
                        "TX226",
                        f"parameter {path} {shape} is in the stacked blocks '{pp.blocks}', but the stage lines run "
                        f"{split.layers} layers ({' + '.join(map(str, split.counts))})",
                        f"stack {split.layers} layers on dimension 0 of every parameter under '{pp.blocks}', or "
                        "change the stage lines",
                        pp.location,
                    )
                    continue
                # Stored padded: each device holds the largest stage's number of rows (see ir/stage_split.py).
                shape = (split.stored_layers, *shape[1:])
            matching = [(rid, r, rank) for rid, r, fullmatch, rank in matchers if fullmatch(path) is not None]
            matched.update(rid for rid, _, _ in matching)
            decided = self._choose(path, shape, matching, tp, ctx) if matching else default
            if decided is None:
                continue
            rule_id, rule = decided
            stacked = (pp is not None and _under(path, pp.blocks)) or (
                any(_under(path, entry) for entry in self.stacked) and bool(shape)
            )
            if pp is not None and _under(path, pp.blocks):
                spec = self._stacked_spec(path, shape, rule, tp, pp, sizes, ctx)
            elif stacked:
                per_layer = self._spec(path, shape[1:], rule, tp, sizes, ctx)
                spec = None if per_layer is None else (None, *per_layer)
            else:
                spec = self._spec(path, shape, rule, tp, sizes, ctx)
            if spec is None:
                continue
            fsdp_dim, gather = None, None
            if fsdp is not None:
                decided_fsdp = fsdp.decide(path, shape, spec, stacked, ctx)
                if decided_fsdp is None:
                    continue
                spec, fsdp_dim, gather = decided_fsdp
            local = tuple(
                dim // math.prod(sizes[a] for a in _entry_axes(entry)) for dim, entry in zip(shape, spec, strict=True)
            )
            node = ParamNode(
                path=path, shape=shape, spec=spec, local_shape=local, fsdp_dim=fsdp_dim, fsdp_gather=gather
            )
            param_id = ir.add(f"param.{path}", node)
            ir.connect(rule_id, param_id, EdgeKind.LAYS_OUT)
            connect_over_axes(ir, param_id, node)
        # A rule that decided no layout may still have matched (and lost to a more specific
        # rule); only one that matched no path at all is an error. Recording the matches above
        # keeps this check from re-matching every rule against every path.
        if fsdp is not None:
            fsdp.report_unmatched([p for p, _ in self.parameters], ctx)
        unmatched = [(rule_id, rule) for rule_id, rule in rules if rule_id not in matched]
        paths = [p for p, _ in self.parameters] if unmatched else []
        for _, rule in unmatched:
            close = difflib.get_close_matches(rule.pattern, paths, n=3, cutoff=0.3)
            ctx.error(
                "TX221",
                f"TP rule {rule.pattern!r} matches no parameter",
                (f"closest parameter paths: {close}" if close else f"parameter paths look like {paths[:3]}")
                + "; * matches within one key, ** across keys",
                rule.location,
            )

    @staticmethod
    def _choose(path, shape, matching, tp, ctx) -> tuple[str, ShardRuleNode] | None:
        """The most specific of ``matching`` ``(id, rule, specificity)``, or ``None`` on an ambiguous tie."""
        best = max(rank for _, _, rank in matching)
        top = [(rid, r) for rid, r, rank in matching if rank == best]
        layouts = {(r.role, r.spec) for _, r in top}
        if len(layouts) > 1:
            patterns = [r.pattern for _, r in top]
            ctx.error(
                "TX222",
                f"parameter {path} {shape} matches equally specific TP rules {patterns} with different layouts",
                "make one pattern more specific (more literal characters), or delete one",
                top[0][1].location,
            )
            return None
        return top[0]

    @classmethod
    def _stacked_spec(cls, path, shape, rule, tp, pp: PipelineParallelNode, sizes, ctx) -> Spec | None:
        pipe = pp.axes[0]
        # Interleaved chunks split each device's layers again: the stack must divide into p * v stages.
        parts = sizes[pipe] * pp.virtual_stages
        if not shape or shape[0] % parts:
            layers = shape[0] if shape else 0
            where = (
                f"the {parts} model stages ({sizes[pipe]} devices of axis '{pipe}' x {pp.virtual_stages} chunks)"
                if pp.virtual_stages > 1
                else f"the {sizes[pipe]} stages of axis '{pipe}'"
            )
            ctx.error(
                "TX226",
                f"parameter {path} {shape} is in the stacked blocks '{pp.blocks}', but its {layers} layers "
                f"do not split evenly over {where}",
                f"stack a multiple of {parts} layers on dimension 0 of every parameter under '{pp.blocks}'",
                pp.location,
            )
            return None
        per_layer = cls._spec(path, shape[1:], rule, tp, sizes, ctx)
        return None if per_layer is None else (pipe, *per_layer)

    @staticmethod
    def _spec(path, shape, rule: ShardRuleNode, tp, sizes, ctx) -> Spec | None:
        ndim = len(shape)
        tp_entry = _axis_entry(tp.axes) if tp is not None else None
        if rule.role == "replicated":
            spec: Spec = (None,) * ndim
        elif rule.role in ("column", "row"):
            stored_out_in = tp is not None and tp.weight_layout == "out_in"
            if ndim == 1:
                dim = 0
            elif stored_out_in:  # (out, in): the output dimension comes first, the input last
                dim = 0 if rule.role == "column" else ndim - 1
            else:
                dim = 0 if rule.role == "row" else 1
            if ndim == 0 or (rule.role == "row" and ndim == 1):
                what = "a scalar" if ndim == 0 else "a vector (a row-parallel layer's bias stays replicated)"
                ctx.error(
                    "TX225",
                    f"TP rule {rule.pattern!r} makes parameter {path} {shape} {rule.role}-parallel, but it is {what}",
                    f"map {path} to replicated, or narrow the pattern so it matches weight matrices only",
                    rule.location,
                )
                return None
            spec = tuple(tp_entry if i == dim else None for i in range(ndim))
        else:
            if len(rule.spec) > ndim:
                ctx.error(
                    "TX224",
                    f"partition spec {rule.spec} of TP rule {rule.pattern!r} has {len(rule.spec)} entries but parameter {path} has shape {shape}",
                    f"give at most {ndim} entries, one per dimension",
                    rule.location,
                )
                return None
            spec = tuple(rule.spec) + (None,) * (ndim - len(rule.spec))
        for dim, (size, entry) in enumerate(zip(shape, spec, strict=True)):
            axes = _entry_axes(entry)
            parts = math.prod(sizes[a] for a in axes)
            if axes and size % parts:
                named = ", ".join(f"'{a}' (size {sizes[a]})" for a in axes)
                ctx.error(
                    "TX223",
                    f"parameter {path} has shape {shape}; dimension {dim} ({size}) does not split over axis {named}",
                    f"make dimension {dim} a multiple of {parts}, or shard a different dimension, or use a smaller axis",
                    rule.location,
                )
                return None
        return spec
