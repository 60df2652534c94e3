"""Every code block of the README and the docs that is meant to run runs, and prints what the page shows.

Pages: ``README.md``, ``docs/*.md`` and ``examples/*/README.md``. How their fenced blocks are treated:

- A ```` ```python ```` block is a whole program: it runs on its own (a fresh namespace, in this
  process, on the 8 simulated CPU devices of ``conftest.py``) and must not raise.
- In a ```` ```console ```` block, each line ``$ titanax ...`` is a command, and the lines up to the
  next ``$`` line are what it prints (standard output and standard error together). In a
  ```` ```bash ```` block each line ``titanax ...`` is a command and no output is shown. A command runs
  as ``python -m titanax.cli ...`` in a fresh process without ``XLA_FLAGS`` (so it sees the devices a
  new user's shell would: commands that need 8 must say ``--devices 8``). When output is shown it must
  match; when none is, the command must exit with 0. Commands that are not ``titanax``, commands that
  pipe or redirect (``|``, ``>``, ``<``) and ``titanax launch`` (it runs a training script; the
  examples' own tests run those) are not run; ``titanax fmt`` runs with ``--check``, so the test never
  rewrites a file.
- Everything runs in a temporary directory holding a link to the repository's ``examples/``, so
  the paths the pages use (``examples/plans/dp.tx``) resolve, and files a block writes go nowhere.

An HTML comment on the line just above a block's fence changes how it is treated (several may stand
one above the other):

- ``<!-- not run -->``: not run (a fragment, or a program that needs what the repository does not
  hold, such as a dataset or a file of the reader's own);
- ``<!-- slow -->``: runs only with the slow tests (``pytest -m slow``);
- ``<!-- output -->``: a plain block showing what the page's preceding ```` ```python ```` block
  prints; it must match;
- ``<!-- file: PATH -->``: a plain block that must equal the repository file ``PATH`` verbatim;
- ``<!-- save as: PATH -->``: a plain block the page asks the reader to save; it is written to
  ``PATH`` in the working directory before the page's blocks run;
- ``<!-- run as: PATH -->``: a ```` ```python ```` block that is run from the file ``PATH`` (the
  locations it prints name that file).

Output is compared line by line after dropping trailing spaces and blank lines at the end. A line
``...`` matches any number of lines (the page shows an excerpt); decimal numbers need only agree to a
relative 1e-5 (the last digits of a float32 loss depend on the CPU); and the line numbers of Titanax's
own sources (``titanax/nn/layers.py:122``) are not compared, since they move whenever that file changes.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
PAGES += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*/README.md"))

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*(not run|slow|output|(?:file|save as|run as):\s*\S+)\s*-->$")
OWN_SOURCE_LINE = re.compile(r"(titanax/[\w/]+\.py):\d+")
DECIMAL = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    markers: list[str] = field(default_factory=list)
    output: Block | None = None  # the <!-- output --> block after a python block

    def marker(self, name: str) -> str | None:
        for marker in self.markers:
            key, _, value = marker.partition(":")
            if key == name:
                return value.strip() or key
        return None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(page: str) -> list[Block]:
    lines = (ROOT / page).read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent = match.group(1)
        end = next(i for i in range(index + 1, len(lines)) if lines[i].rstrip() == indent + "```")
        markers, above = [], index - 1
        while above >= 0 and MARKER.match(lines[above].strip()):
            markers.append(MARKER.match(lines[above].strip()).group(1))
            above -= 1
        text = "".join(line.removeprefix(indent) + "\n" for line in lines[index + 1 : end])
        blocks.append(Block(page, index + 1, match.group(2), text, markers))
        index = end + 1
    program = None
    for block in blocks:
        if block.language == "python":
            program = block
        elif block.marker("output"):
            assert program is not None and program.output is None, f"{block.id}: no python block above to print it"
            program.output = block
    return blocks


BLOCKS = [block for page in PAGES for block in read_blocks(page)]


def runnable(block: Block) -> bool:
    if block.marker("not run"):
        return False
    if block.language == "python" or block.marker("file"):
        return True
    return block.language in ("console", "bash") and bool(commands(block))


def params(blocks):
    return [
        pytest.param(block, id=block.id, marks=[pytest.mark.slow] if block.marker("slow") else []) for block in blocks
    ]


# -- comparing output --------------------------------------------------------------------------------------------------
def normalise(text: str, workdir: Path | None = None) -> list[str]:
    if workdir is not None:
        text = text.replace(f"{workdir}/", "")
    lines = [OWN_SOURCE_LINE.sub(r"\1:N", line.rstrip()) for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is ``expected`` with each ``...`` line standing for any number of lines."""
    if not expected:
        return not actual
    if expected[0].strip() == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and same_line(expected[0], actual[0]) and matches(expected[1:], actual[1:])


