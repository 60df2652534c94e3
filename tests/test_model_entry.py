"""``--model`` imports only from the folders it is given (or the plan's own package root), and refuses an entry
point that is not a plain function of the user's before calling it, and a result that is not a ``tx.Workload``."""

import subprocess
import sys
import textwrap
import uuid

import pytest

import titanax as tx
from titanax.cli import main
from titanax.runtime.workload import load_workload

PLAN = "mesh { data = 1 }\ndata_parallel over data\n"


def module(folder, body):
    """Write a module with a fresh name into ``folder``; return its name."""
    name = f"txmodel_{uuid.uuid4().hex[:12]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return name


def refused(entry, code, paths=()):
    with pytest.raises(tx.StepFnError) as caught:
        load_workload(entry, paths=paths)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == code, diagnostic
    return diagnostic.message


@pytest.mark.parametrize("entry", ["os:abort", "os.path:join", "builtins:exit", "subprocess:run"])
def test_standard_library_entry_points_are_refused_before_import(entry):
    assert "standard-library module" in refused(entry, "TX506")


def test_os_abort_in_a_plan_file_is_a_tx506_and_nothing_is_called(tmp_path):
    plan = tmp_path / "plan.tx"
    plan.write_text(PLAN + 'model "os:abort"\n')
    result = subprocess.run(
        [sys.executable, "-m", "titanax.cli", "compile", str(plan), "--model"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr  # os.abort would end the process with SIGABRT (-6)
    assert "error[TX506]: 'os:abort' names the standard-library module 'os'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("workload = 3\n", "names a int, not a function"),
        ("class workload:\n    pass\n", "names a type, not a function"),
        ("from os import getcwd as workload\n", "names a builtin_function_or_method"),
        ("from shutil import rmtree as workload\n", "names a function of the standard library ('shutil')"),
        ("def workload(size):\n    return size\n", "needs arguments (size)"),
        ("", "has no 'workload'"),
    ],
)
def test_an_entry_point_that_is_not_a_factory_is_refused_before_calling(tmp_path, body, why):
    name = module(tmp_path, body)
    assert why in refused(f"{name}:workload", "TX506", paths=[tmp_path])


def test_a_result_that_is_not_a_workload_and_a_failing_factory_are_tx507(tmp_path):
    name = module(
        tmp_path,
        """
        def workload():
            return {"params": 1}

        def broken():
            raise RuntimeError("no data")
        """,
    )
    assert "returned dict, not a tx.Workload" in refused(f"{name}:workload", "TX507", paths=[tmp_path])
    assert "raised RuntimeError: no data" in refused(f"{name}:broken", "TX507", paths=[tmp_path])


def test_the_current_directory_is_searched_only_when_named(tmp_path, monkeypatch):
    name = module(tmp_path, "def workload():\n    return 'imported'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    before = list(sys.path)
    assert "cannot import model module" in refused(f"{name}:workload", "TX506")
    assert "returned str" in refused(f"{name}:workload", "TX507", paths=["."])
    assert sys.path == before  # the folders given are searched for the import only


def test_the_cli_imports_from_the_plans_package_root_or_model_path(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "plans").mkdir(parents=True)
    name = module(project, "def workload():\n    return 'imported'\n")
    plan = project / "plans" / "dp.tx"
    plan.write_text(PLAN + f'model "{name}:workload"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # Found above the plan file (not in the current directory), imported, and its result refused.
    assert main(["compile", str(plan), "--model"]) == 1
    assert "error[TX507]" in capsys.readouterr().err
    # --model-path replaces that search: a folder without the module cannot import it.
    del sys.modules[name]
    assert main(["compile", str(plan), "--model", "--model-path", str(elsewhere)]) == 1
    assert "error[TX506]: cannot import model module" in capsys.readouterr().err
    assert main(["compile", str(plan), "--model", "--model-path", str(tmp_path / "missing")]) == 1
    assert "is not a folder" in capsys.readouterr().err
