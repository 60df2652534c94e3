"""The ``titanax`` command: plans in, IR out, errors located and without tracebacks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from titanax.cli import main
from titanax.passes import DEFAULT_PASSES

PLANS = Path(__file__).parent.parent / "examples" / "plans"
SUBCOMMANDS = ("compile", "check", "fmt", "passes", "plan")


def run(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "titanax.cli", *args], capture_output=True, text=True, input=stdin, timeout=60
    )


def write(tmp_path, text, name="plan.tx"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# -- titanax plan / passes --------------------------------------------------------
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
    assert "* check-mesh" in out and "  annotate-payloads" in out and "* check-pipeline" in out


def test_errors_exit_1_without_traceback():
    result = run("plan", "--mesh", "data=3,model=2", "--dp", "dta", "--devices", "8")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error[TX103]" in result.stderr and "error[TX201]" in result.stderr
    assert "did you mean 'data'" in result.stderr
    bad = run("plan", "--mesh", "data=four")
    assert bad.returncode == 1 and "TX110" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"titanax {command}" in out


# -- titanax compile ---------------------------------------------------------------
def test_compile_summarises_the_plan(capsys):
    assert main(["compile", str(PLANS / "dp_tp.tx")]) == 0
    out = capsys.readouterr().out
    assert "ok: mesh data=2 x model=4 (8 devices)" in out
    assert "collective grad_sync: all-reduce mean of gradients over data (group of 2)" in out


@pytest.mark.parametrize("fmt", ["text", "json", "dot"])
def test_compile_dump_ir_formats(fmt, capsys):
    assert main(["compile", str(PLANS / "3d.tx"), "--dump-ir", "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        ids = [node["id"] for node in json.loads(out)["nodes"]]
        assert {"pp", "tp", "dp", "precision", "stage.1"} <= set(ids)
    elif fmt == "dot":
        assert out.startswith("digraph plan_ir {") and '"pp" -> "stage.0" [label="contains"];' in out
    else:
        assert (
            '%pp = parallel_dim.pipeline {axes = ("pipe"), microbatches = 4, schedule = "1f1b", blocks = "blocks"'
            in out
        )


def test_compile_with_chosen_passes_and_print_after_all(capsys):
    assert (
        main(
            [
                "compile",
                str(PLANS / "dp.tx"),
                "--devices",
                "8",
                "--passes",
                "check-mesh,infer-mesh-shape",
                "--print-after-all",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("// ----- IR after") == 2 and "collective" not in out


def test_compile_reports_a_pass_given_out_of_order(capsys):
    assert main(["compile", str(PLANS / "dp.tx"), "--passes", "insert-dp-collectives"]) == 1
    assert "error[TX207]" in capsys.readouterr().err


# -- titanax check -----------------------------------------------------------------
def test_check_reports_every_file(tmp_path, capsys):
    good = write(tmp_path, "mesh { data = 8 }\ndata_parallel over data\n", "good.tx")
    bad = write(tmp_path, "mesh { data = 8 }\ndata_parallel over dta\n", "bad.tx")
    assert main(["check", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert f"{good}: ok" in captured.out
    assert f"{bad}:2:1: error[TX201]" in captured.err
    assert main(["check", *map(str, sorted(PLANS.glob("*.tx")))]) == 0


def test_check_lists_errors_in_source_order(tmp_path, capsys):
    path = write(tmp_path, "mesh { data = 2, model = 2 }\nprecision { compute = bf16 }\ndata_parallel over dta\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.index(":2:1: error[TX219]") < err.index(":3:1: error[TX201]")
    assert err.rstrip().endswith("titanax: 2 errors")


def test_check_does_not_import_jax(tmp_path):
    path = write(tmp_path, "mesh { data = 8 }\ndata_parallel over data\n")
    code = (
        "import sys, titanax.cli\n"
        f"assert titanax.cli.main(['check', {str(path)!r}]) == 0\n"
        "assert 'jax' not in sys.modules, 'jax was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


HOSTILE = {
    "binary": bytes(range(256)) * 4,
    "empty": b"",
    "nul": b"mesh { data = 8 }\x00",
    "invalid_utf8": b"mesh { data = \xff\xfe }",
    "long_line": b"mesh { data = 8 } " + b"x" * 10_000_000,
    "deep_nesting": b"mesh " + b"{" * 100_000 + b"}" * 100_000,
    "deep_spec": b'mesh { m = 2 } tensor_parallel over m { "w" = ' + b"(" * 50_000 + b")" * 50_000 + b" }",
    "only_comment": b"# nothing here",
    "bom": b"\xef\xbb\xbfmesh { data = 8 } data_parallel over dat",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_gives_a_located_error(name, tmp_path, capsys):
    path = write(tmp_path, HOSTILE[name])
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:" in err and "error[TX" in err
    assert "internal error" not in err and "Traceback" not in err
    # A 10 MB line is shown as a short window around the error.
    assert max(len(line) for line in err.splitlines()) < 400


def test_hostile_input_has_no_traceback_in_a_real_process(tmp_path):
    path = write(tmp_path, HOSTILE["binary"])
    result = run("check", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr and "error[TX604]" in result.stderr


# -- titanax fmt -------------------------------------------------------------------
MESSY = """# A plan
mesh {devices=8,data=2 , model=4}   # two by four
data_parallel over data
tensor_parallel over model { "*/qkv/w"=column
  # out projection
  "*/out/w" = row "e" = (model,None) }
"""

CANONICAL = """# A plan
mesh {  # two by four
  devices = 8
  data = 2
  model = 4
}

data_parallel over data

tensor_parallel over model {
  "*/qkv/w" = column
  # out projection
  "*/out/w" = row
  "e" = (model, none)
}
"""


def test_fmt_rewrites_in_canonical_form_keeping_comments(tmp_path, capsys):
    path = write(tmp_path, MESSY)
    assert main(["fmt", str(path), "--check"]) == 1
    assert f"would reformat {path}" in capsys.readouterr().out
    assert path.read_text() == MESSY, "--check changes nothing"
    assert main(["fmt", str(path)]) == 0
    assert path.read_text() == CANONICAL
    assert main(["fmt", str(path), "--check"]) == 0, "formatting is idempotent"


def test_fmt_stdout_and_stdin(tmp_path, capsys):
    path = write(tmp_path, MESSY)
    assert main(["fmt", str(path), "--stdout"]) == 0
    assert capsys.readouterr().out == CANONICAL and path.read_text() == MESSY
    result = run("fmt", "-", stdin=MESSY)
    assert result.returncode == 0 and result.stdout == CANONICAL


def test_fmt_refuses_a_file_that_does_not_parse(tmp_path, capsys):
    path = write(tmp_path, "mesh { data = 8 ")
    assert main(["fmt", str(path)]) == 1
    assert "error[TX603]" in capsys.readouterr().err
    assert path.read_text() == "mesh { data = 8 ", "nothing is lost"


def test_example_plans_are_formatted(capsys):
    assert main(["fmt", "--check", *map(str, sorted(PLANS.glob("*.tx")))]) == 0
