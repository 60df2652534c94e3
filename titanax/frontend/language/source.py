"""Plan source text: decoding bytes safely and turning positions into error locations."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from titanax.errors import Diagnostic, Location, ParseError

__all__ = ["MAX_SOURCE_BYTES", "SourceFile", "oversize_error", "read_bounded", "read_source"]

MAX_SOURCE_BYTES = 16 * 1024 * 1024
"""Largest plan file read; a plan is a few hundred bytes, so anything near this is a mistake."""


def oversize_error(path: str, size: int | None, what: str = "plan file") -> ParseError:
    """TX604 for a plan (or another input named ``what``) over :data:`MAX_SOURCE_BYTES`: ``size``
    bytes, or ``None`` for a stream that gave more than the limit (its size is not known)."""
    amount = f"is {size} bytes" if size is not None else f"gives more than {MAX_SOURCE_BYTES} bytes"
    return ParseError(
        Diagnostic(
            code="TX604",
            message=f"{path} {amount}; {what}s are limited to {MAX_SOURCE_BYTES} bytes",
            hint=f"is this the right {'file' if size is not None else 'input'}? a {what} is a few lines of text",
            location=Location(path=path, line=1, column=1),
        )
    )


@dataclass(frozen=True)
class SourceFile:
    """The text of one plan, with its path for error messages.

    Example::

        source = SourceFile.from_bytes("plan.tx", b"mesh { data = 8 }")
    """

    path: str
    text: str
    lines: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Split on "\n" only, as the lexer counts lines, so that carets line up.
        object.__setattr__(self, "lines", tuple(self.text.split("\n")))

    @classmethod
    def from_bytes(cls, path: str, data: bytes) -> SourceFile:
        """Decode ``data`` as UTF-8; raise a located TX604 for anything else."""
        if len(data) > MAX_SOURCE_BYTES:
            raise oversize_error(path, len(data))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            prefix = data[: err.start]
            line = prefix.count(b"\n") + 1
            column = len(prefix[prefix.rfind(b"\n") + 1 :].decode("utf-8", errors="replace")) + 1
            line_bytes = data[prefix.rfind(b"\n") + 1 :].split(b"\n", 1)[0]
            raise ParseError(
                Diagnostic(
                    code="TX604",
                    message=f"{path} is not valid UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})",
                    hint="plan files are UTF-8 text; is this a binary file?",
                    location=Location(
                        path=path,
                        line=line,
                        column=column,
                        line_text=line_bytes.decode("utf-8", errors="replace"),
                    ),
                )
            ) from None
        return cls(path, text.removeprefix("\ufeff"))

    def location(self, line: int, column: int, length: int = 1) -> Location:
        """The :class:`Location` of a span starting at 1-based ``line`` and ``column``."""
        line = max(1, min(line, len(self.lines)))
        return Location(path=self.path, line=line, column=column, length=length, line_text=self.lines[line - 1])

    def end_location(self) -> Location:
        """The location just past the last character, for errors at the end of the file."""
        return self.location(len(self.lines), len(self.lines[-1]) + 1)


def _unreadable(path: str, reason: str, hint: str | None = None, what: str = "plan file") -> ParseError:
    if hint is None:
        hint = "check the path; plan files usually end in .tx" if what == "plan file" else "check the path"
    return ParseError(
        Diagnostic(
            code="TX605",
            message=f"cannot read {what} {path}: {reason}",
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


def _check_regular(path: str, info: os.stat_result, what: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise _unreadable(
            path, f"it is {_kind(info.st_mode)}, not a regular file", f"give the path of a {what} on disk", what
        )
    if info.st_size > MAX_SOURCE_BYTES:
        raise oversize_error(path, info.st_size, what)


def read_bounded(stream: BinaryIO, name: str) -> SourceFile:
    """Read a plan from an open binary stream (standard input), at most the size limit; TX604 beyond it."""
    data = stream.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise oversize_error(name, None)
    return SourceFile.from_bytes(name, data)


def read_source(path: str | Path, what: str = "plan file") -> SourceFile:
    """Read a plan file (or another input named ``what``, such as a schedule table): a regular file
    of at most ``MAX_SOURCE_BYTES``, as UTF-8.

    Anything else is refused before a byte is read, so that a named pipe, a
    device such as ``/dev/zero`` or a huge file cannot block or fill memory:
    a missing or unreadable file, a directory, a pipe or a device is a located
    TX605; a file over the limit or bytes that are not UTF-8, TX604.
    """
    path = str(path)
    try:
        _check_regular(path, os.stat(path), what)
        # Non-blocking, in case the path became a pipe since the stat; checked again on the open file.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as file:
            _check_regular(path, os.fstat(file.fileno()), what)
            data = file.read(MAX_SOURCE_BYTES + 1)  # the file may have grown since
    except OSError as err:
        raise _unreadable(path, err.strerror or type(err).__name__, what=what) from None
    return SourceFile.from_bytes(path, data)
