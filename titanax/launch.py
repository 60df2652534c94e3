"""``titanax launch``: run one command as N cooperating local processes.

The launcher checks that process 0's coordinator port is free on 127.0.0.1,
starts N copies of the command with ``TITANAX_COORDINATOR``,
``TITANAX_NUM_PROCESSES`` and ``TITANAX_PROCESS_ID`` set
(``tx.distributed.initialize()`` reads them) and ``JAX_COORDINATOR_BIND_ADDRESS``
set so that the coordinator listens on loopback only, and prefixes every line
they print with ``[rank i]``.

Every rank runs in its own session and process group, so that stopping a rank
also stops whatever it started. The run ends in one of four ways, and in each
the launcher leaves no process behind:

- every rank exits with 0: processes the ranks left running in their groups
  are stopped, and the launcher exits with 0;
- a rank fails: the others are stopped and the launcher exits with that rank's
  status, naming it: a run never hangs on a dead peer;
- the launcher gets SIGINT, SIGTERM or SIGHUP: it passes SIGINT on as SIGINT and
  the other two as SIGTERM, escalates (SIGINT, then SIGTERM, then SIGKILL, each
  after ``grace_s`` seconds or at the next signal it gets), and exits with
  128 + the signal's number;
- the run outlives ``timeout_s``: the ranks are stopped (TX745, status 124).

If the launcher itself dies without cleaning up (SIGKILL, a crash), the ranks
die with it: on Linux each rank asks the kernel for SIGKILL when the launcher
goes (``PR_SET_PDEATHSIG``), and a small guardian process, which holds the read
end of a pipe only the launcher writes to, kills the ranks' process groups when
that pipe closes. It imports no JAX.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from titanax.errors import Diagnostic, DistributedError

__all__ = ["GRACE_S", "PROCESSES_PER_CPU", "TIMEOUT_STATUS", "LaunchResult", "free_port", "launch", "max_processes"]

GRACE_S = 5.0
"""How long ranks get to exit after each signal before the launcher sends the next, stronger one."""
PROCESSES_PER_CPU = 4
"""``--processes`` may be at most this many per CPU of the machine (and at least 8 are always allowed)."""
TIMEOUT_STATUS = 124
"""The launcher's exit status when the run outlives its timeout (as coreutils ``timeout``)."""

_POLL_S = 0.05
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# The guardian outlives the launcher by design: it reads the ranks' process groups
# from the launcher, one a line, and when the pipe closes without "done" (the
# launcher died however it died), kills them. It ignores terminal signals, so a
# closed terminal or a Ctrl-C cannot take it down before it has done its job.
_GUARDIAN = """\
import os, signal, sys
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(number, signal.SIG_IGN)
groups = []
for line in sys.stdin:
    if line == "done\\n":
        sys.exit(0)
    groups.append(int(line))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As a listening server would: a port whose last connection lingers in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def max_processes() -> int:
    """The most ranks ``launch`` starts on this machine: ``PROCESSES_PER_CPU`` per CPU, at least 8."""
    return max(8, PROCESSES_PER_CPU * (os.cpu_count() or 1))


@dataclass(frozen=True)
class LaunchResult:
    """How a launch ended: the exit status, and what ended it (a failed rank, a signal, the timeout)."""

    status: int
    """0 when every process succeeded; the failing process's exit status (128 + signal if killed);
    128 + the signal the launcher received; or ``TIMEOUT_STATUS``."""
    failed_rank: int | None = None
    """Rank of the first process that failed."""
    failed_returncode: int | None = None
    """Its raw return code (negative: killed by that signal)."""
    interrupted_by: int | None = None
    """The signal (SIGINT, SIGTERM, SIGHUP) that made the launcher stop the run."""
    timed_out: bool = False
    """Whether the run was stopped because it outlived its timeout."""


def _child_env(rank: int, processes: int, port: int, devices_per_process: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "TITANAX_COORDINATOR": f"127.0.0.1:{port}",
            "TITANAX_NUM_PROCESSES": str(processes),
            "TITANAX_PROCESS_ID": str(rank),
            # jax.distributed's coordinator binds to every interface ([::]) unless told otherwise;
            # all ranks run here, so loopback is enough and nothing outside can connect.
            "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if devices_per_process is not None:
        # Simulated CPU devices per process; GPUs and TPUs ignore this flag.
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).strip()
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices_per_process}".strip()
    return env


def _pump(stream: TextIO, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    writable = True
    for line in iter(stream.readline, ""):
        if not writable:
            continue  # keep draining, so that a rank never blocks on a full pipe
        with lock:
            try:
                out.write(f"{prefix}{line}" if line.endswith("\n") else f"{prefix}{line}\n")
                out.flush()
            except (OSError, ValueError):
                writable = False  # the terminal or reader is gone (a closed ssh session)
    stream.close()


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {_signal_name(-returncode)}"
    return f"exited with status {returncode}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _peek(child: subprocess.Popen) -> int | None:
    """The rank's return code once it has exited, leaving it unreaped.

    A zombie keeps its pid, and so its process group id, from being reused, so the
    launcher can still signal the group (the rank's descendants) safely.
    """
    if child.returncode is not None or not hasattr(os, "waitid"):
        return child.poll()
    try:
        info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return child.poll()
    if info is None or info.si_pid == 0:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the rank when the launcher dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    launcher = os.getpid()

    def arm() -> None:
        # Runs in the child between fork and exec; the setting survives exec.
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != launcher:  # the launcher died before the line above: no signal will come
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


class _Guardian:
    """The process that kills the ranks' groups if the launcher dies without doing it itself."""

    def __init__(self) -> None:
        try:
            self.process: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARDIAN],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            self.process = None  # best effort: on Linux the parent-death signal still stops the ranks

    def _send(self, text: str) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError, ValueError):
                self.process.stdin.write(text.encode())
                self.process.stdin.flush()

    def watch(self, pgid: int) -> None:
        """Add a rank's process group to those killed if the launcher dies."""
        self._send(f"{pgid}\n")

    def dismiss(self) -> None:
        """The launcher has stopped every group itself: let the guardian exit without killing anything."""
        if self.process is None:
            return
        self._send("done\n")
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)


