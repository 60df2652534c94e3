"""``tx.load_plan``: a ``.tx`` file (or text) in, a validated mesh and plan out.

This sits above the compiler stages, like the command line: it reads the file,
parses it, builds the front-end objects and runs the validation passes, so a
bad plan fails here with located errors, before any JAX work.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from titanax.errors import Diagnostic, Location, ParseError
from titanax.frontend import MeshSpec, Plan
from titanax.frontend.language import ParsedPlan, SourceFile, parse, to_plan
from titanax.frontend.language import source as source_module
from titanax.ir import PlanIR, build_ir
from titanax.passes import (
    DEFAULT_PASSES,
    VALIDATION_PASSES,
    PassPipeline,
    Target,
    passes_by_name,
    verify_after_each,
)
from titanax.passes.manager import PassCallback

__all__ = ["LoadedPlan", "load_plan", "read_bounded", "read_source"]


@dataclass(frozen=True)
class LoadedPlan:
    """A plan file, parsed and validated: pass ``.mesh`` and ``.plan`` to ``tx.Engine``.

    Example::

        loaded = tx.load_plan("plans/dp_tp.tx")
        engine = tx.Engine(mesh=loaded.mesh, plan=loaded.plan, optimizer=tx.optim.adamw(3e-4))
    """

    mesh: MeshSpec
    plan: Plan
    model: str | None
    """The ``model "module:function"`` the file names, unresolved (the file never imports code)."""
    model_location: Location | None
    parsed: ParsedPlan
    """The source, AST and comments, for tools such as the formatter."""

    @property
    def path(self) -> str:
        """The file's path, or the name given to ``load_plan(text=...)``."""
        return self.parsed.source.path

    def build_ir(self) -> PlanIR:
        """The IR before any pass."""
        return build_ir(self.mesh, self.plan)

    def compile(
        self,
        *,
        target: Target | None = None,
        passes: Sequence[str] = DEFAULT_PASSES,
        callbacks: Sequence[PassCallback] = (verify_after_each,),
    ) -> PlanIR:
        """Run ``passes`` over the plan's IR (for the device count the mesh names, unless ``target``)."""
        target = target or Target(device_count=self.mesh.requested_device_count)
        return PassPipeline(passes_by_name(passes), callbacks=callbacks).run(self.build_ir(), target)


def _unreadable(path: str, reason: str, hint: str = "check the path; plan files usually end in .tx") -> ParseError:
    return ParseError(
        Diagnostic(
            code="TX605",
            message=f"cannot read plan file {path}: {reason}",
            hint=hint,
            location=Location(path=path, line=1, column=1),
        )
    )


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _check_regular(path: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise _unreadable(
            path, f"it is {_kind(info.st_mode)}, not a regular file", "give the path of a .tx file on disk"
        )
    if info.st_size > source_module.MAX_SOURCE_BYTES:
        raise source_module.oversize_error(path, info.st_size)


def read_bounded(stream: BinaryIO, name: str) -> SourceFile:
    """Read a plan from an open binary stream (standard input), at most the size limit; TX604 beyond it."""
    data = stream.read(source_module.MAX_SOURCE_BYTES + 1)
    if len(data) > source_module.MAX_SOURCE_BYTES:
        raise source_module.oversize_error(name, None)
    return SourceFile.from_bytes(name, data)


def read_source(path: str | Path) -> SourceFile:
    """Read a plan file: a regular file of at most ``MAX_SOURCE_BYTES``, as UTF-8.

    Anything else is refused before a byte is read, so that a named pipe, a
    device such as ``/dev/zero`` or a huge file cannot block or fill memory:
    a missing or unreadable file, a directory, a pipe or a device is a located
    TX605; a file over the limit or bytes that are not UTF-8, TX604.
    """
    path = str(path)
    try:
        _check_regular(path, os.stat(path))
        # Non-blocking, in case the path became a pipe since the stat; checked again on the open file.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as file:
            _check_regular(path, os.fstat(file.fileno()))
            data = file.read(source_module.MAX_SOURCE_BYTES + 1)  # the file may have grown since
    except OSError as err:
        raise _unreadable(path, err.strerror or type(err).__name__) from None
    return SourceFile.from_bytes(path, data)


def load_plan(
    path: str | Path | None = None, *, text: str | None = None, name: str = "<text>", validate: bool = True
) -> LoadedPlan:
    """Load a plan from ``path`` or from ``text``, and check it.

    Raises a :class:`~titanax.errors.TitanaxError` whose diagnostics point at the
    file, line and column of every problem. ``validate=False`` skips the
    validation passes (syntax and structure are always checked). Example::

        loaded = tx.load_plan(text="mesh { data = 8 }  data_parallel over data")
    """
    if (path is None) == (text is None):
        raise TypeError("load_plan() takes a path or text=..., not both")
    source = read_source(path) if path is not None else SourceFile(name, text)
    parsed = parse(source)
    contents = to_plan(parsed)
    loaded = LoadedPlan(contents.mesh, contents.plan, contents.model, contents.model_location, parsed)
    if validate:
        # Only the checks: the device count may be unknown until the Engine runs.
        loaded.compile(target=Target(), passes=VALIDATION_PASSES)
    return loaded
