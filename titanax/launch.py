"""``titanax launch``: run one command as N cooperating local processes.

The launcher picks a free loopback port for process 0's coordinator, starts N
copies of the command with ``TITANAX_COORDINATOR``, ``TITANAX_NUM_PROCESSES``
and ``TITANAX_PROCESS_ID`` set (``tx.distributed.initialize()`` reads them),
prefixes every line they print with ``[rank i]``, and forwards SIGINT and
SIGTERM to them.

If any process fails, the others are stopped (SIGTERM, then SIGKILL after a
grace period) and the launcher exits with that process's status, naming its
rank: a run never hangs on a dead peer. It imports no JAX.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from titanax.errors import DistributedError

__all__ = ["LaunchResult", "free_port", "launch"]

GRACE_S = 5.0
"""How long stopped processes get to exit after SIGTERM before SIGKILL."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LaunchResult:
    """How a launch ended: the exit status, and the first process that failed (if any)."""

    status: int
    """0 when every process succeeded, else the failing process's exit status (128 + signal if killed)."""
    failed_rank: int | None = None
    """Rank of the first process that failed."""
    failed_returncode: int | None = None
    """Its raw return code (negative: killed by that signal)."""


def _child_env(rank: int, processes: int, port: int, devices_per_process: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "TITANAX_COORDINATOR": f"127.0.0.1:{port}",
            "TITANAX_NUM_PROCESSES": str(processes),
            "TITANAX_PROCESS_ID": str(rank),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if devices_per_process is not None:
        # Simulated CPU devices per process; GPUs and TPUs ignore this flag.
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).strip()
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices_per_process}".strip()
    return env


def _pump(stream: TextIO, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            out.write(f"{prefix}{line}" if line.endswith("\n") else f"{prefix}{line}\n")
            out.flush()
    stream.close()


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal the process and everything it started (each rank leads its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _stop(processes: Sequence[subprocess.Popen]) -> None:
    for process in processes:
        _signal_group(process, signal.SIGTERM)  # exited ranks may leave children behind
    deadline = time.monotonic() + GRACE_S
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def launch(
    command: Sequence[str],
    *,
    processes: int,
    devices_per_process: int | None = None,
    port: int | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> LaunchResult:
    """Run ``command`` as ``processes`` ranks on this machine and wait for all of them (or the first failure)."""
    if not command:
        raise DistributedError.single(
            "TX743", "titanax launch needs a command to run", "write: titanax launch --processes 2 -- python train.py"
        )
    if port is not None and not 0 < port < 65536:
        raise DistributedError.single("TX743", f"--port {port} is not a TCP port", "use 1..65535, or leave it out")
    if processes < 1:
        raise DistributedError.single("TX743", f"--processes {processes} must be at least 1", "e.g. --processes 2")
    if devices_per_process is not None and devices_per_process < 1:
        raise DistributedError.single(
            "TX743", f"--devices-per-process {devices_per_process} must be at least 1", "e.g. --devices-per-process 4"
        )
    out, err = stdout or sys.stdout, stderr or sys.stderr
    port = port or free_port()
    lock = threading.Lock()
    children: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    try:
        for rank in range(processes):
            child = subprocess.Popen(
                list(command),
                env=_child_env(rank, processes, port, devices_per_process),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                # Its own session: a terminal's Ctrl-C reaches the launcher only, which forwards it
                # once, and the launcher can stop the rank together with anything it started.
                start_new_session=True,
            )
            children.append(child)
            for stream, sink in ((child.stdout, out), (child.stderr, err)):
                pump = threading.Thread(target=_pump, args=(stream, f"[rank {rank}] ", sink, lock), daemon=True)
                pump.start()
                pumps.append(pump)
    except OSError as error:
        _stop(children)
        raise DistributedError.single(
            "TX743", f"cannot start {command[0]!r}: {error.strerror}", "check the command after --"
        ) from None
    except BaseException:
        _stop(children)  # interrupted while starting: leave no rank behind
        raise

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                _signal_group(child, signum)

    # Python lets only the main thread install signal handlers; called from another thread,
    # launch still stops every rank on a failure but leaves signal forwarding to the caller.
    on_main_thread = threading.current_thread() is threading.main_thread()
    handled = (signal.SIGINT, signal.SIGTERM) if on_main_thread else ()
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    result = LaunchResult(status=0)
    try:
        while True:
            codes = [child.poll() for child in children]
            failed = next((rank for rank, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None:
                code = codes[failed]
                others = sum(code is None for code in codes)
                with lock:
                    err.write(
                        f"titanax launch: rank {failed} {_describe(code)}; "
                        f"stopping the other {others} running process(es)\n"
                    )
                    err.flush()
                _stop(children)
                result = LaunchResult(
                    status=code if code > 0 else 128 + (-code), failed_rank=failed, failed_returncode=code
                )
                break
            if all(code == 0 for code in codes):
                break
            time.sleep(0.05)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for pump in pumps:
            pump.join(timeout=2.0)
    return result