def _running_groups(pgids: set[int]) -> set[int] | None:
    """Which of these process groups still hold a live (not zombie) process; ``None`` without /proc."""
    if not os.path.isdir("/proc/self"):
        return None
    found = set()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    text = stat.read()
            except OSError:
                continue  # exited while we looked
            # After the command name in parentheses: state, ppid, pgrp, ...
            fields = text[text.rfind(b")") + 2 :].split()
            if len(fields) > 2 and fields[0] not in (b"Z", b"X") and int(fields[2]) in pgids:
                found.add(int(fields[2]))
    return found


class _Run:
    """The ranks of one launch, the signals the launcher got, and how to stop them all."""

    def __init__(self, err: TextIO, grace_s: float) -> None:
        self.err = err
        self.grace_s = grace_s
        self.lock = threading.Lock()
        self.children: list[subprocess.Popen] = []
        self.pumps: list[threading.Thread] = []
        self.signals: list[int] = []  # received by the launcher, in order (appended by its handler)

    def say(self, text: str) -> None:
        """Print one launcher message on stderr; a reader that went away is no reason to stop cleaning up."""
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.err.write(f"titanax launch: {text}\n")
            self.err.flush()

    def live_groups(self) -> set[int]:
        """The ranks' process groups in which some process still runs."""
        groups = {child.pid for child in self.children}
        running = _running_groups(groups)
        if running is None:  # no /proc: only the ranks themselves are visible
            running = {child.pid for child in self.children if _peek(child) is None}
        return running

    def stop(self, first: int = signal.SIGTERM) -> None:
        """Signal every group with processes left, escalating to SIGKILL, then reap the ranks.

        Each step waits up to ``grace_s`` seconds for the groups to empty; a signal the
        launcher receives meanwhile moves on to the next step at once.
        """
        steps = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL) if first == signal.SIGINT else (first, signal.SIGKILL)
        for signum in steps:
            live = self.live_groups()
            if not live:
                break
            for pgid in live:
                _signal_group(pgid, signum)
            if signum == signal.SIGKILL:
                break
            received = len(self.signals)
            deadline = time.monotonic() + self.grace_s
            while time.monotonic() < deadline and len(self.signals) == received and self.live_groups():
                time.sleep(_POLL_S)
        for child in self.children:
            child.wait()

    def supervise(self, deadline: float | None, timeout_s: float | None) -> LaunchResult:
        """Wait for the run to end (all ranks done, one failed, a signal, the timeout) and stop what is left."""
        while True:
            codes = [_peek(child) for child in self.children]
            running = [rank for rank, code in enumerate(codes) if code is None]
            if self.signals:
                signum = self.signals[0]
                self.say(f"received {_signal_name(signum)}; stopping {len(running)} running process(es)")
                self.stop(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
                return LaunchResult(status=128 + signum, interrupted_by=signum)
            failed = next((rank for rank, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None:
                code = codes[failed]
                self.say(f"rank {failed} {_describe(code)}; stopping the other {len(running)} running process(es)")
                self.stop()
                return LaunchResult(
                    status=code if code > 0 else 128 + (-code), failed_rank=failed, failed_returncode=code
                )
            if not running:
                live = self.live_groups()
                left = [rank for rank, child in enumerate(self.children) if child.pid in live]
                if left:
                    ranks = ", ".join(map(str, left))
                    self.say(f"rank(s) {ranks} exited but left processes running in their group; stopping them")
                self.stop()
                return LaunchResult(status=0)
            if deadline is not None and time.monotonic() >= deadline:
                diagnostic = Diagnostic(
                    code="TX745",
                    message=f"the run did not finish within --timeout {timeout_s:g} s; "
                    f"stopping rank(s) {', '.join(map(str, running))}",
                    hint="a rank may be hung (waiting on a collective or a peer); raise --timeout if the run "
                    "is just long",
                )
                self.say(diagnostic.render())
                self.stop()
                return LaunchResult(status=TIMEOUT_STATUS, timed_out=True)
            time.sleep(_POLL_S)


def _check_arguments(
    command: Sequence[str],
    processes: int,
    devices_per_process: int | None,
    port: int | None,
    timeout_s: float | None,
    grace_s: float,
) -> None:
    def misuse(message: str, hint: str) -> DistributedError:
        return DistributedError.single("TX743", message, hint)

    if not command:
        raise misuse("titanax launch needs a command to run", "write: titanax launch --processes 2 -- python train.py")
    if processes < 1:
        raise misuse(f"--processes {processes} must be at least 1", "e.g. --processes 2")
    if processes > max_processes():
        raise misuse(
            f"--processes {processes} is more than this machine can run: at most {max_processes()} "
            f"({PROCESSES_PER_CPU} per CPU, {os.cpu_count() or 1} CPU(s))",
            "every rank is a whole process on this machine; use fewer processes, and more devices per process",
        )
    if devices_per_process is not None and devices_per_process < 1:
        raise misuse(f"--devices-per-process {devices_per_process} must be at least 1", "e.g. --devices-per-process 4")
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise misuse(f"--timeout {timeout_s} must be a positive number of seconds", "e.g. --timeout 600")
    if not (math.isfinite(grace_s) and grace_s >= 0):
        raise misuse(f"--grace {grace_s} must be a number of seconds, 0 or more", f"e.g. --grace {GRACE_S:g}")
    if port is not None:
        if not 0 < port < 65536:
            raise misuse(f"--port {port} is not a TCP port", "use 1..65535, or leave it out")
        if not _port_is_free(port):
            raise misuse(
                f"--port {port} is already in use on 127.0.0.1, so process 0's coordinator could not listen on it",
                "pick another port, or leave --port out to use a free one",
            )


def launch(
    command: Sequence[str],
    *,
    processes: int,
    devices_per_process: int | None = None,
    port: int | None = None,
    timeout_s: float | None = None,
    grace_s: float = GRACE_S,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> LaunchResult:
    """Run ``command`` as ``processes`` ranks on this machine and wait for all of them (or the first failure).

    ``timeout_s`` bounds the whole run (the ranks are stopped when it passes);
    ``grace_s`` is how long ranks get after each signal before a stronger one.
    Signals reach the launcher only when it runs on the main thread; called from
    another thread, it still stops every rank when one fails or time runs out.
    Bad arguments raise :class:`~titanax.DistributedError` TX743. Example::

        result = launch(["python", "train.py"], processes=2, devices_per_process=4, timeout_s=600)
    """
    _check_arguments(command, processes, devices_per_process, port, timeout_s, grace_s)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    port = port or free_port()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    run = _Run(err, grace_s)

    def on_signal(signum: int, _frame: object) -> None:
        run.signals.append(signum)  # the main loop acts on it; a handler only records

    # Python lets only the main thread install signal handlers.
    on_main_thread = threading.current_thread() is threading.main_thread()
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if on_main_thread else ()
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    guardian = _Guardian()
    arm = _parent_death_signal()
    try:
        for rank in range(processes):
            if run.signals:
                break  # interrupted while starting: supervise() stops the ranks already running
            try:
                child = subprocess.Popen(
                    list(command),
                    env=_child_env(rank, processes, port, devices_per_process),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    errors="replace",
                    # Its own session: a terminal's Ctrl-C reaches the launcher only, which passes it
                    # on, and the launcher can stop the rank together with anything it started.
                    start_new_session=True,
                    preexec_fn=arm,
                )
            except OSError as error:
                run.stop()
                raise DistributedError.single(
                    "TX743", f"cannot start {command[0]!r}: {error.strerror}", "check the command after --"
                ) from None
            run.children.append(child)
            guardian.watch(child.pid)
        # The output threads start once every rank has: a fork while other threads run could
        # deadlock in preexec_fn. Until then, a rank's output waits in its pipe.
        for rank, child in enumerate(run.children):
            for stream, sink in ((child.stdout, out), (child.stderr, err)):
                pump = threading.Thread(target=_pump, args=(stream, f"[rank {rank}] ", sink, run.lock), daemon=True)
                pump.start()
                run.pumps.append(pump)
        return run.supervise(deadline, timeout_s)
    finally:
        run.stop()  # after an unexpected error too: leave no rank behind (a no-op when all are done)
        guardian.dismiss()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for pump in run.pumps:
            pump.join(timeout=2.0)
