"""Checkpoints: the whole training state in one orbax checkpoint, restorable onto any plan.

A checkpoint holds two items, written by orbax's ``CheckpointManager``:

- ``state``: step, parameters, optimizer state, RNG key and (under float16) the
  loss scale, as arrays (orbax's standard tensorstore format: no pickle);
- ``meta``: JSON saying what the arrays are (every parameter's path, shape and
  dtype), the host step, the data position, the mesh and plan IR that saved
  them, and a checksum of every array.

What a checkpoint directory guarantees:

- **Only finite states.** Before anything is written, the devices check every
  array for Inf and NaN (one max-of-absolute-values reduction per distinct
  shard; one flag per shard crosses to the host). A state holding any is
  refused (TX712), so ``keep`` never deletes a good checkpoint to make room for
  a diverged one.
- **Integrity.** Every array's checksum (two 32-bit position-weighted sums of
  its bits, computed on a device holding each distinct shard: no host copy, and
  the same under any mesh) is recorded in the metadata. Restoring validates the
  metadata against its schema (TX709), reads the arrays, recomputes their
  checksums on the devices and compares (TX708 names the array that differs).
- **One writer.** A writer holds an exclusive ``flock`` on ``.titanax-writer.lock``
  in the directory (released when it closes, or by the kernel when it dies);
  a second run writing there is refused (TX707). Only the lock holder removes
  orbax temporary directories left by killed or failed saves.
- **Readers see whole steps.** orbax renames a step into place when complete,
  and old steps beyond ``keep`` are renamed out of the way before they are
  deleted, so a reader racing a writer reads a complete step or, if the one it
  picked disappears, the next newest (TX704 if it asked for that step).

Saving is asynchronous by default: the arrays are copied on their devices, then
moved to the host and written by a background thread while training goes on.
Every I/O failure (disk full, permissions, a path through a file, a symlink
loop) is TX706 naming the step and what to fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gc
import json
import math
import os
import re
import shutil
import socket
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax

from titanax.errors import CheckpointError, Diagnostic, NonFiniteError, TitanaxError
from titanax.lowering import path_text

__all__ = ["Checkpoint", "Checkpointer", "FORMAT", "LOCK_NAME", "NonFiniteStateError", "nonfinite_arrays"]

FORMAT = "titanax-checkpoint/2"
"""The ``format`` the metadata of every Titanax checkpoint carries (2: with array checksums)."""
_UNCHECKED_FORMATS = ("titanax-checkpoint/1",)
"""Formats still read, whose arrays carry no checksums."""
LOCK_NAME = ".titanax-writer.lock"
"""The file in a checkpoint directory that its one writer holds locked."""
_ORBAX_TMP = ".orbax-checkpoint-tmp"
_DELETING = ".titanax-deleting-"
_READ_ATTEMPTS = 3
_INT32_MAX = 2**31 - 1
_HEX16 = re.compile(r"[0-9a-f]{16}")


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
        if not isinstance(self.directory, str | os.PathLike) or not str(self.directory) or "\0" in str(self.directory):
            problems.append(("directory", self.directory, "a path such as 'runs/ckpt' (no NUL character)"))
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


class NonFiniteStateError(NonFiniteError):
    """TX712: a state holding Inf or NaN values was not saved, or a checkpoint holding them not restored.

    ``arrays`` maps each such array's path (``params/dense1/w``) to its count of those values.
    """

    def __init__(self, arrays: dict[str, int], subject: str, outcome: str, hint: str):
        self.arrays = dict(arrays)
        listing = _listing([f"{path}: {count}" for path, count in self.arrays.items()])
        message = f"{subject} holds Inf or NaN values ({listing}){outcome}"
        super().__init__(Diagnostic(code="TX712", message=message, hint=hint))


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


def _listing(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


# -- checksums and finiteness, computed on the devices --------------------------------------------
#
# Both are computed once per distinct shard of each array, on a device that holds it, never once per
# replica (a data-parallel state is held whole by every device) and never by moving data between
# devices; only a few bytes per array cross to the host. Replicas take turns, so the work spreads
# over the devices.

_GOLDEN = 0x9E3779B9
"""Multiplies an element's position before it is mixed with the element's bits."""


def _mix(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a bijection of uint32 in which every input bit affects every output bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _bits(x: jax.Array) -> jax.Array:
    """The bit patterns of ``x`` as uint32; a 64-bit or complex value becomes several, on new last dimensions."""
    dtype = jnp.dtype(x.dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return _bits(jnp.stack([x.real, x.imag], axis=-1))
    if dtype == jnp.bool_ or dtype.itemsize not in (1, 2, 4, 8):
        return x.astype(jnp.int32).astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[dtype.itemsize]
    return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _lanes(dtype: Any) -> tuple[int, ...]:
    """The sizes of the last dimensions :func:`_bits` adds for ``dtype``."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return (2, *_lanes(jnp.finfo(dtype).dtype))
    return (2,) if dtype != jnp.bool_ and dtype.itemsize == 8 else ()


