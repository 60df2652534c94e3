"""The plan IR: a typed graph of mesh axes, parallel dimensions, sharding rules,
pipeline stages, collectives and schedule ops, with a verifier and printers.

Nothing here imports JAX.
"""

from titanax.ir.build import build_ir
from titanax.ir.graph import PlanIR
from titanax.ir.nodes import (
    COLLECTIVE_OPS,
    AxisNode,
    CollectiveNode,
    DataParallelNode,
    EdgeKind,
    MeshNode,
    Node,
    NodeKind,
    ParamNode,
    PipelineParallelNode,
    PrecisionNode,
    ScheduleOpNode,
    ShardRuleNode,
    StageNode,
    TensorParallelNode,
)
from titanax.ir.printer import ir_to_dict, ir_to_dot, ir_to_json, print_ir
from titanax.ir.verify import verify_ir

__all__ = [
    "COLLECTIVE_OPS",
    "AxisNode",
    "CollectiveNode",
    "DataParallelNode",
    "EdgeKind",
    "MeshNode",
    "Node",
    "NodeKind",
    "ParamNode",
    "PipelineParallelNode",
    "PlanIR",
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
