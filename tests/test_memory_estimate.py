"""Memory before launch: ``engine.memory_estimate`` and ``titanax compile --memory`` allocate nothing and agree
with the memory analysis of the real compiled step."""

from pathlib import Path

import jax
import pytest

import titanax as tx
from titanax.cli import main
from titanax.runtime.workload import load_workload

ROOT = Path(__file__).parent.parent
PLANS = ROOT / "examples" / "gpt_small" / "plans"


def estimate_and_real(plan_name):
    loaded = tx.load_plan(PLANS / f"{plan_name}.tx")
    workload = load_workload(loaded.model, loaded.model_location, paths=[ROOT])
    engine = tx.Engine(mesh=loaded.mesh, plan=loaded.plan, optimizer=workload.optimizer)
    live = len(jax.live_arrays())
    estimate = engine.memory_estimate(workload.step, workload.params, workload.batch)
    assert len(jax.live_arrays()) == live  # nothing was placed on a device
    state = engine.create_state(workload.params)
    real = workload.step.lower(state, workload.batch).compile().memory_analysis()
    return estimate, real


@pytest.mark.parametrize("plan_name", ["dp_tp", pytest.param("dp_pp", marks=pytest.mark.slow)])
def test_the_estimate_agrees_with_the_real_step(plan_name):
    estimate, real = estimate_and_real(plan_name)
    inputs = estimate.parameters + estimate.optimizer_state + estimate.other_state + estimate.batch
    assert inputs == pytest.approx(real.argument_size_in_bytes, rel=0.05)
    assert estimate.temporaries == pytest.approx(real.temp_size_in_bytes, rel=0.05)
    assert estimate.total > estimate.temporaries > 0 and estimate.optimizer_state == pytest.approx(
        2 * estimate.parameters, rel=0.01
    )  # AdamW: two moments per parameter (and a count)


def test_compile_memory_says_whether_it_fits(capsys):
    plan = str(PLANS / "dp_tp.tx")
    assert main(["compile", plan, "--memory", "--device-memory", "80GiB", "--model-path", str(ROOT)]) == 0
    out = capsys.readouterr().out
    assert "per-device memory of the compiled step" in out and "fits in 80.000 GiB" in out
    assert main(["compile", plan, "--memory", "--device-memory", "1MiB", "--model-path", str(ROOT)]) == 1
    out = capsys.readouterr().out
    assert "does not fit in 1.00 MiB" in out and "remat = dots or full" in out
    assert main(["compile", plan, "--memory", "--device-memory", "lots"]) == 1
    assert "error[TX720]: --device-memory 'lots' is not a size" in capsys.readouterr().err
