"""``tx.distributed``: join the processes of a multi-process run through ``jax.distributed``.

One script serves one device, many devices, and many processes. Call
:func:`initialize` at the top of the script, before anything else uses JAX:

- under ``titanax launch`` it reads the launcher's variables (``TITANAX_COORDINATOR``,
  ``TITANAX_NUM_PROCESSES``, ``TITANAX_PROCESS_ID``) and joins the others;
- with explicit arguments it uses them;
- on a cluster JAX already recognises (SLURM, Open MPI, Kubernetes...) it lets JAX
  read the cluster's environment;
- otherwise (a plain ``python script.py``) it does nothing and returns ``False``.

After it, ``jax.devices()`` lists every process's devices, meshes span all of
them, and each process drives its own (JAX's multi-controller model).
"""

from __future__ import annotations

import os

import jax

from titanax.errors import DistributedError

__all__ = ["ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID", "initialize", "is_initialized"]

ENV_COORDINATOR = "TITANAX_COORDINATOR"
"""``host:port`` of process 0's coordinator, set by ``titanax launch``."""
ENV_NUM_PROCESSES = "TITANAX_NUM_PROCESSES"
"""How many processes the run has, set by ``titanax launch``."""
ENV_PROCESS_ID = "TITANAX_PROCESS_ID"
"""This process's rank, set by ``titanax launch``."""

_CLUSTER_MARKERS = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "JOBSET_NAME", "MEGASCALE_COORDINATOR_ADDRESS")
"""Environment variables of the clusters ``jax.distributed`` detects on its own."""


def is_initialized() -> bool:
    """Whether this process has joined a multi-process run."""
    return jax.distributed.is_initialized()


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError.single(
            "TX742", f"environment variable {name}={value!r} is not an integer", f"unset {name} or set it to a number"
        ) from None


def _in_multi_task_cluster() -> bool:
    if "SLURM_JOB_ID" in os.environ:
        return int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return any(marker in os.environ for marker in _CLUSTER_MARKERS[1:])


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
) -> bool:
    """Join the run's other processes; return ``True`` if this is a multi-process run.

    Arguments override the launcher's environment variables. It must run before
    any other JAX call (creating an array, listing devices): calling it later
    raises :class:`~titanax.DistributedError` TX741. Calling it again once joined
    does nothing. A peer that never joins makes JAX abort this process after
    ``timeout_s`` seconds; ``titanax launch`` then stops the others.

    Example::

        import titanax as tx
        tx.distributed.initialize()   # first thing in the script
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    explicit = (coordinator_address, num_processes, process_id)
    if all(value is None for value in explicit):
        if not _in_multi_task_cluster():
            return False  # one process: nothing to join
        kwargs = {}
    elif any(value is None for value in explicit):
        missing = [
            name
            for name, value in zip(("coordinator_address", "num_processes", "process_id"), explicit, strict=True)
            if value is None
        ]
        raise DistributedError.single(
            "TX742",
            f"tx.distributed.initialize() got part of a multi-process setup; missing {missing}",
            f"give all three, or set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} "
            "(titanax launch sets them)",
        )
    else:
        if not 0 <= process_id < num_processes:
            raise DistributedError.single(
                "TX742",
                f"process id {process_id} is not in 0..{num_processes - 1}",
                "ranks run from 0 to the number of processes minus one",
            )
        kwargs = {
            "coordinator_address": coordinator_address,
            "num_processes": num_processes,
            "process_id": process_id,
        }
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s)
    except RuntimeError as err:
        if "must be called before" not in str(err):
            raise
        raise DistributedError.single(
            "TX741",
            "tx.distributed.initialize() was called after JAX had already started (an array was created or "
            "devices were listed), so this process can no longer join the others",
            "call tx.distributed.initialize() first thing in the script, right after the imports and "
            "before any jax.numpy call, jax.devices() or tx.Engine",
        ) from None
    return True
