"""``titanax launch`` leaves no process behind and never waits without end.

Each test starts the launcher as a real process over a tiny rank command (no
JAX), finds the ranks' pids, and the pids of children they start, from the
ranks' own output, then checks that they are gone. Every process a test starts
carries MARKER in its command line; whatever is left at the end of a test is
killed by pid, after checking that marker.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from titanax.errors import DistributedError
from titanax.launch import launch, max_processes

MARKER = "titanax-lifecycle-test"

RANK = f"""
import os, subprocess, sys, time  # {MARKER}
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # {MARKER}"])
print("pids", os.getpid(), child.pid, flush=True)
time.sleep(60)
"""

# A rank that notes SIGINT and SIGTERM and carries on: only SIGKILL ends it.
STUBBORN_RANK = f"""
import os, signal, time  # {MARKER}
def note(signum, frame):
    print("got", signal.Signals(signum).name, flush=True)
signal.signal(signal.SIGINT, note)
signal.signal(signal.SIGTERM, note)
print("pids", os.getpid(), flush=True)
for _ in range(60):
    time.sleep(1)
"""

# A rank that starts a child, then succeeds at once.
QUICK_RANK = f"""
import os, subprocess, sys  # {MARKER}
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # {MARKER}"])
print("pids", os.getpid(), child.pid, flush=True)
"""


def alive(pid):
    """Running, not a zombie waiting for a parent (in a container, pid 1 may never reap)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return False
    return text[text.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def ours(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return MARKER.encode() in cmdline.read()
    except OSError:
        return False


def wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class Launcher:
    """``titanax launch`` as a real process, its output collected line by line."""

    def __init__(self, *args, rank=RANK):
        command = [sys.executable, "-m", "titanax.cli", "launch", *args, "--", sys.executable, "-c", rank]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out, self.err = [], []
        self.readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line)

    def pids(self, lines_expected, timeout=20):
        """The pids the ranks printed, once ``lines_expected`` ranks have printed them."""
        assert wait_until(lambda: sum(line.split()[2:3] == ["pids"] for line in self.out) >= lines_expected, timeout), (
            self.out,
            self.err,
        )
        return [int(pid) for line in self.out if line.split()[2:3] == ["pids"] for pid in line.split()[3:]]

    def finish(self, timeout=20):
        status = self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=5)
        return status


@pytest.fixture
def launchers():
    """Start launchers; afterwards kill any launcher, rank or rank child a failed test left running."""
    started = []
    yield lambda *args, **kwargs: started.append(Launcher(*args, **kwargs)) or started[-1]
    for launcher in started:
        if launcher.process.poll() is None:
            launcher.process.kill()
        launcher.process.wait(timeout=10)
        for line in launcher.out:
            for pid in (int(word) for word in line.split()[3:] if word.isdigit()):
                if alive(pid) and ours(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP])
def test_the_ranks_and_their_children_die_with_the_launcher(launchers, signum):
    launcher = launchers("--processes", "2")
    pids = launcher.pids(2)
    assert len(pids) == 4 and all(alive(pid) for pid in pids)
    launcher.process.send_signal(signum)
    status = launcher.finish()
    assert wait_until(lambda: not any(alive(pid) for pid in pids), 5), [pid for pid in pids if alive(pid)]
    if signum == signal.SIGHUP:  # handled like SIGTERM: the launcher stops the ranks, then exits 128 + 1
        assert status == 129 and "received SIGHUP; stopping 2 running process(es)" in "".join(launcher.err)
    else:
        assert status == -signal.SIGKILL


def test_a_rank_that_ignores_sigint_and_sigterm_is_killed_after_escalation(launchers):
    launcher = launchers("--processes", "2", "--grace", "0.5", rank=STUBBORN_RANK)
    pids = launcher.pids(2)
    start = time.monotonic()
    launcher.process.send_signal(signal.SIGINT)
    status = launcher.finish()
    assert status == 130 and time.monotonic() - start < 10
    assert not any(alive(pid) for pid in pids)
    for rank in (0, 1):
        noted = [line.split()[-1] for line in launcher.out if line.startswith(f"[rank {rank}] got")]
        assert noted == ["SIGINT", "SIGTERM"], launcher.out  # then SIGKILL, which it cannot note


