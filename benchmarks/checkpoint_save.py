"""How long a checkpoint save blocks training: asynchronous vs synchronous, in one process.

Saves the same training state (parameters plus Adam's two moments, over 8
devices) with ``tx.Checkpoint(async_=True)`` and ``async_=False`` alternately,
timing how long ``engine.save`` holds the training loop, and how long the
asynchronous write takes to finish in the background. The last line is JSON;
``blocking_async_over_sync`` is the share of the save that still blocks the
host. The device copies an asynchronous save makes are queued on the devices
like a step, so they still delay the next step by one copy of the state.

Run: python benchmarks/checkpoint_save.py [--mib 64] [--repeats 3]
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import titanax as tx  # noqa: E402


def make_engine(directory: str, async_: bool) -> tx.Engine:
    return tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data")),
        optimizer=tx.optim.adam(1e-3),
        checkpoint=tx.Checkpoint(directory, every=1, keep=1, async_=async_),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--mib",
        type=int,
        default=64,
        help="parameter MiB; with Adam the state is 3x this, replicated on every device, and a save copies it",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    side = int((args.mib * 2**20 / 4 / 4) ** 0.5)
    params = {f"w{i}": jnp.full((side, side), float(i)) for i in range(4)}
    root = tempfile.mkdtemp(prefix="titanax-ckpt-bench-")
    blocking = {True: [], False: []}
    background = []
    try:
        for repeat in range(args.repeats):
            for async_ in (True, False):
                engine = make_engine(os.path.join(root, f"{async_}-{repeat}"), async_)
                state = engine.create_state(params)
                jax.block_until_ready(state)
                engine.host_step = 1
                start = time.perf_counter()
                engine.save(state)
                blocking[async_].append(time.perf_counter() - start)
                engine.checkpointer.wait()
                if async_:
                    background.append(time.perf_counter() - start)
                engine.close()
                del state  # eight replicas of the state, plus the save's copies: free them before the next
    finally:
        shutil.rmtree(root, ignore_errors=True)
    async_s, sync_s = statistics.median(blocking[True]), statistics.median(blocking[False])
    state_mib = args.mib * 3
    print(f"state {state_mib} MiB over {jax.device_count()} devices")
    print(f"async save blocks {async_s * 1e3:.1f} ms (written after {statistics.median(background) * 1e3:.1f} ms)")
    print(f"sync save blocks  {sync_s * 1e3:.1f} ms")
    result = {
        "blocking_async_over_sync": round(async_s / sync_s, 4),
        "async_blocking_ms": round(async_s * 1e3, 2),
        "async_complete_ms": round(statistics.median(background) * 1e3, 2),
        "sync_blocking_ms": round(sync_s * 1e3, 2),
        "state_mib": state_mib,
        "devices": jax.device_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