def _shard_sums(x: jax.Array, starts: jax.Array, strides: jax.Array) -> jax.Array:
    """Two 32-bit sums over one shard's bits, each element weighted by its position in the whole array.

    ``starts`` is the shard's offset in the whole array and ``strides`` the whole array's row-major
    strides (both uint32, mod 2**32). The sums are exact integer arithmetic, so adding the shards'
    sums gives the same checksum however the array is split: a checkpoint saved under one mesh
    verifies under another. In the second sum each element passes through a bijection, so a change
    to any one element always changes it; the first (an odd weight times the bits) catches any one
    flipped bit too, and the two together make two changes cancelling out a 1-in-2**64 chance.
    """
    bits = _bits(x)
    index = jnp.zeros(bits.shape, jnp.uint32)
    for dim in range(bits.ndim):
        index = index + (lax.broadcasted_iota(jnp.uint32, bits.shape, dim) + starts[dim]) * strides[dim]
    first = jnp.sum(bits * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
    second = jnp.sum(_mix(bits ^ (index * jnp.uint32(_GOLDEN))), dtype=jnp.uint32)
    return jnp.stack([first, second])


@jax.jit
def _sums_on_one_device(shards: list[jax.Array], starts: list[jax.Array], strides: list[jax.Array]) -> jax.Array:
    return jnp.stack([_shard_sums(x, a, b) for x, a, b in zip(shards, starts, strides, strict=True)])


@jax.jit
def _finite_on_one_device(shards: list[jax.Array]) -> jax.Array:
    # max propagates NaN and Inf is its own maximum: one vectorised reduction per shard.
    return jnp.stack([jnp.isfinite(jnp.max(jnp.abs(x))) for x in shards])


def _chosen_shards(x: jax.Array, turn: int) -> list[Any]:
    """One copy of each distinct shard of ``x`` this process should digest."""
    if jax.process_count() > 1:
        return [shard for shard in x.addressable_shards if shard.replica_id == 0]
    copies: dict[tuple[int, ...], list[Any]] = {}
    for shard in x.addressable_shards:
        copies.setdefault(tuple(sl.start or 0 for sl in shard.index), []).append(shard)
    return [group[turn % len(group)] for group in copies.values()]


def _by_device(leaves: list[jax.Array], pick: Any) -> dict[Any, list[tuple[int, Any]]]:
    """``device -> [(leaf number, shard)]`` for the shards ``pick(leaf number, leaf)`` chooses."""
    work: dict[Any, list[tuple[int, Any]]] = {}
    for number, x in enumerate(leaves):
        for shard in pick(number, x):
            work.setdefault(shard.device, []).append((number, shard))
    return work


def _paths_and_leaves(tree: Any) -> tuple[list[str], list[jax.Array]]:
    with_paths = jax.tree_util.tree_leaves_with_path(tree)
    leaves = [x if isinstance(x, jax.Array) else jnp.asarray(x) for _, x in with_paths]
    return [path_text(path) for path, _ in with_paths], leaves


def nonfinite_arrays(tree: Any) -> dict[str, int]:
    """``path -> count`` of the Inf and NaN values in each array of ``tree`` that holds any.

    Checked on the devices with one max-of-absolute-values reduction per distinct shard; only the
    arrays found non-finite are then counted, on the host (with several processes, in this process's
    shards). Example::

        nonfinite_arrays({"params": state.params})   # {"params/dense1/w": 3}
    """
    paths, leaves = _paths_and_leaves(tree)
    floating = [x if jnp.issubdtype(x.dtype, jnp.inexact) and x.size else None for x in leaves]
    work = _by_device(floating, lambda number, x: [] if x is None else _chosen_shards(x, number))
    finite = [True] * len(leaves)
    launched = [(items, _finite_on_one_device([shard.data for _, shard in items])) for items in work.values()]
    for items, flags in launched:
        for (number, _), flag in zip(items, np.asarray(flags), strict=True):
            finite[number] = finite[number] and bool(flag)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        finite = list(np.all(multihost_utils.process_allgather(np.asarray(finite)), axis=0))
    counts = {}
    for number, ok in enumerate(finite):
        if not ok:  # rare: count on the host, one shard copy at a time
            shards = _chosen_shards(leaves[number], 0)
            local = sum(int(np.sum(~np.isfinite(np.asarray(shard.data)))) for shard in shards)
            counts[paths[number]] = local
    return counts


class _Checksums:
    """Checksums of every array of a tree: dispatched to the devices at once, fetched when needed."""

    def __init__(self, tree: Any):
        self.paths, leaves = _paths_and_leaves(tree)
        work = _by_device(leaves, lambda number, x: _chosen_shards(x, number))
        self._launched = []
        for items in work.values():
            args: tuple[list[Any], list[np.ndarray], list[np.ndarray]] = ([], [], [])
            for number, shard in items:
                x = leaves[number]
                starts = [sl.start or 0 for sl in shard.index]
                strides = [math.prod(x.shape[dim + 1 :]) for dim in range(x.ndim)]
                for size in _lanes(x.dtype):  # the extra last dimensions _bits adds
                    starts, strides = [*starts, 0], [*(stride * size for stride in strides), 1]
                args[0].append(shard.data)
                args[1].append(np.asarray([start % 2**32 for start in starts], np.uint32))
                args[2].append(np.asarray([stride % 2**32 for stride in strides], np.uint32))
            self._launched.append((items, _sums_on_one_device(*args)))

    def fetch(self) -> dict[str, str]:
        """``path -> 16 hex digits``; waits for the devices (and, with several processes, gathers)."""
        totals = np.zeros((len(self.paths), 2), np.uint64)
        for items, sums in self._launched:
            for (number, _), pair in zip(items, np.asarray(sums), strict=True):
                totals[number] += pair.astype(np.uint64)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            totals = np.sum(multihost_utils.process_allgather(totals % 2**32), axis=0, dtype=np.uint64)
        totals %= 2**32
        return {path: f"{int(a):08x}{int(b):08x}" for path, (a, b) in zip(self.paths, totals, strict=True)}


# -- I/O failures ---------------------------------------------------------------------------------


def _path_hint(directory: Path, err: BaseException) -> str:
    """What to do about an OS error met while creating, listing or writing ``directory``."""
    code = getattr(err, "errno", None)
    text = str(err)
    if code == errno.ENOSPC or "No space left" in text:
        return f"free space on the disk holding {directory}, or keep fewer checkpoints (a smaller keep=)"
    if code == errno.EROFS or "Read-only file system" in text:
        return f"{directory} is on a read-only file system: give tx.Checkpoint a directory on a writable one"
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return f"give this user write permission on {directory} (and its parent), or use another directory"
    if code == errno.ELOOP or "symbolic links" in text:
        return f"{directory} or a directory above it is a symbolic link that loops: fix or remove the link"
    if code == errno.ENAMETOOLONG:
        return "use a shorter checkpoint path"
    if code in (errno.ENOTDIR, errno.EEXIST) or isinstance(err, NotADirectoryError | FileExistsError):
        if os.path.islink(directory):
            try:
                os.stat(directory)
            except OSError as target:
                if target.errno == errno.ELOOP:
                    return f"{directory} is a symbolic link that loops: fix or remove the link"
                return f"{directory} is a symbolic link to nothing: point it at a directory, or remove it"
        return f"a part of the path {directory} is a file, not a directory: choose another path"
    return f"check the disk space, permissions and path of {directory}"


def _io_error(code: str, message: str, directory: Path, err: BaseException, tail: str = "") -> CheckpointError:
    return _error(code, f"{message}: {type(err).__name__}: {str(err)[:300]}", _path_hint(directory, err) + tail)


# -- one writer per directory ---------------------------------------------------------------------


class _WriterLock:
    """An exclusive ``flock`` on ``LOCK_NAME``: held while a run writes, released by the kernel if it dies."""

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise TX707 naming the run that holds it."""
        if self.fd is not None:
            return
        collected = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(os.pread(fd, 4096, 0))
                os.close(fd)
                if holder is not None and holder[:2] == (os.getpid(), socket.gethostname()) and not collected:
                    # An engine of this process nobody uses any more (a notebook cell run again) still
                    # holds it until the cycle collector frees it: free it now and try again, once.
                    gc.collect()
                    collected = True
                    continue
                raise self._held(holder) from None
            except BaseException:
                os.close(fd)
                raise
            # The holder before us removes the file as it lets go: if it did so after we opened it,
            # we locked a file nobody else will see. Lock the one the path names now.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (opened.st_ino, opened.st_dev):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file and let go of the lock (nothing if not held)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(fd)

    def _held(self, holder: tuple[int, str, float] | None) -> CheckpointError:
        ours = holder is not None and holder[:2] == (os.getpid(), socket.gethostname())
        if holder is None:
            who = "another run"
        elif ours:
            who = "another Engine in this process"
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder[2]))
            who = f"another run (process {holder[0]} on {holder[1]}, since {when})"
        hint = (
            "close that engine first (engine.close()), or give this one another directory"
            if ours
            else "wait for that run to finish, or give this run another directory; an evaluator only reading "
            "checkpoints needs no lock: engine.restore(state) without fit or save"
        )
        return _error(
            "TX707",
            f"checkpoint directory {self.path.parent} is being written by {who}; two runs writing one "
            "directory would mix their checkpoints",
            hint,
        )


def _holder(text: bytes) -> tuple[int, str, float] | None:
    """``(pid, host, since)`` from a lock file's contents, or ``None`` when they cannot be read."""
    try:
        info = json.loads(text.decode())
        return int(info["pid"]), str(info["host"])[:100], float(info["since"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError):
        return None


class _Vanished(CheckpointError):
    """A step disappeared while it was being read (a writer's ``keep`` deleted it): TX704."""

    def __init__(self, directory: Path, step: int):
        self.step = step
        super().__init__(
            Diagnostic(
                code="TX704",
                message=f"checkpoint step {step} in {directory} was deleted while it was being read "
                "(a run writing there keeps only its newest checkpoints)",
                hint="restore a newer step, or step=None for the newest complete one",
            )
        )


# -- metadata schema ------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape_and_dtype(entry: Any) -> bool:
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list) and isinstance(entry[1], str)):
        return False
    if not all(_is_int(size) and 0 <= size < 2**62 for size in entry[0]):
        return False
    try:
        jnp.dtype(entry[1])
    except TypeError:
        return False
    return True


