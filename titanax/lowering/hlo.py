"""Read the collectives out of compiled HLO text, to audit them against the IR.

:func:`collectives_in_hlo` parses the text of ``compiled.as_text()`` into computations,
walks the call graph from ENTRY (while bodies and conditions, conditional branches,
calls, fusions, async wrappers) and reports every collective with its result bytes,
element types, device groups and how many times it runs per program execution.
:func:`mesh_axes_of` names the mesh axes a collective's groups or pairs span.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "HLO_COLLECTIVE_OPS",
    "HloCollective",
    "MeshAxisSizes",
    "collectives_in_hlo",
    "mesh_axes_of",
    "permute_shifts",
    "shape_bytes",
]

HLO_COLLECTIVE_OPS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "collective-permute",
    "all-to-all",
    "collective-broadcast",
    "ragged-all-to-all",
    "send",
    "recv",
)
"""Every collective opcode XLA prints, by its synchronous name. The first seven also have
``X-start`` / ``X-done`` async forms; ``send`` and ``recv`` pair with ``send-done`` / ``recv-done``."""

_ASYNC_OPS = frozenset(HLO_COLLECTIVE_OPS[:7])
_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1,
    "f8e4m3fn": 1, "f8e4m3fnuz": 1, "f8e4m3b11fnuz": 1, "f8e4m3": 1, "f8e5m2": 1, "f8e5m2fnuz": 1,
    "f8e3m4": 1, "f8e8m0fnu": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
# Dimensions may be dynamic (``<=4``): the bound is what the buffer holds.
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,<=]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION_HEAD = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
# What follows the ``=`` of an instruction: a tuple shape, an array shape, or (shapeless) an
# opcode. A wrapped attribute line (``replica_groups={...}``, ``to_apply=%add``) is none of them.
_STARTS_INSTRUCTION = re.compile(_INSTRUCTION_HEAD.pattern + r"(?:\(|\w+\[|[\w\-]+\()")
_OPCODE = re.compile(r"\s*([\w\-]+)\(")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_LAYOUT = re.compile(r"(?<=\])\{[^{}]*\}")
_EXPLICIT_GROUPS = re.compile(r"replica_groups=\{((?:\{[\d,\s]*\},?\s*)*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")
_PAIRS = re.compile(r"source_target_pairs=\{((?:\{\d+,\d+\},?\s*)*)\}")
# send/recv carry their pairs as a frontend attribute, a quoted string.
_SEND_RECV_PAIRS = re.compile(r'_xla_send_recv_source_target_pairs=\\?"\{((?:\{\d+,\d+\},?\s*)*)\}\\?"')
_INNER_BRACES = re.compile(r"\{([\d,\s]*)\}")
# backend_config is JSON; older XLA printed it as an escaped string.
_TRIP_COUNT = re.compile(r'\\?"known_trip_count\\?"\s*:\s*\{\s*\\?"n\\?"\s*:\s*\\?"(\d+)\\?"')
_CALLEE = {
    "single": re.compile(r"\b(body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)"),
    "list": re.compile(r"\b(branch_computations|called_computations|calls)=\{([^}]*)\}"),
}


@dataclass(frozen=True, kw_only=True)
class HloCollective:
    """One collective found in compiled HLO (an async start/done pair counts once, at the start)."""

    op: str
    """XLA's synchronous name, e.g. ``all-reduce`` also for ``all-reduce-start``; one of
    :data:`HLO_COLLECTIVE_OPS`."""
    result_bytes: int
    """Bytes of the collective's result, all tuple elements together. For an async start this is
    the result inside the start's tuple, not the operand; for ``send``/``recv`` the data buffer;
    for ``ragged-all-to-all`` the whole output buffer (what is filled is only known at run time)."""
    computation: str
    """The HLO computation holding it; loop bodies are computations of their own. For a
    collective wrapped by a generic ``async-start``, the computation of the ``async-start``."""
    entry: bool
    """True when it sits in the entry computation, not inside a loop or call."""
    group_size: int | None = None
    """Devices per replica group, when the instruction lists its groups. A group of 1
    moves nothing between devices (XLA's CPU backend keeps such trivial collectives)."""
    dtypes: tuple[str, ...] = ()
    """Element type of each array of the counted result, in order: ``("f32",)`` for one array,
    ``("bf16", "f32")`` for a two-element tuple. XLA:CPU promotes a bf16 all-reduce to f32."""
    replica_groups: tuple[tuple[int, ...], ...] | None = None
    """The device groups, explicit or iota form fully expanded; None when not printed or printed
    empty (``{}``, meaning all devices). In a jit/shard_map program the ids are positions in
    ``mesh.devices.flat``, not device ids."""
    source_target_pairs: tuple[tuple[int, int], ...] | None = None
    """(source, target) device positions of a collective-permute, or of a send/recv when XLA
    records them; None when not printed."""
    executions: int | None = None
    """Times it runs per execution of the program: the product of the trip counts of the while
    loops enclosing it, summed over every call path from ENTRY. None when an enclosing loop has no
    static trip count, or when its computation is not reached from ENTRY."""
    conditional: bool = False
    """True when some call path to it passes through a branch of a ``conditional``: it may not
    run, so ``executions`` is an upper bound."""
    async_: bool = False
    """True when XLA split it into an async start/done pair (``X-start`` or ``async-start``)."""
    payload: tuple[tuple[str, int], ...] = ()
    """``(dtype, bytes)`` of the counted result per element type, dtypes in numpy's names
    (``float32``, ``bfloat16``), sorted."""
    reduction: str | None = None
    """What a reducing collective computes, read from its ``to_apply`` computation's root:
    ``sum``, ``max``, ``min``, ``prod``, ``and`` or ``or``; None for the others."""

    @property
    def crosses_devices(self) -> bool:
        """False only for a collective whose groups are single devices (or pairs that stay put)."""
        if self.source_target_pairs is not None and self.group_size is None:
            return any(source != target for source, target in self.source_target_pairs)
        return self.group_size != 1

    @property
    def total_bytes(self) -> int | None:
        """``result_bytes`` times ``executions``: the bytes per program run; None when unknown."""
        return None if self.executions is None else self.result_bytes * self.executions


def shape_bytes(shape_text: str) -> int:
    """Bytes of every array shape written in ``shape_text`` (e.g. ``(f32[3,2], f32[])``)."""
    return sum(_array_bytes(dtype, dims) for dtype, dims in _ARRAY.findall(shape_text))


def _array_bytes(dtype: str, dims: str) -> int:
    return _DTYPE_BYTES[dtype] * math.prod(int(d.removeprefix("<=")) for d in dims.split(",") if d)


# -- parsing the text into computations and instructions --------------------------------
@dataclass(frozen=True)
class _Instruction:
    name: str
    shape: str
    opcode: str
    attrs: str
    """Everything after the operand list, quoted strings included."""
    root: bool

    @property
    def plain_attrs(self) -> str:
        """The attributes with quoted strings emptied, so metadata can't fake an attribute."""
        return _QUOTED.sub('""', self.attrs)


@dataclass
class _Computation:
    name: str
    entry: bool
    instructions: list[_Instruction] = field(default_factory=list)


def _closing_paren(text: str, start: int) -> int:
    """Index just past the parenthesis that closes the one at ``text[start]``."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def _parse_instruction(text: str) -> _Instruction | None:
    head = _INSTRUCTION_HEAD.match(text)
    if not head:
        return None
    rest = text[head.end() :]
    # The shape is one token, or a (possibly nested) tuple in parentheses.
    shape_end = _closing_paren(rest, 0) if rest.startswith("(") else len(rest.split(None, 1)[0])
    opcode = _OPCODE.match(rest, shape_end)
    if not opcode:
        return None  # e.g. a hand-written instruction without a shape
    operands_end = _closing_paren(rest, opcode.end() - 1)
    return _Instruction(
        name=head.group(1),
        shape=rest[:shape_end],
        opcode=opcode.group(1),
        attrs=rest[operands_end:],
        root=text.lstrip().startswith("ROOT"),
    )


def _instruction_texts(lines: Iterable[str]) -> Iterable[str]:
    """Join an instruction's continuation lines (hand-written HLO may wrap) onto its first line."""
    pending = ""
    for line in lines:
        if _STARTS_INSTRUCTION.match(line) or not pending:
            if pending:
                yield pending
            pending = line
        else:
            pending += " " + line.strip()
    if pending:
        yield pending


def _parse_module(hlo_text: str) -> list[_Computation]:
    computations: list[_Computation] = []
    body: list[str] | None = None
    for line in hlo_text.splitlines():
        # Computation headers start in column 0 and open a block; instructions are indented.
        # Anything else in column 0 (the HloModule line, stack-frame tables) is skipped.
        if line[:1] not in (" ", "\t", ""):
            header = _COMPUTATION.match(line)
            if header:
                computations.append(_Computation(name=header.group(2), entry=bool(header.group(1))))
                body = []
            elif line.startswith("}") and body is not None:
                computations[-1].instructions = _instructions(body)
                body = None
            continue
        if body is not None and line.strip():
            body.append(line)
    if body is not None:  # an unclosed last block
        computations[-1].instructions = _instructions(body)
    return computations


def _instructions(lines: list[str]) -> list[_Instruction]:
    return [inst for text in _instruction_texts(lines) if (inst := _parse_instruction(text))]


# -- shapes ------------------------------------------------------------------------------
def _shape_tree(shape_text: str) -> list:
    """The shape as nested lists of ``(dtype, dims)`` leaves; layouts and tokens dropped."""
    text = _LAYOUT.sub("", shape_text)
    stack: list[list] = [[]]
    for token in re.finditer(r"\(|\)|(\w+)\[([^\]]*)\]", text):
        if token.group(0) == "(":
            stack.append([])
        elif token.group(0) == ")":
            done = stack.pop()
            stack[-1].append(done)
        elif token.group(1) in _DTYPE_BYTES:
            stack[-1].append((token.group(1), token.group(2)))
        else:
            stack[-1].append(None)  # token[] and unknown types keep their tuple position
    top = stack[0]
    return top[0] if len(top) == 1 and isinstance(top[0], list) else top


def _leaves(tree) -> list[tuple[str, str]]:
    if tree is None:
        return []
    if isinstance(tree, tuple):
        return [tree]
    return [leaf for item in tree for leaf in _leaves(item)]


def _counted_result(inst: _Instruction, op: str) -> list[tuple[str, str]]:
    """The arrays of the result a collective delivers, picked out of its instruction's shape."""
    tree = _shape_tree(inst.shape)
    if op in ("send", "recv"):
        element = 0  # (data, context, token)
    elif inst.opcode.endswith("-start") and op != "all-reduce":
        element = 1  # (operands, result, context...); all-reduce-start returns the result itself
    else:
        return _leaves(tree)
    if isinstance(tree, list) and len(tree) > element:
        return _leaves(tree[element])
    return _leaves(tree)


# -- attributes --------------------------------------------------------------------------
def _int_groups(text: str) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(d) for d in g.replace(" ", "").split(",") if d) for g in _INNER_BRACES.findall(text))


