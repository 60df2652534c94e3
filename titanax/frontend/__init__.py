"""Front end: the user-facing descriptions of a mesh and a parallel plan.

These are plain keyword-only dataclasses, checked for types and ranges when built.
Relationships between them (does the DP axis exist? do the axis sizes fit the
devices?) are checked later, by passes over the plan IR, so that every problem
is reported at once. Nothing here imports JAX.
"""

from titanax.frontend.activations import Activations
from titanax.frontend.fully_sharded import FSDP, FSDP_STAGES, FSDPRule
from titanax.frontend.mesh_spec import MeshSpec
from titanax.frontend.pipeline import PP, REMAT_POLICIES, SCHEDULES, LayerRange, Stage, parse_layer
from titanax.frontend.plan import DP, Plan
from titanax.frontend.precision import DTYPES, Precision
from titanax.frontend.tensor_parallel import ROLES, TP, Rule

__all__ = [
    "DP",
    "Activations",
    "DTYPES",
    "FSDP",
    "FSDP_STAGES",
    "FSDPRule",
    "PP",
    "ROLES",
    "REMAT_POLICIES",
    "SCHEDULES",
    "TP",
    "LayerRange",
    "MeshSpec",
    "Plan",
    "Precision",
    "Rule",
    "Stage",
    "parse_layer",
]
