"""Multi-process runs on loopback: the launcher, initialize(), and 2 processes against 1."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from titanax.launch import launch

WORKER = str(Path(__file__).parent / "mp_worker.py")
ROOT = Path(__file__).parent.parent


def env_with_devices(count):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_single(mode, out, devices, *extra):
    result = subprocess.run(
        [sys.executable, WORKER, mode, str(out), *map(str, extra)],
        env=env_with_devices(devices),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(Path(out).read_text())


def run_launched(mode, out, processes, devices_per_process, *extra):
    command = [
        sys.executable,
        "-m",
        "titanax.cli",
        "launch",
        "--processes",
        str(processes),
        "--devices-per-process",
        str(devices_per_process),
        "--",
        sys.executable,
        WORKER,
        mode,
        str(out),
        *map(str, extra),
    ]
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(Path(out).read_text()), result


def assert_same_run(a, b, tol=1e-6):
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=tol, atol=tol)
    for name in ("dense1", "dense2"):
        for leaf in ("w", "b"):
            np.testing.assert_allclose(a["params"][name][leaf], b["params"][name][leaf], rtol=tol, atol=tol)


@pytest.mark.slow
def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path):
    single = run_single("dp", tmp_path / "single.json", 4)
    double, launched = run_launched("dp", tmp_path / "double.json", 2, 2)
    assert (single["processes"], double["processes"]) == (1, 2)
    assert single["devices"] == double["devices"] == 4
    assert len(double["losses"]) == 5
    assert_same_run(single, double)
    assert "[rank 0]" in launched.stderr + launched.stdout


@pytest.mark.slow
def test_two_processes_of_four_devices_with_dp_x_tp_match_one_process_of_eight(tmp_path):
    single = run_single("dp_tp", tmp_path / "single.json", 8)
    double, _ = run_launched("dp_tp", tmp_path / "double.json", 2, 4)
    assert_same_run(single, double)


@pytest.mark.slow
def test_fsdp_over_two_processes_matches_one_process_and_its_checkpoint_restores_under_dp(tmp_path):
    single = run_single("fsdp", tmp_path / "single.json", 8)
    double, _ = run_launched("fsdp", tmp_path / "double.json", 2, 4)
    assert_same_run(single, double)
    # Each process wrote its own shards; one process of 8 devices reads them back whole under DP.
    saved_by_two, _ = run_launched("fsdp_save", tmp_path / "saved2.json", 2, 4, tmp_path / "ckpt")
    restored_in_one = run_single("restore", tmp_path / "restored1.json", 8, tmp_path / "ckpt")
    assert restored_in_one["host_step"] == 3
    assert_same_run({**saved_by_two, "losses": []}, {**restored_in_one, "losses": []}, tol=0)


@pytest.mark.slow
def test_checkpoints_move_between_process_counts(tmp_path):
    saved_by_two, _ = run_launched("save", tmp_path / "saved2.json", 2, 4, tmp_path / "ckpt2")
    restored_in_one = run_single("restore", tmp_path / "restored1.json", 8, tmp_path / "ckpt2")
    assert restored_in_one["host_step"] == 3
    assert_same_run({**saved_by_two, "losses": []}, {**restored_in_one, "losses": []}, tol=0)

    saved_by_one = run_single("save", tmp_path / "saved1.json", 8, tmp_path / "ckpt1")
    restored_in_two, _ = run_launched("restore", tmp_path / "restored2.json", 2, 4, tmp_path / "ckpt1")
    assert restored_in_two["host_step"] == 3
    assert_same_run({**saved_by_one, "losses": []}, {**restored_in_two, "losses": []}, tol=0)


@pytest.mark.slow
def test_a_killed_process_stops_the_launch_within_a_minute_naming_its_rank(tmp_path):
    start = time.monotonic()
    command = [sys.executable, "-m", "titanax.cli", "launch", "--processes", "2", "--devices-per-process", "2", "--"]
    command += [sys.executable, WORKER, "die", str(tmp_path / "out.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "rank 1 was killed by SIGKILL" in result.stderr
    assert elapsed < 60


def test_launch_reports_the_first_failure_and_stops_the_others(capsys):
    sleeper = [
        sys.executable,
        "-c",
        "import os, sys, time\nif os.environ['TITANAX_PROCESS_ID'] == '1': sys.exit(3)\ntime.sleep(60)",
    ]
    start = time.monotonic()
    result = launch(sleeper, processes=3)
    assert time.monotonic() - start < 20
    assert (result.status, result.failed_rank, result.failed_returncode) == (3, 1, 3)
    assert "rank 1 exited with status 3; stopping the other 2 running process(es)" in capsys.readouterr().err


def test_launch_prefixes_output_with_the_rank_and_sets_the_environment(capsys):
    script = "import os\nprint(os.environ['TITANAX_PROCESS_ID'], os.environ['TITANAX_NUM_PROCESSES'], os.environ['XLA_FLAGS'])"
    result = launch([sys.executable, "-c", script], processes=2, devices_per_process=3)
    out = capsys.readouterr().out
    assert result.status == 0
    assert "[rank 0] 0 2 --xla_force_host_platform_device_count=3" in out
    assert "[rank 1] 1 2 --xla_force_host_platform_device_count=3" in out


def test_launch_command_line_errors():
    from titanax.cli import main

    assert main(["launch", "--processes", "2"]) == 1  # no command
    assert main(["launch", "--processes", "0", "--", sys.executable, "-c", "pass"]) == 1


def test_initialize_after_another_jax_call_is_explained():
    script = (
        "import jax.numpy as jnp\n"
        "import titanax as tx\n"
        "jnp.zeros(1)\n"
        "try:\n"
        "    tx.distributed.initialize('127.0.0.1:1', 2, 0)\n"
        "except tx.DistributedError as err:\n"
        "    print(err.code, 'first thing' in str(err))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["TX741", "True"], result.stderr[-2000:]


def test_initialize_alone_is_a_no_op_and_partial_settings_are_refused():
    script = (
        "import titanax as tx\n"
        "print(tx.distributed.initialize())\n"
        "try:\n"
        "    tx.distributed.initialize(num_processes=2)\n"
        "except tx.DistributedError as err:\n"
        "    print(err.code)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TITANAX_", "SLURM_"))}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.stdout.split() == ["False", "TX742"], result.stderr[-2000:]


def test_launch_from_another_thread_still_stops_every_rank():
    import threading

    results = []
    failing = [
        sys.executable,
        "-c",
        "import os, sys, time\nif os.environ['TITANAX_PROCESS_ID'] == '0': sys.exit(2)\ntime.sleep(60)",
    ]
    worker = threading.Thread(target=lambda: results.append(launch(failing, processes=2)))
    worker.start()
    worker.join(timeout=30)
    assert results and (results[0].status, results[0].failed_rank) == (2, 0)


SLURM_PROBE = """
import json, titanax as tx
joined = tx.distributed.initialize(timeout_s=60)
import jax
print(json.dumps({"joined": joined, "processes": jax.process_count(), "rank": jax.process_index(), "devices": len(jax.devices())}))
"""


def free_slurm_port():
    """A free port in the range JAX derives SLURM coordinator ports from (SLURM_JOB_ID % 4096 + 61440)."""
    import socket

    for port in range(65535, 61440, -1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in JAX's SLURM range")


def test_a_slurm_job_is_joined_from_its_environment():
    # Two tasks of one SLURM job step on this machine, as `srun --ntasks=2` would start them.
    port = free_slurm_port()
    procs = []
    for rank in range(2):
        env = {k: v for k, v in env_with_devices(2).items() if not k.startswith(("TITANAX_", "SLURM_", "OMPI_"))}
        env |= {
            "SLURM_JOB_ID": str(port - 61440 + 4096 * 7),
            "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_NUM_NODES": "1",
        }
        procs.append(subprocess.Popen([sys.executable, "-c", SLURM_PROBE], env=env, stdout=subprocess.PIPE, text=True))
    outputs = [json.loads(p.communicate(timeout=180)[0].strip().splitlines()[-1]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [o["rank"] for o in outputs] == [0, 1]
    assert all(o["joined"] and o["processes"] == 2 and o["devices"] == 4 for o in outputs)
