"""The command line reads only regular files, checks their size before reading, and refuses ``--devices`` below 1.

Inputs that could block (a named pipe) or never end (``/dev/zero``) run in a
separate process with a timeout and a memory limit, so that a regression fails
the test instead of hanging or filling the machine.
"""

import os
import resource
import subprocess
import sys

import pytest

from titanax.cli import main
from titanax.frontend.language.source import MAX_SOURCE_BYTES


def limit_memory():
    limit = 2 << 30  # far above what the command line needs, far below what /dev/zero would fill
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def titanax(*args, stdin=subprocess.DEVNULL):
    start = [sys.executable, "-m", "titanax.cli", *args]
    return subprocess.run(start, stdin=stdin, capture_output=True, text=True, timeout=20, preexec_fn=limit_memory)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "plan.tx"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("command", ["check", "compile", "fmt"])
def test_a_named_pipe_is_refused_without_waiting_for_a_writer(fifo, command):
    result = titanax(command, fifo)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{fifo}:1:1: error[TX605]: cannot read plan file {fifo}: it is a named pipe" in result.stderr


@pytest.mark.parametrize("command", ["check", "fmt"])
def test_a_device_is_refused_before_reading(command):
    result = titanax(command, "/dev/zero")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error[TX605]: cannot read plan file /dev/zero: it is a character device" in result.stderr


def test_a_directory_is_refused(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == 1
    assert f"error[TX605]: cannot read plan file {tmp_path}: it is a directory" in capsys.readouterr().err


def test_the_size_is_checked_before_reading(tmp_path):
    huge = tmp_path / "huge.tx"
    with open(huge, "wb") as file:
        file.truncate(8 << 30)  # sparse: 8 GiB that take no disk, and more than the memory limit
    result = titanax("check", str(huge))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    expected = f"error[TX604]: {huge} is {8 << 30} bytes; plan files are limited to {MAX_SOURCE_BYTES} bytes"
    assert expected in result.stderr


def test_standard_input_is_read_up_to_the_limit_only():
    with open("/dev/zero", "rb") as endless:
        result = titanax("fmt", "-", stdin=endless)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "<stdin>:1:1: error[TX604]: <stdin> gives more than" in result.stderr


def test_regular_files_and_standard_input_still_work(tmp_path):
    plan = tmp_path / "plan.tx"
    plan.write_text("mesh { devices = 8, data = 8 }\ndata_parallel over data\n")
    assert titanax("check", str(plan)).returncode == 0
    with open(plan, "rb") as text:
        result = titanax("fmt", "-", stdin=text)
    assert result.returncode == 0 and "data_parallel over data" in result.stdout


@pytest.mark.parametrize("devices", ["0", "-8"])
@pytest.mark.parametrize(
    "command",
    [["check", "{plan}"], ["compile", "{plan}"], ["audit", "{plan}"], ["plan", "--mesh", "data=8", "--dp", "data"]],
)
def test_devices_below_one_are_refused(tmp_path, capsys, command, devices):
    plan = tmp_path / "plan.tx"
    plan.write_text("mesh { data = auto }\ndata_parallel over data\n")
    args = [word.format(plan=plan) for word in command]
    assert main([*args, "--devices", devices]) == 1
    err = capsys.readouterr().err
    assert f"titanax: error[TX111]: --devices {devices} must be from 1 to 1,048,576" in err
    assert "Traceback" not in err and "internal error" not in err