def _iota_groups(num_groups: int, group_size: int, reshape: str, perm: str | None) -> tuple[tuple[int, ...], ...]:
    """XLA's IotaReplicaGroupList: iota(prod(reshape)) reshaped, transposed by perm, flattened,
    then cut into ``num_groups`` rows of ``group_size``."""
    dims = [int(d) for d in reshape.split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if perm:
        ids = ids.transpose([int(p) for p in perm.split(",")])
    rows = ids.reshape(num_groups, group_size)
    return tuple(tuple(int(d) for d in row) for row in rows)


def _replica_groups(attrs: str) -> tuple[tuple[int, ...], ...] | None:
    explicit = _EXPLICIT_GROUPS.search(attrs)
    if explicit:
        return _int_groups(explicit.group(1)) or None
    iota = _IOTA_GROUPS.search(attrs)
    if iota:
        return _iota_groups(int(iota.group(1)), int(iota.group(2)), iota.group(3), iota.group(4))
    return None


def _source_target_pairs(inst: _Instruction) -> tuple[tuple[int, int], ...] | None:
    found = _PAIRS.search(inst.plain_attrs) or _SEND_RECV_PAIRS.search(inst.attrs)
    return tuple((g[0], g[1]) for g in _int_groups(found.group(1))) if found else None


def _trip_count(inst: _Instruction) -> int | None:
    found = _TRIP_COUNT.search(inst.attrs)
    return int(found.group(1)) if found else None


def _callees(inst: _Instruction) -> list[tuple[str, str]]:
    """(attribute, computation) for every computation the instruction calls."""
    attrs = inst.plain_attrs
    found = [(m.group(1), m.group(2)) for m in _CALLEE["single"].finditer(attrs)]
    for m in _CALLEE["list"].finditer(attrs):
        found += [(m.group(1), name.strip().lstrip("%")) for name in m.group(2).split(",") if name.strip()]
    return found


def _collective_op(opcode: str) -> str | None:
    """The collective an opcode starts, or None (``-done``/``-update`` halves count as nothing)."""
    if opcode in HLO_COLLECTIVE_OPS:
        return opcode
    base = opcode.removesuffix("-start")
    return base if base != opcode and base in _ASYNC_OPS else None


# -- the call graph ----------------------------------------------------------------------
@dataclass(frozen=True)
class _CallSite:
    runs: int | None
    """Times the callee runs per run of the caller; None when a loop's trip count is unknown."""
    branch: bool


class _CallGraph:
    """Who calls each computation, and how often, so executions can be summed over call paths."""

    def __init__(self, computations: list[_Computation], wrapped: set[str]):
        self.calls: dict[str, list[tuple[str, _CallSite]]] = {}
        for comp in computations:
            for inst in comp.instructions:
                for attr, callee in self._edges(inst, wrapped):
                    self.calls.setdefault(comp.name, []).append((callee, self._site(inst, attr)))
        # Runs per program run, and whether some call path passes through a conditional branch,
        # of every computation reached from ENTRY (absent: not reached).
        self.executions: dict[str, int | None] = {}
        self.conditional: dict[str, bool] = {}
        entry = next((c.name for c in computations if c.entry), None)
        if entry is not None:
            self._propagate(entry)

    @staticmethod
    def _edges(inst: _Instruction, wrapped: set[str]) -> list[tuple[str, str]]:
        # A collective's to_apply is its reduction; async halves repeat the start's computation,
        # and a wrapped collective is reported at its async-start instead.
        if _collective_op(inst.opcode) or inst.opcode in ("async-update", "async-done"):
            return []
        return [(attr, callee) for attr, callee in _callees(inst) if callee not in wrapped]

    @staticmethod
    def _site(inst: _Instruction, attr: str) -> _CallSite:
        runs: int | None = 1
        if inst.opcode == "while":
            trips = _trip_count(inst)
            # The condition runs once more than the body: it is what ends the loop.
            runs = None if trips is None else trips + (attr == "condition")
        branch = attr in ("branch_computations", "true_computation", "false_computation")
        return _CallSite(runs, branch)

    def _reachable(self, entry: str) -> set[str]:
        seen, todo = {entry}, [entry]
        while todo:
            for callee, _ in self.calls.get(todo.pop(), []):
                if callee not in seen:
                    seen.add(callee)
                    todo.append(callee)
        return seen

    def _propagate(self, entry: str) -> None:
        """Visit callers before callees (the call graph is acyclic), summing over call sites."""
        reachable = self._reachable(entry)
        waiting = dict.fromkeys(reachable, 0)  # call sites not yet added in, per computation
        for caller in reachable:
            for callee, _ in self.calls.get(caller, []):
                waiting[callee] += 1
        runs: dict[str, int | None] = {entry: 1}
        branch: dict[str, bool] = {entry: False}
        ready = [entry]
        while ready:
            caller = ready.pop()
            self.executions[caller], self.conditional[caller] = runs[caller], branch[caller]
            for callee, site in self.calls.get(caller, []):
                before, caller_runs = runs.get(callee, 0), runs[caller]
                unknown = before is None or caller_runs is None or site.runs is None
                runs[callee] = None if unknown else before + caller_runs * site.runs
                branch[callee] = branch.get(callee, False) or branch[caller] or site.branch
                waiting[callee] -= 1
                if waiting[callee] == 0:
                    ready.append(callee)


def _wrapped_collectives(computations: list[_Computation]) -> dict[str, _Instruction]:
    """Computations that a generic ``async-start`` wraps around a single collective (its root)."""
    by_name = {c.name: c for c in computations}
    wrapped = {}
    for comp in computations:
        for inst in comp.instructions:
            if inst.opcode != "async-start":
                continue
            for _, callee in _callees(inst):
                roots = [i for i in by_name.get(callee, _Computation(callee, False)).instructions if i.root]
                if roots and _collective_op(roots[0].opcode):
                    wrapped[callee] = roots[0]
    return wrapped


_NUMPY_NAMES = {
    "pred": "bool", "s8": "int8", "u8": "uint8", "s16": "int16", "u16": "uint16", "s32": "int32",
    "u32": "uint32", "s64": "int64", "u64": "uint64", "f16": "float16", "bf16": "bfloat16",
    "f32": "float32", "f64": "float64", "c64": "complex64", "c128": "complex128",
    "f8e4m3fn": "float8_e4m3fn", "f8e5m2": "float8_e5m2",
}  # fmt: skip
"""HLO element type -> numpy dtype name (the IR's)."""

_REDUCTIONS = {"add": "sum", "maximum": "max", "minimum": "min", "multiply": "prod", "and": "and", "or": "or"}
"""Root opcode of a ``to_apply`` computation -> the reduction it computes."""


def _payload(arrays: list[tuple[str, str]]) -> tuple[tuple[str, int], ...]:
    sizes: dict[str, int] = {}
    for dtype, dims in arrays:
        name = _NUMPY_NAMES.get(dtype, dtype)
        sizes[name] = sizes.get(name, 0) + _array_bytes(dtype, dims)
    return tuple(sorted(sizes.items()))


def _reduction(inst: _Instruction, roots: Mapping[str, str]) -> str | None:
    applied = [name for attr, name in _callees(inst) if attr == "to_apply"]
    return _REDUCTIONS.get(roots.get(applied[0], "")) if applied else None


def collectives_in_hlo(hlo_text: str) -> list[HloCollective]:
    """Every collective in ``hlo_text`` (as from ``compiled.as_text()``), in text order.

    An async ``X-start``/``X-done`` pair, a generic ``async-start`` wrapping a collective, and a
    ``send``/``send-done`` pair each appear once. ``executions`` says how often each one runs.
    """
    computations = _parse_module(hlo_text)
    wrapped = _wrapped_collectives(computations)
    graph = _CallGraph(computations, set(wrapped))
    roots = {c.name: next((i.opcode for i in c.instructions if i.root), "") for c in computations}
    found = []
    for comp in computations:
        if comp.name in wrapped:
            continue  # reported at the async-start that wraps it
        for inst in comp.instructions:
            collective, async_ = inst, inst.opcode.endswith("-start")
            if inst.opcode == "async-start":
                inner = [wrapped[c] for _, c in _callees(inst) if c in wrapped]
                if not inner:
                    continue
                collective = inner[0]
            op = _collective_op(collective.opcode)
            if op:
                found.append(_collective(collective, op, comp, graph, async_, roots))
    return found


def _collective(
    inst: _Instruction, op: str, comp: _Computation, graph: _CallGraph, async_: bool, roots: Mapping[str, str]
) -> HloCollective:
    arrays = _counted_result(inst, op)
    groups = _replica_groups(inst.plain_attrs)
    return HloCollective(
        op=op,
        result_bytes=sum(_array_bytes(dtype, dims) for dtype, dims in arrays),
        computation=comp.name,
        entry=comp.entry,
        group_size=len(groups[0]) if groups else None,
        dtypes=tuple(dtype for dtype, _ in arrays),
        replica_groups=groups,
        source_target_pairs=_source_target_pairs(inst),
        executions=graph.executions.get(comp.name),
        conditional=graph.conditional.get(comp.name, False),
        async_=async_,
        payload=_payload(arrays),
        reduction=_reduction(inst, roots),
    )


# -- mesh axes ---------------------------------------------------------------------------
MeshAxisSizes = Mapping[str, int] | Sequence[tuple[str, int]]
"""A mesh's axes in order with their sizes: ``mesh.shape`` or ``[("data", 4), ("model", 2)]``."""

# The reduction an all-reduce computes does not depend on the order of devices in a group.
_ORDER_FREE_OPS = frozenset({"all-reduce"})


def _axes(mesh_axis_sizes: MeshAxisSizes) -> tuple[tuple[str, ...], tuple[int, ...]]:
    pairs = list(mesh_axis_sizes.items() if isinstance(mesh_axis_sizes, Mapping) else mesh_axis_sizes)
    return tuple(name for name, _ in pairs), tuple(int(size) for _, size in pairs)


def _coordinates(ids: Iterable[int], sizes: tuple[int, ...]) -> list[tuple[int, ...]] | None:
    ids = list(ids)
    if any(not 0 <= i < math.prod(sizes) for i in ids):
        return None
    return [tuple(int(c) for c in np.unravel_index(i, sizes)) for i in ids]


def mesh_axes_of(collective: HloCollective, mesh_axis_sizes: MeshAxisSizes) -> tuple[str, ...] | None:
    """The mesh axes a collective communicates over, or None when they are not mesh axes.

    ``mesh_axis_sizes`` lists the mesh's axes in order with their sizes (``mesh.shape`` works);
    device ids in the HLO are read as positions in ``mesh.devices.flat``, which is what XLA
    prints for a ``jax.jit``/``jax.shard_map`` program.

    With replica groups, the groups must be exactly the cosets of some set of axes (every group
    varies the same axes over their full range, and together they tile the mesh). The axes come
    in the order the group lists devices, major first, so that ``all_gather`` over
    ``("model", "data")`` reads back as such (None when no axis order lists them so); for an
    all-reduce, whose result does not depend on that order, always in mesh order. With source/target pairs,
    the axes along which a pair's coordinates differ, in mesh order. ``()`` means every group is a
    single device.
    """
    names, sizes = _axes(mesh_axis_sizes)
    if collective.replica_groups is not None:
        return _group_axes(collective.replica_groups, collective.op, names, sizes)
    if collective.source_target_pairs is not None:
        return _pair_axes(collective.source_target_pairs, names, sizes)
    return None


def _group_axes(groups, op: str, names: tuple[str, ...], sizes: tuple[int, ...]) -> tuple[str, ...] | None:
    coords = [_coordinates(group, sizes) for group in groups]
    if any(not c for c in coords):
        return None  # an id off the mesh, or an empty group
    varying = _varying_axes(coords[0])
    if not _tiles_mesh(coords, varying, sizes):
        return None
    if op in _ORDER_FREE_OPS:
        return tuple(names[a] for a in varying)
    order = _enumeration_order(coords, varying, sizes)
    return None if order is None else tuple(names[a] for a in order)


def _varying_axes(group: list[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(a for a in range(len(group[0])) if len({c[a] for c in group}) > 1)


def _tiles_mesh(coords: list[list[tuple[int, ...]]], varying: tuple[int, ...], sizes: tuple[int, ...]) -> bool:
    """True when each group is one full coset over ``varying`` and the groups cover the mesh once."""
    fixed = [a for a in range(len(sizes)) if a not in varying]
    group_size = math.prod(sizes[a] for a in varying)
    seen_cosets = set()
    for group in coords:
        if len(group) != group_size or len(set(group)) != group_size:
            return False
        cosets = {tuple(c[a] for a in fixed) for c in group}
        if len(cosets) != 1 or _varying_axes(group) != varying:
            return False
        seen_cosets |= cosets
    return len(seen_cosets) == len(coords) == math.prod(sizes) // group_size


def _enumeration_order(coords, varying: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[int, ...] | None:
    """The order of ``varying`` axes (major first) in which every group lists its devices."""
    for order in itertools.permutations(varying):
        ranges = [range(sizes[a]) for a in order]
        expected = list(itertools.product(*ranges))
        if all([tuple(c[a] for a in order) for c in group] == expected for group in coords):
            return order
    return None


def _pair_axes(pairs, names: tuple[str, ...], sizes: tuple[int, ...]) -> tuple[str, ...] | None:
    differing: set[int] = set()
    for source, target in pairs:
        both = _coordinates((source, target), sizes)
        if both is None:
            return None
        differing.update(_differing(*both))
    return tuple(names[a] for a in sorted(differing))


def _differing(a: tuple[int, ...], b: tuple[int, ...]) -> list[int]:
    return [axis for axis in range(len(a)) if a[axis] != b[axis]]


def permute_shifts(
    collective: HloCollective, mesh_axis_sizes: MeshAxisSizes
) -> tuple[tuple[tuple[str, int], ...], ...] | None:
    """The distinct moves a collective-permute's pairs make, as mesh-axis index shifts.

    Each move is ``((axis, shift), ...)`` over the axes it changes, the shift taken modulo the
    axis size (so a ring ``i -> i+1`` over ``data`` of size 4 is ``((("data", 1),),)`` and the
    reverse ring ``((("data", 3),),)``). None when there are no pairs or an id is off the mesh.
    """
    if collective.source_target_pairs is None:
        return None
    names, sizes = _axes(mesh_axis_sizes)
    moves = set()
    for source, target in collective.source_target_pairs:
        both = _coordinates((source, target), sizes)
        if both is None:
            return None
        (source_at, target_at) = both
        moves.add(tuple((names[a], (target_at[a] - source_at[a]) % sizes[a]) for a in _differing(source_at, target_at)))
    return tuple(sorted(moves))
