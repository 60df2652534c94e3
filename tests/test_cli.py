"""The ``titanax`` command: plans in, IR out, errors without tracebacks."""

import json
import subprocess
import sys

from titanax.cli import main
from titanax.passes import DEFAULT_PASSES


def run(*args):
    return subprocess.run([sys.executable, "-m", "titanax.cli", *args], capture_output=True, text=True)


def test_plan_prints_the_ir(capsys):
    assert main(["plan", "--mesh", "data=-1,model=2", "--dp", "data", "--devices", "8"]) == 0
    out = capsys.readouterr().out
    assert '%axis.data = axis {name = "data", size = 4, position = 0}' in out
    assert "%dp -requires-> %collective.grad_sync" in out


def test_plan_json_and_print_after_all(capsys):
    assert main(["plan", "--mesh", "data=8", "--dp", "data", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["nodes"][0]["id"] == "mesh"
    assert main(["plan", "--mesh", "data=8", "--dp", "data", "--print-after-all"]) == 0
    assert capsys.readouterr().out.count("// ----- IR after") == len(DEFAULT_PASSES)


def test_passes_lists_the_default_pipeline(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "* check-mesh" in out and "  annotate-payloads" in out


def test_errors_exit_1_without_traceback():
    result = run("plan", "--mesh", "data=3,model=2", "--dp", "dta", "--devices", "8")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        "error[TX103]" in result.stderr and "error[TX201]" in result.stderr and "did you mean 'data'" in result.stderr
    )
    bad = run("plan", "--mesh", "data=four")
    assert bad.returncode == 1 and "TX110" in bad.stderr and "Traceback" not in bad.stderr


def test_help_has_an_example():
    result = run("plan", "--help")
    assert result.returncode == 0 and "example: titanax plan" in result.stdout