def same_line(expected: str, actual: str) -> bool:
    """Equal, but for decimal numbers, which need only agree to a relative 1e-5."""
    if DECIMAL.split(expected) != DECIMAL.split(actual):
        return False
    pairs = zip(DECIMAL.findall(expected), DECIMAL.findall(actual), strict=True)
    return all(abs(float(a) - float(e)) <= 1e-5 * abs(float(e)) for e, a in pairs)


def assert_prints(block: Block, expected: str, actual: str, workdir: Path, what: str) -> None:
    want, got = normalise(expected), normalise(actual, workdir)
    assert matches(want, got), (
        f"{block.id}: {what} printed\n" + "\n".join(got) + "\n\nbut the page shows\n" + "\n".join(want)
    )


# -- the working directory of a page ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    made: dict[str, Path] = {}

    def workdir(page: str) -> Path:
        if page not in made:
            path = tmp_path_factory.mktemp("page")
            (path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
            for block in read_blocks(page):
                target = block.marker("save as")
                if target:
                    (path / target).parent.mkdir(parents=True, exist_ok=True)
                    (path / target).write_text(block.text)
            made[page] = path
        return made[page]

    return workdir


# -- commands ---------------------------------------------------------------------------------------------------------
@dataclass
class Command:
    line: str
    output: str | None  # None: the page shows no output


def commands(block: Block) -> list[Command]:
    """The ``titanax`` commands of a console or bash block, with the output the page shows for each."""
    found: list[Command] = []
    lines = block.text.splitlines()
    for index, line in enumerate(lines):
        if block.language == "console":
            if not line.startswith("$ "):
                continue
            command, rest = line[2:], lines[index + 1 :]
            shown = rest[: next((i for i, r in enumerate(rest) if r.startswith("$ ")), None)]
            output = "".join(s + "\n" for s in shown) if shown else None
        else:
            command, output = line, None
        words = command.split()
        if words[:1] == ["titanax"] and words[1:2] != ["launch"] and not any(c in command for c in "|<>"):
            found.append(Command(command, output))
    return found


def run_command(command: Command, workdir: Path) -> subprocess.CompletedProcess:
    args = [arg for word in shlex.split(command.line, comments=True)[1:] for arg in expand(word, workdir)]
    if args[0] == "fmt" and not {"--check", "--stdout", "-"} & set(args):
        args.append("--check")
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, "-m", "titanax.cli", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def expand(word: str, workdir: Path) -> list[str]:
    """A shell word's glob expansion, as bash gives it (the word itself when nothing matches)."""
    if not any(c in word for c in "*?["):
        return [word]
    return sorted(glob.glob(word, root_dir=workdir)) or [word]


@pytest.mark.parametrize("block", params(b for b in BLOCKS if b.language in ("console", "bash") and runnable(b)))
def test_commands_print_what_the_page_shows(block, workdirs):
    workdir = workdirs(block.page)
    for command in commands(block):
        result = run_command(command, workdir)
        if command.output is None:
            assert result.returncode == 0, f"{block.id}: `{command.line}` failed:\n{result.stdout}"
        else:
            assert_prints(block, command.output, result.stdout, workdir, f"`{command.line}`")


# -- python programs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", params(b for b in BLOCKS if b.language == "python" and runnable(b)))
def test_python_blocks_run(block, workdirs, monkeypatch):
    workdir = workdirs(block.page)
    monkeypatch.chdir(workdir)
    path = workdir / (block.marker("run as") or f"block_{block.line}.py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.text)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block.text, str(path), "exec"), {"__name__": "__main__", "__file__": str(path)})  # noqa: S102
    if block.output is not None:
        assert_prints(block, block.output.text, printed.getvalue(), workdir, "the program")


# -- files shown on a page ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", params(b for b in BLOCKS if b.marker("file") and runnable(b)))
def test_files_shown_are_the_repository_files(block):
    path = block.marker("file")
    assert block.text == (ROOT / path).read_text(), f"{block.id} differs from {path}"


def test_every_marker_is_understood():
    """A misspelt marker would silently leave its block unchecked."""
    for page in PAGES:
        for number, line in enumerate((ROOT / page).read_text().splitlines(), 1):
            if line.strip().startswith("<!--") and any(
                word in line for word in ("not run", "slow", "output", "file:", "save as", "run as")
            ):
                assert MARKER.match(line.strip()), f"{page}:{number}: marker not understood: {line.strip()}"