def test_children_of_successful_ranks_are_stopped(launchers):
    launcher = launchers("--processes", "2", rank=QUICK_RANK)
    status = launcher.finish()
    pids = launcher.pids(2, timeout=0)
    assert status == 0
    assert not any(alive(pid) for pid in pids)
    assert "rank(s) 0, 1 exited but left processes running in their group; stopping them" in "".join(launcher.err)


def test_timeout_stops_a_hung_run_with_an_error(launchers):
    launcher = launchers("--processes", "2", "--timeout", "1", "--grace", "0.5", rank=STUBBORN_RANK)
    pids = launcher.pids(2)
    status = launcher.finish()
    err = "".join(launcher.err)
    assert status == 124
    assert "error[TX745]: the run did not finish within --timeout 1 s; stopping rank(s) 0, 1" in err
    assert not any(alive(pid) for pid in pids)


def test_processes_beyond_what_the_machine_can_run_are_refused(capsys, monkeypatch):
    import titanax.launch
    from titanax.cli import main

    def refuse(*args, **kwargs):  # were the check missing, fail here instead of filling the process table
        raise AssertionError("titanax launch started a process")

    monkeypatch.setattr(titanax.launch.subprocess, "Popen", refuse)
    command = [sys.executable, "-c", "pass"]
    assert main(["launch", "--processes", str(10**20), "--", *command]) == 1
    assert (
        "error[TX743]: --processes 100000000000000000000 is more than this machine can run" in capsys.readouterr().err
    )
    with pytest.raises(DistributedError, match="TX743"):
        launch(command, processes=max_processes() + 1)


def test_a_taken_port_is_refused_before_any_rank_starts(capsys, tmp_path):
    from titanax.cli import main

    marker = tmp_path / "started"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    for host in ("127.0.0.1", "0.0.0.0"):  # a listener on every interface holds the loopback port too
        with socket.socket() as taken:
            taken.bind((host, 0))
            taken.listen()
            port = taken.getsockname()[1]
            assert main(["launch", "--processes", "2", "--port", str(port), "--", *command]) == 1
        assert f"error[TX743]: --port {port} is already in use on 127.0.0.1" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize(
    "flag", [["--timeout", "0"], ["--timeout", "-3"], ["--timeout", "nan"], ["--grace", "-1"], ["--grace", "inf"]]
)
def test_bad_timeout_or_grace_is_refused(capsys, flag):
    from titanax.cli import main

    assert main(["launch", "--processes", "1", *flag, "--", sys.executable, "-c", "pass"]) == 1
    assert "error[TX743]" in capsys.readouterr().err


def test_the_coordinator_is_told_to_bind_to_loopback(capsys):
    script = "import os\nprint(os.environ['JAX_COORDINATOR_BIND_ADDRESS'], os.environ['TITANAX_COORDINATOR'])"
    result = launch([sys.executable, "-c", script], processes=2)
    lines = capsys.readouterr().out.splitlines()
    assert result.status == 0 and len(lines) == 2
    for line in lines:
        bind, coordinator = line.split()[2:]
        assert bind == coordinator and bind.startswith("127.0.0.1:")  # the real listener: the slow test below


LISTENERS = """
import os
import titanax as tx
tx.distributed.initialize()
port = int(os.environ["TITANAX_COORDINATOR"].rsplit(":", 1)[1])
if os.environ["TITANAX_PROCESS_ID"] == "0":
    for name in ("tcp", "tcp6"):
        for line in open(f"/proc/net/{name}").read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:  # LISTEN on the port
                print("listening", fields[1].split(":")[0])
"""


@pytest.mark.slow
def test_the_jax_coordinator_listens_on_loopback_only():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "titanax.cli", "launch", "--processes", "2", "--devices-per-process", "1"]
    command += ["--timeout", "100", "--", sys.executable, "-c", LISTENERS]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    addresses = [line.split()[-1] for line in result.stdout.splitlines() if "listening" in line]
    # 127.0.0.1, as /proc/net/tcp writes it, or as an IPv4-mapped IPv6 address; never 0.0.0.0 or [::].
    assert addresses and set(addresses) <= {"0100007F", "0000000000000000FFFF00000100007F"}, addresses
