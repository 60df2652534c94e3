"""Checkpoints: the whole training state in one orbax checkpoint, restorable onto any plan.

A checkpoint holds two items, written by orbax's ``CheckpointManager``:

- ``state``: step, parameters, optimizer state, RNG key and (under float16) the
  loss scale, as arrays (orbax's standard tensorstore format: no pickle);
- ``meta``: JSON saying what the arrays are (every parameter's path, shape and
  dtype), the host step, the data position, and the mesh and plan IR that saved
  them.

Saving is asynchronous by default: the arrays are copied on their devices, then
moved to the host and written by a background thread while training goes on. orbax writes into a temporary
directory and renames it when complete, so a process killed mid-save leaves the
previous checkpoint as the latest one.

Restoring reads the metadata first and compares it with the state the current
engine built. Then orbax reads every array straight into the shardings of the
current mesh and plan, whatever mesh and plan saved it.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from titanax.errors import CheckpointError, Diagnostic
from titanax.lowering import path_text

__all__ = ["Checkpoint", "Checkpointer", "FORMAT"]

FORMAT = "titanax-checkpoint/1"
"""The ``format`` the metadata of every Titanax checkpoint carries."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where and how often :meth:`Engine.fit` saves the training state.

    ``every``: save after every ``every`` training steps (and after the last).
    ``keep``: how many of the newest checkpoints to keep (``None`` keeps all).
    ``async_``: write in the background (the default); ``False`` blocks until written.

    Example::

        engine = tx.Engine(..., checkpoint=tx.Checkpoint("runs/mnist/ckpt", every=500, keep=3))
    """

    directory: str | os.PathLike[str]
    """The directory holding one numbered subdirectory per saved step."""
    every: int = 1000
    """Save every this many training steps."""
    keep: int | None = 3
    """Newest checkpoints kept; older ones are deleted once a newer one is complete."""
    async_: bool = True
    """Write in a background thread so that saving blocks training only while arrays leave the devices."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.directory, str | os.PathLike) or not str(self.directory):
            problems.append(("directory", self.directory, "a path such as 'runs/ckpt'"))
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            problems.append(("every", self.every, "a positive number of steps"))
        if self.keep is not None and (isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1):
            problems.append(("keep", self.keep, "a positive count, or None to keep all"))
        if not isinstance(self.async_, bool):
            problems.append(("async_", self.async_, "True or False"))
        if problems:
            raise CheckpointError(
                [
                    Diagnostic(code="TX705", message=f"Checkpoint({name}={value!r}) is not valid", hint=f"use {want}")
                    for name, value, want in problems
                ]
            )


def _tree_of(state: Any) -> dict[str, Any]:
    """The arrays of a ``TrainState``, as the dict a checkpoint stores."""
    tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}
    if state.loss_scale is not None:
        tree["loss_scale"] = {"scale": state.loss_scale.scale, "good_steps": state.loss_scale.good_steps}
    return tree


