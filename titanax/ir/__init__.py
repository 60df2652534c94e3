"""The plan IR: a typed graph of mesh axes, parallel dimensions, sharding rules,
pipeline stages, collectives and schedule ops, with a verifier and printers.

Nothing here imports JAX.
"""

from titanax.ir.backend import DTYPE_BYTES, dtype_bytes, wire_dtype, wire_payload
from titanax.ir.build import build_ir
from titanax.ir.graph import PlanIR
from titanax.ir.nodes import (
    COLLECTIVE_OPS,
    REDUCTIONS,
    ActivationsNode,
    AxisNode,
    Cadence,
    CollectiveNode,
    DataParallelNode,
    EdgeKind,
    FullyShardedNode,
    MeshNode,
    Node,
    NodeKind,
    Operand,
    ParamNode,
    PipelineParallelNode,
    PrecisionNode,
    ScheduleOpNode,
    ShardRuleNode,
    StageNode,
    TensorParallelNode,
)
from titanax.ir.printer import ir_to_dict, ir_to_dot, ir_to_json, print_ir
from titanax.ir.schedule import Op, Schedule, build_schedule, schedule_from_ir, schedule_problems
from titanax.ir.traced import TracedCollective
from titanax.ir.verify import verify_ir

__all__ = [
    "COLLECTIVE_OPS",
    "DTYPE_BYTES",
    "REDUCTIONS",
    "AxisNode",
    "Cadence",
    "CollectiveNode",
    "Op",
    "Operand",
    "Schedule",
    "TracedCollective",
    "build_schedule",
    "dtype_bytes",
    "schedule_from_ir",
    "schedule_problems",
    "wire_dtype",
    "wire_payload",
    "DataParallelNode",
    "FullyShardedNode",
    "EdgeKind",
    "MeshNode",
    "Node",
    "NodeKind",
    "ParamNode",
    "PipelineParallelNode",
    "PlanIR",
    "ActivationsNode",
    "PrecisionNode",
    "ScheduleOpNode",
    "ShardRuleNode",
    "StageNode",
    "TensorParallelNode",
    "build_ir",
    "ir_to_dict",
    "ir_to_dot",
    "ir_to_json",
    "print_ir",
    "verify_ir",
]
