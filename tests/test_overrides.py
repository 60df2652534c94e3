"""Overrides: ``titanax ... --set KEY=VALUE`` and ``tx.load_plan(path, overrides={...})`` change settings, with located errors."""

import pytest

import titanax as tx
from titanax.cli import main

PLAN = """mesh { devices = 8, data = 2, pipe = 4 }
data_parallel over data
pipeline over pipe { microbatches = 8 }
"""


@pytest.fixture
def plan_file(tmp_path):
    path = tmp_path / "pp.tx"
    path.write_text(PLAN)
    return path


def test_python_overrides_change_the_plan(plan_file):
    loaded = tx.load_plan(
        plan_file,
        overrides={
            "pipeline.microbatches": 16,
            "pipeline.schedule": "zbh1",
            "pipeline.remat": "dots",
            "data_parallel.accumulate_steps": "2",  # text is read as a .tx file writes it
            "mesh.data": 4,
            "mesh.pipe": "2",
            "activations.remat": "dots",  # the one statement an override may add: it has only this setting
        },
    )
    pp = loaded.plan.pipeline_parallel
    assert (pp.microbatches, pp.schedule, pp.remat) == (16, "zbh1", "dots")
    assert loaded.plan.data_parallel.accumulate_steps == 2
    assert loaded.mesh.shape == (4, 2) and loaded.plan.activations == tx.Activations(remat="dots")
    assert tx.load_plan(plan_file).plan.pipeline_parallel.microbatches == 8  # the file is unchanged


def test_set_on_the_command_line(plan_file, capsys):
    assert (
        main(["compile", str(plan_file), "--schedule", "--set", "pipeline.microbatches=4", "--set", "mesh.pipe=4"]) == 0
    )
    assert capsys.readouterr().out.startswith("1f1b: 4 stages, 4 microbatches, 11 ticks")
    assert main(["check", str(plan_file), "--set", "pipeline.schedule=gpipe"]) == 0


@pytest.mark.parametrize(
    ("item", "code", "words"),
    [
        ("pipeline.microbatchs=8", "TX616", "did you mean 'microbatches'?"),
        ("pipline.microbatches=8", "TX616", "did you mean 'pipeline'?"),
        ("mesh.dat=2", "TX616", "did you mean 'data'?"),
        ("pipeline.microbatches=eight", "TX617", "must be an integer"),
        ("pipeline", "TX617", "is not KEY=VALUE"),
        ("tensor_parallel.sequence_parallel=true", "TX618", "no tensor_parallel statement"),
        ("data_parallel.accumulate_steps=0", "TX203", "accumulate_steps = 0"),  # the plan object's own check
    ],
)
def test_bad_overrides_are_located_at_the_set(plan_file, capsys, item, code, words):
    assert main(["compile", str(plan_file), "--set", "pipeline.remat=full", "--set", item]) == 1
    err = capsys.readouterr().err
    assert f"--set:2:1: error[{code}]" in err and words in err


def test_python_override_errors_name_the_key(plan_file):
    with pytest.raises(tx.PlanError) as info:
        tx.load_plan(plan_file, overrides={"pipeline.virtual_stage": 2})
    (d,) = info.value.diagnostics
    assert d.code == "TX616" and "did you mean 'virtual_stages'?" in d.hint and d.location.path == "overrides"


def test_scripts_pass_their_set_flags_as_strings(plan_file):
    loaded = tx.load_plan(plan_file, overrides=["pipeline.microbatches=4", "mesh.data=2"])
    assert loaded.plan.pipeline_parallel.microbatches == 4
    with pytest.raises(tx.PlanError) as info:
        tx.load_plan(plan_file, overrides=["pipeline.microbatches=4", "mesh.date=2"])
    (d,) = info.value.diagnostics
    assert (d.code, d.location.path, d.location.line) == ("TX616", "--set", 2)