def _describe(tree: Any) -> dict[str, list[Any]]:
    """``path -> [shape, dtype]`` for every array of ``tree``."""
    return {
        path_text(path): [list(leaf.shape), str(leaf.dtype)] for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _error(code: str, message: str, hint: str) -> CheckpointError:
    return CheckpointError(Diagnostic(code=code, message=message, hint=hint))


class Checkpointer:
    """The orbax ``CheckpointManager`` of one engine: saves states, restores them onto the engine's layout."""

    def __init__(self, config: Checkpoint):
        self.config = config
        self.directory = Path(config.directory).expanduser().absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise _error(
                "TX701",
                f"checkpoint directory {self.directory} is a file",
                "give Checkpoint(...) a directory path (it is created if missing)",
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep,
            enable_async_checkpointing=config.async_,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="titanax-checkpoint")
        self._pending: list[tuple[int, Future[Any]]] = []
        self._requested: set[int] = set()
        """Steps this session has saved (or started saving)."""

    # -- saving --------------------------------------------------------------
    def save(self, state: Any, *, host_step: int, data_position: int, mesh: Any, plan_ir: str) -> None:
        """Start saving ``state`` as step ``host_step``; asynchronously, return almost at once.

        The arrays are first copied on their devices (training goes on to donate the
        state's buffers to the next step). Asynchronously, one background thread then
        hands the copies to orbax, which moves them to the host and writes them while
        training continues; saves run one after another in the order they were made.
        With several processes orbax's own asynchronous save is used instead, which
        blocks while the arrays move to the host.
        """
        self._raise_failed_save()
        if host_step in self._requested:
            return  # already saved (e.g. fit saving the last step that was also an interval step)
        if host_step in self.manager.all_steps():
            raise _error(
                "TX707",
                f"checkpoint step {host_step} already exists in {self.directory}, from another run",
                "resume that run with fit(..., resume=True), save into a new directory, or delete the old steps",
            )
        self._requested.add(host_step)
        tree = jax.tree.map(lambda x: x.copy(), _tree_of(state))
        meta = {
            "format": FORMAT,
            "host_step": host_step,
            "data_position": data_position,
            "mesh": {name: int(size) for name, size in mesh.shape.items()},
            "process_count": jax.process_count(),
            "plan_ir": plan_ir,
            "params": _describe(state.params),
            "opt_state": _describe(state.opt_state),
            "loss_scale": state.loss_scale is not None,
        }
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
        if not self.config.async_:
            self.manager.save(host_step, args=args, force=True)
            self.manager.wait_until_finished()
        elif jax.process_count() > 1:
            # orbax synchronises the processes with a device collective inside save(); run from a
            # thread it could interleave with a training step's collectives differently on each
            # process, so with several processes it runs here (orbax still writes in the background).
            self.manager.save(host_step, args=args, force=True)
        else:
            # orbax's asynchronous save still blocks while it copies every array to host memory
            # (about three quarters of a whole save on a CPU machine); the thread takes that too.
            # One save at a time: each pending one holds a copy of the state in device memory.
            for _, previous in self._pending:
                previous.exception()
            self._raise_failed_save()
            future = self._executor.submit(self.manager.save, host_step, args=args, force=True)
            self._pending.append((host_step, future))

    def steps_of_other_runs(self, after: int) -> list[int]:
        """Saved steps beyond ``after`` that this session did not write (a fresh run would collide with them)."""
        self.wait()
        self.manager.reload()
        return [step for step in self.manager.all_steps() if step > after and step not in self._requested]

    def _raise_failed_save(self) -> None:
        """A background save that failed is reported at the next save or wait (TX706)."""
        done = [(step, future) for step, future in self._pending if future.done()]
        self._pending = [(step, future) for step, future in self._pending if not future.done()]
        for step, future in done:
            error = future.exception()
            if error is not None:
                raise _error(
                    "TX706",
                    f"saving checkpoint step {step} into {self.directory} failed: {type(error).__name__}: "
                    f"{str(error)[:300]}",
                    "check the disk space and permissions of the checkpoint directory; earlier checkpoints are intact",
                ) from error

    def wait(self) -> None:
        """Block until every started save is complete on disk (raises TX706 if one failed)."""
        for _, future in self._pending:
            future.exception()  # waits; the failure itself is raised below
        self._raise_failed_save()
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)
            self.manager.close()

    # -- restoring -----------------------------------------------------------
    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None`` when there is none (waits for pending saves)."""
        self.wait()
        self.manager.reload()
        return self.manager.latest_step()

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of checkpoint ``step``; a foreign or damaged directory is TX701/TX702."""
        where = self.directory / str(step)
        if not (where / "meta").is_dir():
            raise _error(
                "TX701",
                f"{where} is not a Titanax checkpoint (it has no 'meta' item)",
                "point Checkpoint(...) at a directory that Titanax saved into, or at an empty one",
            )
        meta = self._read(step, ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise _error(
                "TX701",
                f"{where} is not a Titanax checkpoint (format {found!r}, expected {FORMAT!r})",
                "point Checkpoint(...) at a directory that Titanax saved into",
            )
        return meta

    def restore(self, template: Any, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read checkpoint ``step`` (default: the latest) into the shardings of ``template``'s arrays.

        Returns ``(tree, meta)``; ``tree`` has the structure of ``template``'s stored fields.
        Nothing is returned unless every array was read.
        """
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise _error(
                    "TX704",
                    f"no complete checkpoint in {self.directory}",
                    "train with fit(..., resume=True), which starts fresh when there is none, or check the path",
                )
        elif step not in self.manager.all_steps():
            raise _error(
                "TX704",
                f"no checkpoint for step {step} in {self.directory}; saved steps: {self.manager.all_steps()}",
                "pass one of the saved steps, or step=None for the latest",
            )
        meta = self.read_meta(step)
        self._check_matches(template, meta, step)
        wanted = _tree_of(template)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), wanted)
        if meta["loss_scale"] and "loss_scale" not in abstract:
            # Saved under float16, restored under a policy without loss scaling: read and drop it.
            replicated = jax.sharding.NamedSharding(template.step.sharding.mesh, jax.P())
            abstract["loss_scale"] = {
                "scale": jax.ShapeDtypeStruct((), "float32", sharding=replicated),
                "good_steps": jax.ShapeDtypeStruct((), "int32", sharding=replicated),
            }
        fresh_loss_scale = not meta["loss_scale"] and "loss_scale" in abstract
        if fresh_loss_scale:
            # Saved without loss scaling, restored under float16: the scale starts fresh.
            del abstract["loss_scale"]
        restored = self._read(step, ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
        # orbax rebuilds containers as plain tuples and dicts; put the leaves back into the template's types.
        tree = {key: restored[key] for key in wanted if key in restored}
        if fresh_loss_scale:
            # Copies: the template's own arrays must survive the steps that donate the restored state.
            tree["loss_scale"] = jax.tree.map(lambda x: x.copy(), wanted["loss_scale"])
        leaves = jax.tree.leaves(tree)
        return jax.tree.unflatten(jax.tree.structure(wanted), leaves), meta

    def _read(self, step: int, args: Any) -> Any:
        """orbax's restore of ``args``; any failure to read is TX702 (damaged or incomplete files)."""
        try:
            return self.manager.restore(step, args=args)
        except Exception as err:  # noqa: BLE001 - any read failure means the same to the user
            raise _error(
                "TX702",
                f"checkpoint {self.directory / str(step)} cannot be read: {type(err).__name__}: {str(err)[:300]}",
                "the files are damaged or incomplete; restore an older step (step=...) or delete this one",
            ) from None

    def _check_matches(self, template: Any, meta: dict[str, Any], step: int) -> None:
        """A checkpoint of another model or optimizer is TX703, listing the differences."""
        problems = []
        for item in ("params", "opt_state"):
            saved, current = meta[item], _describe(getattr(template, item))
            missing = sorted(set(current) - set(saved))
            extra = sorted(set(saved) - set(current))
            if missing:
                problems.append(f"{item} {missing[:5]} not in the checkpoint")
            if extra:
                problems.append(f"{item} {extra[:5]} in the checkpoint but not in the state")
            for path in sorted(set(saved) & set(current)):
                if saved[path] != current[path]:
                    problems.append(
                        f"{item} {path}: checkpoint has shape {tuple(saved[path][0])} {saved[path][1]}, "
                        f"the state has {tuple(current[path][0])} {current[path][1]}"
                    )
        if problems:
            listing = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
            raise _error(
                "TX703",
                f"checkpoint {self.directory / str(step)} does not match the state to restore into: {listing}",
                "create the state from the same model and optimizer as the run that saved it "
                "(mesh and plan may differ)",
            )
