"""The node and edge types of the plan IR.

Every node is a frozen keyword-only dataclass; its fields are its attributes and
are printed in declaration order. Edges carry one :class:`EdgeKind`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar

from titanax.errors import Location

__all__ = [
    "AxisNode",
    "Cadence",
    "CollectiveNode",
    "DataParallelNode",
    "FullyShardedNode",
    "EdgeKind",
    "MeshNode",
    "Node",
    "NodeKind",
    "Operand",
    "ParamNode",
    "PipelineParallelNode",
    "PrecisionNode",
    "TensorParallelNode",
    "ScheduleOpNode",
    "ShardRuleNode",
    "StageNode",
    "UNRESOLVED_SIZE",
    "COLLECTIVE_OPS",
    "REDUCTIONS",
    "EDGE_RULES",
]

UNRESOLVED_SIZE = -1
"""Size of an axis not yet inferred from the device count."""

COLLECTIVE_OPS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
"""Collective operations, named as XLA names them in compiled HLO."""

REDUCTIONS = ("mean", "sum", "max", "min")
"""Reductions an all-reduce or reduce-scatter may perform."""


class Operand(StrEnum):
    """What a collective communicates. The lowering finds the collectives it must emit by this
    kind (and the IR node's id), never by a collective's name."""

    GRADIENTS = "gradients"
    """The gradients of every parameter, synchronised over the data-parallel axes."""
    METRICS = "metrics"
    """The step's metrics (the returned dict), reduced over the data-parallel axes."""
    NONFINITE_COUNT = "nonfinite_count"
    """The int32 count of non-finite gradient values under float16 loss scaling."""
    STATE_NONFINITE = "state_nonfinite"
    """1 where this device's shards of the updated state hold an Inf or NaN (``nonfinite="skip"``)."""
    STAGE_ACTIVATIONS = "stage_activations"
    """Activations one pipeline stage sends to the next, once per tick."""
    STAGE_COTANGENTS = "stage_cotangents"
    """Cotangents one pipeline stage sends to the previous one, once per tick."""
    REPLICATED_GRADIENTS = "replicated_gradients"
    """Gradients of parameters every pipeline stage holds whole, summed over the pipeline axis."""
    PIPELINE_LOSS = "pipeline_loss"
    """The loss the last pipeline stage computes, summed over the pipeline axis."""
    ACTIVATIONS = "activations"
    """A value of the user's forward computation (a traced collective)."""
    COTANGENTS = "cotangents"
    """A value of the backward computation autodiff derived from the user's code (a traced collective)."""
    FSDP_PARAMS = "fsdp_params"
    """Stage 3: parameter shards gathered whole over the FSDP axes before the forward, once per step."""
    FSDP_UPDATED_PARAMS = "fsdp_updated_params"
    """Stages 1 and 2: the shards the optimizer updated, gathered whole (replicated) over the FSDP axes."""
    FSDP_GRADS = "fsdp_grads"
    """Gradients of sharded parameters reduce-scattered (mean) over the FSDP axes into shards."""
    FSDP_WHOLE_GRADS = "fsdp_whole_grads"
    """Gradients of the parameters FSDP keeps whole (below ``min_size``), all-reduced (mean) over the FSDP axes."""
    FSDP_LAYER_PARAMS = "fsdp_layer_params"
    """Stage 3: one stacked layer's parameter shards gathered whole just before its forward."""
    FSDP_LAYER_PARAMS_AGAIN = "fsdp_layer_params_again"
    """Stage 3: one stacked layer's parameter shards gathered again for its backward (``reshard_after_forward``)."""
    FSDP_LAYER_GRADS = "fsdp_layer_grads"
    """Stage 3: one stacked layer's gradients reduce-scattered (mean) into shards in its backward."""


class Cadence(StrEnum):
    """How often a collective runs; its node's ``executions`` says how many times per step."""

    STEP = "step"
    """Once per step."""
    MICROBATCH = "microbatch"
    """Once per accumulation microbatch (inside the accumulation loop)."""
    TICK = "tick"
    """Once per pipeline tick (inside the loop over the schedule's ticks)."""
    LAYER = "layer"
    """Once per stacked layer in each pass over the layers that needs it (FSDP stage 3)."""
    TRACED = "traced"
    """As often as the loops around it in the traced step run (user code: loops over layers, ticks...)."""


class NodeKind(StrEnum):
    """What a node stands for; the printer orders nodes by this enum's order."""

    MESH = "mesh"
    AXIS = "axis"
    PARALLEL_DIM = "parallel_dim"
    PRECISION = "precision"
    ACTIVATIONS = "activations"
    SHARD_RULE = "shard_rule"
    PARAM = "param"
    STAGE = "stage"
    COLLECTIVE = "collective"
    SCHEDULE_OP = "schedule_op"


class EdgeKind(StrEnum):
    """What an edge means."""

    HAS_AXIS = "has_axis"
    """mesh -> axis: the mesh is made of this axis."""
    OVER = "over"
    """parallel dim / shard rule / collective -> axis: it partitions or communicates over the axis."""
    REQUIRES = "requires"
    """parallel dim -> collective: the dimension needs this collective in every step."""
    CONTAINS = "contains"
    """parallel dim -> shard rule / stage: the rule or stage belongs to that dimension."""
    LAYS_OUT = "lays_out"
    """shard rule -> param: the rule decided the parameter's layout."""
    NEXT = "next"
    """stage -> stage, schedule op -> schedule op: ordering."""
    RUNS = "runs"
    """schedule op -> stage: the op executes on that stage."""


@dataclass(frozen=True, kw_only=True)
class Node:
    """Base of every IR node; ``location`` points at the source that produced it."""

    kind: ClassVar[NodeKind]
    type_name: ClassVar[str]
    unprinted_defaults: ClassVar[tuple[str, ...]] = ()
    """Attributes left out of the printed form while they hold their default (a feature the plan
    does not use), so that plans without it print as they always did."""
    location: Location | None = None

    def attributes(self) -> dict[str, Any]:
        """The node's printed attributes, in declaration order, without its location."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "location" and not (f.name in self.unprinted_defaults and getattr(self, f.name) == f.default)
        }

    @property
    def axis_names(self) -> tuple[str, ...]:
        """The mesh axes this node refers to by name (empty for most kinds)."""
        return ()


@dataclass(frozen=True, kw_only=True)
class MeshNode(Node):
    """The device mesh: which devices, how many."""

    kind = NodeKind.MESH
    type_name = "mesh"
    devices: str
    """``"all"``, ``"count"``, ``"list"`` or a platform name."""
    device_count: int | None
    """Number of devices, once known (from the spec or the target)."""


@dataclass(frozen=True, kw_only=True)
class AxisNode(Node):
    """One named mesh axis."""

    kind = NodeKind.AXIS
    type_name = "axis"
    name: str
    size: int
    """Devices along the axis; ``-1`` until inferred."""
    position: int
    """0 for the outermost axis."""


@dataclass(frozen=True, kw_only=True)
class DataParallelNode(Node):
    """Data parallelism over ``axes``: batch sharded, gradients averaged."""

    kind = NodeKind.PARALLEL_DIM
    type_name = "parallel_dim.data"
    axes: tuple[str, ...]
    accumulate_steps: int = 1

    @property
    def axis_names(self) -> tuple[str, ...]:
        """The node's ``axes``."""
        return self.axes


@dataclass(frozen=True, kw_only=True)
class FullyShardedNode(Node):
    """Fully sharded data parallelism over ``axes``: batch split as under DP; the optimizer state
    (stage 1), also the gradients (2) and also the parameters (3) split over ``axes``."""

    kind = NodeKind.PARALLEL_DIM
    type_name = "parallel_dim.fully_sharded"
    axes: tuple[str, ...]
    stage: int = 3
    min_size: int = 1024
    """Parameters with fewer elements stay whole."""
    reshard_after_forward: bool = True
    """Stage 3: gather each layer again for its backward rather than keep it from the forward."""
    accumulate_steps: int = 1
    """Microbatches per device per step (as data parallelism's)."""
    rules: tuple[tuple[str, int | None], ...] = ()
    """``(pattern, dimension or none)`` overriding the chosen shard dimension, in written order."""

    @property
    def axis_names(self) -> tuple[str, ...]:
        """The node's ``axes``."""
        return self.axes


@dataclass(frozen=True, kw_only=True)
class TensorParallelNode(Node):
    """Tensor parallelism over ``axes``: parameters split by the shard rules it contains."""

    kind = NodeKind.PARALLEL_DIM
    type_name = "parallel_dim.tensor"
    unprinted_defaults = ("weight_layout",)
    axes: tuple[str, ...]
    sequence_parallel: bool = False
    """Activations are sharded along the sequence around norms (reduce-scatter + all-gather)."""
    weight_layout: str = "in_out"
    """``in_out`` or ``out_in``: which dimension of a stored matrix ``column`` and ``row`` split."""

    @property
    def axis_names(self) -> tuple[str, ...]:
        """The node's ``axes``."""
        return self.axes


@dataclass(frozen=True, kw_only=True)
class PipelineParallelNode(Node):
    """Pipeline parallelism over one axis: the stages it contains, run on a schedule."""

    kind = NodeKind.PARALLEL_DIM
    type_name = "parallel_dim.pipeline"
    axes: tuple[str, ...]
    microbatches: int
    schedule: str
    """``gpipe``, ``1f1b``, ``interleaved``, ``zbh1`` or ``user`` (a table the plan names)."""
    blocks: str = "blocks"
    """Parameter entry holding the stacked blocks, split evenly over the pipeline axis."""
    balance_tolerance: float = 1.25
    """Largest allowed max/min ratio of per-stage cost."""
    virtual_stages: int = 1
    """Chunks of blocks each device holds (``interleaved``): model stage ``c * p + s`` is chunk ``c`` of device ``s``."""
    remat: str = "none"
    """What a forward keeps for its backward: ``none`` (every residual), ``dots`` (matmul outputs) or
    ``full`` (only the stage input; the backward reruns the forward)."""
    table: str | None = None
    """Path of the schedule table the user wrote (schedule ``user``), read by ``build-schedule``."""

    @property
    def axis_names(self) -> tuple[str, ...]:
        """The node's ``axes``."""
        return self.axes


@dataclass(frozen=True, kw_only=True)
class ActivationsNode(Node):
    """The activation policy of the stacked blocks: what their forward keeps for the backward."""

    kind = NodeKind.ACTIVATIONS
    type_name = "activations"
    remat: str
    """``none``, ``dots`` or ``full`` (see ``parallel_dim.pipeline``'s ``remat``, which it supplies
    when the pipeline names none)."""


@dataclass(frozen=True, kw_only=True)
class PrecisionNode(Node):
    """The mixed-precision policy: dtypes of stored parameters, of the math, of the outputs."""

    kind = NodeKind.PRECISION
    type_name = "precision"
    params: str
    compute: str
    output: str
    loss_scaling: str = "none"
    """``dynamic`` under float16 (the step scales the loss and skips overflowing updates), else ``none``."""
    loss_scale_init: float = 2.0**15
    """Starting loss scale under dynamic loss scaling."""
    loss_scale_growth_interval: int = 2000
    """Finite steps in a row after which the loss scale doubles."""


@dataclass(frozen=True, kw_only=True)
class ShardRuleNode(Node):
    """How parameters whose path matches ``pattern`` are laid out on the mesh."""

    kind = NodeKind.SHARD_RULE
    type_name = "shard_rule"
    pattern: str
    """Glob over ``/``-joined parameter paths."""
    role: str
    """``replicated``, ``column``, ``row`` or ``spec``."""
    spec: tuple[str | tuple[str, ...] | None, ...] = ()
    """Per-dimension axis names for ``role == "spec"``."""
    axes: tuple[str, ...] = ()
    """Axes the matching parameters are sharded over."""

    @property
    def axis_names(self) -> tuple[str, ...]:
        """The node's ``axes``."""
        return self.axes


@dataclass(frozen=True, kw_only=True)
class ParamNode(Node):
    """One parameter of the model and the layout its rule resolved to."""

    kind = NodeKind.PARAM
    type_name = "param"
    unprinted_defaults = ("fsdp_dim", "fsdp_gather")
    path: str
    """``/``-joined key path, e.g. ``block/attn/qkv/w``."""
    shape: tuple[int, ...]
    """Global shape."""
    spec: tuple[str | tuple[str, ...] | None, ...]
    """Partition spec, one entry per dimension (``none`` = whole)."""
    local_shape: tuple[int, ...]
    """Shape of the shard each device holds."""
    fsdp_dim: int | None = None
    """The dimension split over the FSDP axes (of the stored shape; ``none``: whole). Under stage 3
    the spec splits it too; under stages 1 and 2 only the gradients and optimizer state are split."""
    fsdp_gather: str | None = None
    """Stage 3: ``layer`` (a stacked layer, gathered inside the scan over layers) or ``step`` (gathered
    once per step); ``none`` otherwise."""

    @property
    def axis_names(self) -> tuple[str, ...]:
        """Every axis the spec splits over."""
        return tuple(
            a for entry in self.spec if entry is not None for a in ((entry,) if isinstance(entry, str) else entry)
        )


@dataclass(frozen=True, kw_only=True)
class StageNode(Node):
    """A pipeline stage: a named range of layers placed on one index of the pipeline axis."""

    kind = NodeKind.STAGE
    type_name = "stage"
    index: int
    layers: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class CollectiveNode(Node):
    """A collective the compiled step performs, inserted by a pass or traced from user code."""

    kind = NodeKind.COLLECTIVE
    type_name = "collective"
    name: str
    """A label for people (``grad_sync``, or the user source line of a traced one); nothing reads it."""
    op: str
    """One of :data:`COLLECTIVE_OPS`."""
    reduction: str | None
    """One of :data:`REDUCTIONS` for an all-reduce or reduce-scatter, else ``None``."""
    axes: tuple[str, ...]
    operand: Operand
    """What is communicated; the lowering emits Titanax's own collectives by this kind."""
    origin: str
    """``lowering`` (inserted by Titanax) or ``user`` (traced from the step function)."""
    group_size: int
    """Devices in each group; 1 means the collective moves nothing between devices
    (XLA still keeps it as a trivial instruction)."""
    permutation: tuple[tuple[int, int], ...] = ()
    """For a collective-permute: ``(source, target)`` positions along its one axis."""
    cadence: Cadence = Cadence.STEP
    """How often it runs."""
    executions: int | None = 1
    """How many times it runs per step (``None``: inside a loop whose trip count is not static)."""
    dtypes: tuple[str, ...] = ()
    """Element types it moves on the target backend (sorted), once shapes are known. XLA:CPU
    all-reduces 16-bit floats in float32, so the IR annotated for CPU says ``float32`` there."""
    payload_bytes: int | None = None
    """Bytes of the result on one device per execution, on the target backend, once shapes are
    known (what the HLO instruction's result holds; wire traffic depends on the algorithm)."""

    @property
    def axis_names(self) -> tuple[str, ...]:
        """The node's ``axes``."""
        return self.axes


@dataclass(frozen=True, kw_only=True)
class ScheduleOpNode(Node):
    """One cell of a pipeline schedule: at ``tick``, ``stage`` runs ``op`` on a microbatch."""

    kind = NodeKind.SCHEDULE_OP
    type_name = "schedule_op"
    tick: int
    stage: int
    op: str
    """``forward``, ``backward`` (the input gradient only when the schedule has ``weight`` ops) or ``weight``."""
    microbatch: int
    chunk: int = 0
    """Which of the device's chunks of blocks the op runs (0 unless the schedule is interleaved)."""


EDGE_RULES: dict[EdgeKind, frozenset[tuple[NodeKind, NodeKind]]] = {
    EdgeKind.HAS_AXIS: frozenset({(NodeKind.MESH, NodeKind.AXIS)}),
    EdgeKind.OVER: frozenset(
        {
            (NodeKind.PARALLEL_DIM, NodeKind.AXIS),
            (NodeKind.SHARD_RULE, NodeKind.AXIS),
            (NodeKind.PARAM, NodeKind.AXIS),
            (NodeKind.COLLECTIVE, NodeKind.AXIS),
        }
    ),
    EdgeKind.REQUIRES: frozenset(
        {(NodeKind.PARALLEL_DIM, NodeKind.COLLECTIVE), (NodeKind.PRECISION, NodeKind.COLLECTIVE)}
    ),
    EdgeKind.LAYS_OUT: frozenset({(NodeKind.SHARD_RULE, NodeKind.PARAM)}),
    EdgeKind.CONTAINS: frozenset(
        {(NodeKind.PARALLEL_DIM, NodeKind.SHARD_RULE), (NodeKind.PARALLEL_DIM, NodeKind.STAGE)}
    ),
    EdgeKind.NEXT: frozenset({(NodeKind.STAGE, NodeKind.STAGE), (NodeKind.SCHEDULE_OP, NodeKind.SCHEDULE_OP)}),
    EdgeKind.RUNS: frozenset({(NodeKind.SCHEDULE_OP, NodeKind.STAGE)}),
}
"""Which (source kind, target kind) pairs each edge kind may connect."""
