"""Front end: the user-facing descriptions of a mesh and a parallel plan.

These are plain keyword-only dataclasses, checked for types and ranges when built.
Relationships between them (does the DP axis exist? do the axis sizes fit the
devices?) are checked later, by passes over the plan IR, so that every problem
is reported at once. Nothing here imports JAX.
"""

from titanax.frontend.mesh_spec import MeshSpec
from titanax.frontend.plan import DP, Plan

__all__ = ["DP", "MeshSpec", "Plan"]
