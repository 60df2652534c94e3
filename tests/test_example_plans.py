"""Every example plan names the model it is written for, and fits it: ``titanax compile PLAN --model``
lays that model's parameters out under the plan and traces its step (every rule matches a parameter,
every stage names real entries and the even split of the blocks), without compiling the step."""

from pathlib import Path

import pytest

import titanax as tx
from titanax.cli import main

ROOT = Path(__file__).parent.parent
PLANS = sorted((ROOT / "examples").glob("plans/*.tx")) + sorted((ROOT / "examples").glob("*/plans/*.tx"))


@pytest.mark.parametrize("path", PLANS, ids=lambda path: str(path.relative_to(ROOT / "examples")))
def test_plan_traces_the_model_it_names(path, capsys, monkeypatch):
    loaded = tx.load_plan(path)
    assert loaded.model is not None, f"{path.name} names no model"
    monkeypatch.chdir(ROOT)  # the entry points are module paths from the repository root
    assert main(["compile", str(path), "--model"]) == 0, capsys.readouterr().err
    summary = capsys.readouterr().out
    split = int(summary.split(" of which ")[1].split()[0])
    # Tensor and pipeline parallelism and FSDP stage 3 split parameters; data parallelism alone never does.
    plan = loaded.plan
    sharded = plan.fully_sharded is not None and plan.fully_sharded.stage == 3
    distributed = plan.tensor_parallel is not None or plan.pipeline_parallel is not None or sharded
    assert (split > 0) == distributed, summary