def _meta_problems(meta: dict[str, Any], step: int) -> list[str]:
    """Everything wrong with ``meta`` against the schema of a checkpoint's metadata; empty when valid."""
    problems: list[str] = []

    def need(key: str, valid: Any, want: str) -> bool:
        if key not in meta:
            problems.append(f"{key!r} is missing")
            return False
        if not valid(meta[key]):
            problems.append(f"{key} is {meta[key]!r:.80} ({type(meta[key]).__name__}), not {want}")
            return False
        return True

    if need("host_step", lambda v: _is_int(v) and 0 <= v <= _INT32_MAX, "an integer in 0..2**31-1"):
        if meta["host_step"] != step:
            problems.append(f"host_step is {meta['host_step']}, but the checkpoint is step {step}")
    need("data_position", lambda v: _is_int(v) and 0 <= v < 2**62, "a non-negative integer")
    need(
        "mesh",
        lambda v: isinstance(v, dict) and all(_is_int(size) and size >= 1 for size in v.values()),
        "a dict of axis name -> size of at least 1",
    )
    need("process_count", lambda v: _is_int(v) and v >= 1, "a positive integer")
    need("plan_ir", lambda v: isinstance(v, str), "a string")
    need("loss_scale", lambda v: isinstance(v, bool), "true or false")
    for item in ("params", "opt_state"):
        if need(item, lambda v: isinstance(v, dict), "a dict of path -> [shape, dtype]"):
            bad = [path for path, entry in meta[item].items() if not _shape_and_dtype(entry)]
            if bad:
                problems.append(f"{item} entries {_listing(bad, 3)} are not [shape, dtype]")
    if meta.get("format") == FORMAT:
        need(
            "checksums",
            lambda v: isinstance(v, dict) and all(isinstance(c, str) and _HEX16.fullmatch(c) for c in v.values()),
            "a dict of array path -> 16 hex digits",
        )
    return problems


