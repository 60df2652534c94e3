"""Golden tests in the style of LLVM's FileCheck: each ``tests/filecheck/*.tx`` file
says how to run it (``# RUN: <titanax subcommand and flags>``) and what the output
must contain (``# CHECK:``, ``# CHECK-NEXT:``, ``# CHECK-NOT:``).

``{{file}}`` in a check stands for the file's path; ``{{.*}}`` matches anything.
"""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from titanax.cli import main

FILES = sorted((Path(__file__).parent / "filecheck").glob("*.tx"))
_DIRECTIVE = re.compile(r"#\s*(RUN|CHECK|CHECK-NEXT|CHECK-NOT):\s?(.*)$")


def directives(text):
    for line in text.splitlines():
        match = _DIRECTIVE.match(line.strip())
        if match:
            yield match.group(1), match.group(2).rstrip()


def pattern(check, path):
    parts = check.replace("{{file}}", str(path)).split("{{.*}}")
    return re.compile(".*".join(re.escape(p) for p in parts))


def run_titanax(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, (out.getvalue() + err.getvalue()).splitlines()


def filecheck(lines, checks, path):
    """Apply the checks in order; return a description of the first failure, or None."""
    position, previous, forbidden = 0, None, []
    for kind, text in checks:
        regex = pattern(text, path)
        if kind == "CHECK-NOT":
            forbidden.append((text, regex))
            continue
        if kind == "CHECK-NEXT":
            if previous is None or previous + 1 >= len(lines) or not regex.search(lines[previous + 1]):
                got = lines[previous + 1] if previous is not None and previous + 1 < len(lines) else "<end>"
                return f"CHECK-NEXT: {text!r} is not on the line after the previous match; that line is {got!r}"
            found = previous + 1
        else:
            found = next((i for i in range(position, len(lines)) if regex.search(lines[i])), None)
            if found is None:
                return f"CHECK: {text!r} not found after line {position}"
        for not_text, not_regex in forbidden:
            start = 0 if previous is None else previous + 1
            if any(not_regex.search(line) for line in lines[start:found]):
                return f"CHECK-NOT: {not_text!r} appears before {text!r}"
        forbidden, previous, position = [], found, found + 1
    for not_text, not_regex in forbidden:
        start = 0 if previous is None else previous + 1
        if any(not_regex.search(line) for line in lines[start:]):
            return f"CHECK-NOT: {not_text!r} appears after the last match"
    return None


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_filecheck(path):
    found = list(directives(path.read_text()))
    runs = [text for kind, text in found if kind == "RUN"]
    checks = [(kind, text) for kind, text in found if kind != "RUN"]
    assert len(runs) == 1 and checks, f"{path.name} needs one RUN line and at least one CHECK"
    command, *flags = shlex.split(runs[0])
    status, lines = run_titanax([command, str(path), *flags])
    failure = filecheck([line.strip() for line in lines], checks, path)
    assert failure is None, failure + "\n--- output ---\n" + "\n".join(lines)
    expects_error = any("error[" in text for _, text in checks)
    assert status == (1 if expects_error else 0)


def test_every_pass_has_a_filecheck_file():
    from titanax.passes import PASS_REGISTRY

    covered = {p.stem.replace("_", "-") for p in FILES}
    assert set(PASS_REGISTRY) <= covered


def test_filecheck_itself_rejects_wrong_output():
    lines = ["a", "b", "c"]
    assert filecheck(lines, [("CHECK", "a"), ("CHECK-NEXT", "b")], "") is None
    assert filecheck(lines, [("CHECK", "a"), ("CHECK-NEXT", "c")], "") is not None
    assert filecheck(lines, [("CHECK", "b"), ("CHECK", "a")], "") is not None
    assert filecheck(lines, [("CHECK-NOT", "b"), ("CHECK", "c")], "") is not None
    assert filecheck(lines, [("CHECK", "a"), ("CHECK-NOT", "z")], "") is None
