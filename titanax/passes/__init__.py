"""Passes over the plan IR: validation, rewriting, and the pipeline that runs them.

Importing this package registers every pass in :data:`PASS_REGISTRY`. Nothing
here imports JAX.
"""

from titanax.passes.annotate_payloads import AnnotatePayloads
from titanax.passes.base import PASS_REGISTRY, Pass, PassContext, Target, register_pass
from titanax.passes.build_schedule import BuildSchedule
from titanax.passes.check_mesh import CheckMesh
from titanax.passes.check_parallel_axes import CheckParallelAxes
from titanax.passes.check_pipeline import CheckPipeline
from titanax.passes.check_precision import CheckPrecision
from titanax.passes.check_stage_balance import CheckStageBalance
from titanax.passes.check_tensor_parallel import CheckTensorParallel
from titanax.passes.compile import DEFAULT_PASSES, VALIDATION_PASSES, compile_plan, parse_pipeline, passes_by_name
from titanax.passes.infer_mesh_shape import InferMeshShape
from titanax.passes.insert_dp_collectives import GRADIENT_SYNC, METRIC_REDUCE, InsertDPCollectives
from titanax.passes.insert_fsdp_collectives import InsertFSDPCollectives
from titanax.passes.insert_nonfinite_guard import STATE_FINITE, InsertNonfiniteGuard
from titanax.passes.insert_pp_collectives import PP_COLLECTIVES, InsertPPCollectives
from titanax.passes.insert_precision_collectives import GRAD_FINITE, InsertPrecisionCollectives
from titanax.passes.insert_traced_collectives import InsertTracedCollectives
from titanax.passes.manager import PassEvent, PassPipeline, PassTimings, print_after_each, verify_after_each
from titanax.passes.resolve_shardings import ResolveShardings, glob_matches, rule_specificity
from titanax.passes.verify_schedule import VerifySchedule

__all__ = [
    "PP_COLLECTIVES",
    "BuildSchedule",
    "InsertFSDPCollectives",
    "InsertNonfiniteGuard",
    "InsertPPCollectives",
    "STATE_FINITE",
    "VerifySchedule",
    "DEFAULT_PASSES",
    "GRAD_FINITE",
    "GRADIENT_SYNC",
    "METRIC_REDUCE",
    "PASS_REGISTRY",
    "AnnotatePayloads",
    "CheckMesh",
    "CheckParallelAxes",
    "CheckPipeline",
    "CheckPrecision",
    "CheckStageBalance",
    "CheckTensorParallel",
    "InferMeshShape",
    "InsertDPCollectives",
    "InsertPrecisionCollectives",
    "InsertTracedCollectives",
    "Pass",
    "PassContext",
    "PassEvent",
    "PassPipeline",
    "PassTimings",
    "ResolveShardings",
    "Target",
    "VALIDATION_PASSES",
    "compile_plan",
    "glob_matches",
    "parse_pipeline",
    "passes_by_name",
    "print_after_each",
    "register_pass",
    "rule_specificity",
    "verify_after_each",
]