def _orbax_array_names(err: BaseException) -> list[str]:
    """The arrays a tensorstore read error names (its spec's inner ``'path': 'params.w/'``), as path text."""
    text, seen = "", set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text += str(err)
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    names = re.findall(r"""['"]path['"]: ['"]([^/'"][^'"]*?)/?['"]""", text)
    names += re.findall(r'Error reading "([^"/]+)/', text)
    return sorted({name.replace(".", "/") for name in names})


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
        # Titanax deletes old steps itself (see _prune) and creates the directory only when it writes.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,
            enable_async_checkpointing=config.async_,
            create=False,
        )
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as err:
            raise _io_error(
                "TX706", f"checkpoint directory {self.directory} cannot be read", self.directory, err
            ) from None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="titanax-checkpoint")
        self._pending: list[tuple[int, Future[Any]]] = []
        self._requested: set[int] = set()
        """Steps this session has saved (or started saving)."""
        self._orbax_step: int | None = None
        """A step handed to orbax's own asynchronous save (several processes) and not yet waited for."""
        self._lock = _WriterLock(self.directory)
        self._writer = False
        self._release = weakref.finalize(self, self._lock.release)

    # -- the writer's lock ---------------------------------------------------
    def acquire(self) -> None:
        """Become the only writer of the directory: create it, lock it, and remove what killed or
        failed saves left behind (orbax temporary directories, half-deleted old steps).

        ``fit`` calls it before training and ``save`` before writing. Another run holding the
        directory is TX707; a directory that cannot be created or written is TX706. With several
        processes, process 0 holds the lock for all of them.
        """
        if self._writer:
            return
        failure: CheckpointError | None = None
        if jax.process_index() == 0:
            try:
                self._become_writer()
            except CheckpointError as err:
                failure = err
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            ok = int(multihost_utils.broadcast_one_to_all(np.int32(failure is None)))
            if not ok and failure is None:
                failure = _error(
                    "TX707",
                    f"process 0 could not become the writer of checkpoint directory {self.directory}",
                    "process 0's error says why",
                )
        if failure is not None:
            raise failure
        self._writer = True

    def _become_writer(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            message = f"checkpoint directory {self.directory} cannot be created"
            raise _io_error("TX706", message, self.directory, err) from None
        if not self.directory.is_dir():
            raise _error(
                "TX701", f"checkpoint directory {self.directory} is a file", "give Checkpoint(...) a directory"
            )
        try:
            self._lock.acquire()
        except OSError as err:
            message = f"checkpoint directory {self.directory} cannot be written"
            raise _io_error("TX706", message, self.directory, err) from None
        try:
            for entry in os.scandir(self.directory):
                if _ORBAX_TMP in entry.name or entry.name.startswith(_DELETING):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
        except OSError as err:
            self._lock.release()
            raise _io_error(
                "TX706",
                f"the unfinished saves left in {self.directory} cannot be removed",
                self.directory,
                err,
            ) from None

    # -- saving --------------------------------------------------------------
    def save(self, state: Any, *, host_step: int, data_position: int, mesh: Any, plan_ir: str) -> None:
        """Start saving ``state`` as step ``host_step``; asynchronously, return almost at once.

        First the devices check the state for Inf and NaN values (a flag per shard crosses to
        the host): a state holding any is refused at once (TX712), before anything is written.
        Then they start computing every array's checksum, and copy the arrays (training goes
        on to donate the state's buffers to the next step). Asynchronously, one background
        thread fetches the checksums and hands the copies to orbax, which moves them to the
        host and writes them while training continues; saves run one after another in the
        order they were made, and each one's failure is reported with its own step (TX706).
        With several processes orbax's own asynchronous save is used instead, which blocks
        while the arrays move to the host.
        """
        self._raise_failed_save()
        if host_step in self._requested:
            return  # already saved (e.g. fit saving the last step that was also an interval step)
        self.acquire()
        if host_step in self.manager.all_steps():
            raise _error(
                "TX707",
                f"checkpoint step {host_step} already exists in {self.directory}, from another run",
                "resume that run with fit(..., resume=True), save into a new directory, or delete the old steps",
            )
        arrays = _tree_of(state)
        nonfinite = nonfinite_arrays(arrays)  # before anything is written; only a flag per shard crosses
        if nonfinite:
            latest = self.manager.latest_step()
            raise NonFiniteStateError(
                nonfinite,
                f"the state to save as checkpoint step {host_step}",
                "; it was not saved",
                "lower the learning rate or clip gradients; the checkpoints already saved are kept"
                + (f" (the newest is step {latest})" if latest is not None else ""),
            )
        self._requested.add(host_step)
        # Of the state's own arrays, not of the copies, which each device makes one after another: a
        # checksum would wait for every copy on its device. The next step, which donates these
        # buffers, runs after the checksums on each device.
        checksums = _Checksums(arrays)
        tree = jax.tree.map(lambda x: x.copy(), arrays)
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
        if not self.config.async_:
            try:
                self._write(host_step, tree, meta, checksums)
            except BaseException:
                self._requested.discard(host_step)
                raise
        elif jax.process_count() > 1:
            # orbax synchronises the processes with a device collective inside save(); run from a
            # thread it could interleave with a training step's collectives differently on each
            # process, so with several processes it runs here (orbax still writes in the background).
            self._finish_orbax()
            try:
                self._write(host_step, tree, meta, checksums, wait=False)
            except BaseException:
                self._requested.discard(host_step)
                raise
        else:
            # orbax's asynchronous save still blocks while it copies every array to host memory
            # (about three quarters of a whole save on a CPU machine); the thread takes that too.
            # One save at a time: each pending one holds a copy of the state in device memory.
            for _, previous in self._pending:
                previous.exception()
            self._raise_failed_save()
            future = self._executor.submit(self._write, host_step, tree, meta, checksums)
            self._pending.append((host_step, future))

    def _write(self, step: int, tree: Any, meta: dict[str, Any], checksums: _Checksums, *, wait: bool = True) -> None:
        """Write one step with its arrays' checksums; with ``wait``, return only once it is complete on disk.

        Waiting here (in the background thread) makes a failure of orbax's own background
        commit belong to this step, not to the next save that would otherwise surface it.
        """
        meta = {**meta, "checksums": checksums.fetch()}
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
        try:
            self.manager.save(step, args=args, force=True)
            if wait:
                self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - orbax and tensorstore wrap OS errors in several types
            raise self._save_failure(step, err) from err
        if wait:
            self._prune(step)
        else:
            self._orbax_step = step

    def _save_failure(self, step: int, err: BaseException) -> CheckpointError:
        return _io_error(
            "TX706",
            f"saving checkpoint step {step} into {self.directory} failed",
            self.directory,
            err,
            "; earlier checkpoints are intact, and the unfinished step is removed at the next start",
        )

    def _finish_orbax(self) -> None:
        """Wait for the step handed to orbax's own background save, reporting its failure as its own."""
        step, self._orbax_step = self._orbax_step, None
        if step is None:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - any failure of the commit means the same to the user
            self._requested.discard(step)
            raise self._save_failure(step, err) from err
        self._prune(step)

    def _prune(self, newest: int) -> None:
        """Keep ``newest`` (the step just written) and the ``keep - 1`` steps before it; delete older ones.

        Each is first renamed out of the step namespace, atomically, so that a reader sees a
        whole step or none; the renamed remains of a killed deletion are removed at the next start.
        Steps after ``newest`` (another run's, which ``fit`` refuses to mix with) are left alone.
        """
        keep = self.config.keep
        if keep is None or jax.process_index() != 0:
            return
        older = sorted(step for step in self._list_steps() if step < newest)
        for step in older[: max(0, len(older) - (keep - 1))]:
            doomed = self.directory / f"{_DELETING}{step}"
            try:
                os.rename(self.directory / str(step), doomed)
                shutil.rmtree(doomed)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise _io_error(
                    "TX706",
                    f"old checkpoint step {step} in {self.directory} cannot be deleted (keep={keep})",
                    self.directory,
                    err,
                ) from err
        self.manager.reload()

    def steps_of_other_runs(self, after: int) -> list[int]:
        """Saved steps beyond ``after`` that this session did not write (a fresh run would collide with them)."""
        self.wait()
        return [step for step in self._list_steps() if step > after and step not in self._requested]

    def pending_steps(self) -> list[int]:
        """Steps whose save has started and is not complete yet."""
        steps = [step for step, future in self._pending if not future.done()]
        return steps + ([self._orbax_step] if self._orbax_step is not None else [])

    def _raise_failed_save(self) -> None:
        """A background save that failed is reported at the next save or wait (TX706)."""
        done = [(step, future) for step, future in self._pending if future.done()]
        self._pending = [(step, future) for step, future in self._pending if not future.done()]
        for step, future in done:
            error = future.exception()
            if error is None:
                continue
            self._requested.discard(step)
            if isinstance(error, TitanaxError):
                raise error
            raise self._save_failure(step, error) from error

    def wait(self) -> None:
        """Block until every started save is complete on disk (raises TX706 if one failed)."""
        for _, future in self._pending:
            future.exception()  # waits; the failure itself is raised below
        self._raise_failed_save()
        self._finish_orbax()

    def close(self) -> None:
        """Finish pending saves, release the directory's lock and the manager."""
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)
            self._release()
            self._writer = False
            self.manager.close()

    # -- restoring -----------------------------------------------------------
    def _list_steps(self) -> list[int]:
        """The complete steps on disk now; a directory that cannot be listed is TX706."""
        for attempt in range(_READ_ATTEMPTS):
            try:
                self.manager.reload()
                return list(self.manager.all_steps())
            except FileNotFoundError as err:
                # A step deleted between listing the directory and reading its details: list again.
                if attempt + 1 < _READ_ATTEMPTS:
                    time.sleep(0.05)
                    continue
                raise _io_error("TX706", f"{self.directory} cannot be listed", self.directory, err) from None
            except OSError as err:
                raise _io_error("TX706", f"{self.directory} cannot be listed", self.directory, err) from None
        return []

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None`` when there is none (waits for pending saves)."""
        self.wait()
        steps = self._list_steps()
        return max(steps) if steps else None

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of checkpoint ``step``, checked against its schema.

        A foreign directory is TX701, unreadable files TX702, metadata that breaks the schema
        (a field missing or of the wrong type, a negative step, a ``host_step`` that is not the
        step's) TX709, and a step deleted while being read TX704.
        """
        where = self.directory / str(step)
        if not (where / "meta").is_dir():
            if not where.exists():
                raise _Vanished(self.directory, step)
            raise _error(
                "TX701",
                f"{where} is not a Titanax checkpoint (it has no 'meta' item)",
                "point Checkpoint(...) at a directory that Titanax saved into, or at an empty one",
            )
        meta = self._read(step, ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, *_UNCHECKED_FORMATS):
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise _error(
                "TX701",
                f"{where} is not a Titanax checkpoint (format {found!r:.80}, expected {FORMAT!r})",
                "point Checkpoint(...) at a directory that Titanax saved into",
            )
        problems = _meta_problems(meta, step)
        if problems:
            raise _error(
                "TX709",
                f"the metadata of checkpoint {where} is not valid: {'; '.join(problems[:8])}"
                + (f"; and {len(problems) - 8} more" if len(problems) > 8 else ""),
                f"the file {where / 'meta' / 'metadata'} was edited or damaged, and nothing in it is used; restore "
                "another step (engine.restore(state, step=...)) or delete this one",
            )
        return meta

    def restore(self, template: Any, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read checkpoint ``step`` (default: the latest) into the shardings of ``template``'s arrays.

        Returns ``(tree, meta)``; ``tree`` has the structure of ``template``'s stored fields.
        Nothing is returned unless every array was read and matched its checksum. Without a
        ``step``, one that a writer deletes while it is being read is replaced by the newest then.
        """
        self.wait()
        for _ in range(_READ_ATTEMPTS):
            steps = self._list_steps()
            if step is not None and step not in steps:
                raise _error(
                    "TX704",
                    f"no checkpoint for step {step} in {self.directory}; saved steps: {sorted(steps)}",
                    "pass one of the saved steps, or step=None for the latest",
                )
            if not steps:
                raise _error(
                    "TX704",
                    f"no complete checkpoint in {self.directory}",
                    "train with fit(..., resume=True), which starts fresh when there is none, or check the path",
                )
            try:
                return self._restore_step(template, max(steps) if step is None else step)
            except _Vanished:
                if step is not None:
                    raise
        raise _error(
            "TX704",
            f"the newest checkpoint in {self.directory} was deleted while being read, {_READ_ATTEMPTS} times",
            "a run writing there with a small keep= deletes steps faster than they can be read: read with "
            "fewer writes going on, or give that run a larger keep",
        )

    def _restore_step(self, template: Any, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
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
        tree = {
            key: jax.tree.unflatten(jax.tree.structure(wanted[key]), jax.tree.leaves(restored[key]))
            for key in wanted
            if key in restored
        }
        read = dict(tree)
        if "loss_scale" in restored and "loss_scale" not in wanted:
            read["loss_scale"] = dict(restored["loss_scale"])
        self._verify(step, meta, read)
        if fresh_loss_scale:
            # Copies: the template's own arrays must survive the steps that donate the restored state.
            tree["loss_scale"] = jax.tree.map(lambda x: x.copy(), wanted["loss_scale"])
        return jax.tree.unflatten(jax.tree.structure(wanted), jax.tree.leaves(tree)), meta

    def _verify(self, step: int, meta: dict[str, Any], read: dict[str, Any]) -> None:
        """Every array read matches the checksum recorded when it was saved (TX708) and is finite (TX712)."""
        where = self.directory / str(step)
        checksums, nonfinite = _Checksums(read).fetch(), nonfinite_arrays(read)
        recorded = meta.get("checksums")
        if recorded is not None:  # format 1 checkpoints carry none
            missing = [path for path in checksums if path not in recorded]
            if missing:
                raise _error(
                    "TX709",
                    f"the metadata of checkpoint {where} records no checksum for {_listing(missing)}",
                    "the metadata was edited or damaged; restore another step (engine.restore(state, step=...))",
                )
            changed = [path for path, checksum in checksums.items() if recorded[path] != checksum]
            if changed:
                raise _error(
                    "TX708",
                    f"checkpoint {where} is corrupt: the data of {_listing(changed)} differs from what was saved "
                    "(checksum mismatch)",
                    "the array files were damaged after they were written (a disk or copy error); restore another "
                    "step (engine.restore(state, step=...)) or delete this one",
                )
        if nonfinite:
            raise NonFiniteStateError(
                nonfinite,
                f"checkpoint {where}",
                "",
                "it was saved before Titanax refused to save diverged states; restore an older step "
                "(engine.restore(state, step=...)) or delete this one",
            )

    def _read(self, step: int, args: Any) -> Any:
        """orbax's restore of ``args``; a read failure is TX702 naming the arrays it could find,
        and a step deleted meanwhile is TX704."""
        try:
            return self.manager.restore(step, args=args)
        except Exception as err:  # noqa: BLE001 - any read failure means the same to the user
            if not (self.directory / str(step)).exists():
                raise _Vanished(self.directory, step) from None
            arrays = _orbax_array_names(err)
            raise _error(
                "TX702",
                f"checkpoint {self.directory / str(step)} cannot be read"
                + (f" (array {_listing(arrays)})" if arrays else "")
                + f": {type(err).__name__}: {str(err)[:300]}",
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
