"""FSDP stage 3 against plain data parallelism and against XLA's automatic partitioner, same GPT, 8 devices.

One stacked GPT (``--layers`` >= 8 blocks) trained with AdamW under three
programs, all compiled in this process:

- DP: ``data_parallel over data`` (8), every device holding whole parameters
  and optimizer state;
- FSDP-3: ``fully_sharded over fsdp { stage = 3 }`` (8), each stacked layer
  gathered inside the scan over layers and its gradients reduce-scattered;
- automatic: the same model as plain single-device math under ``jax.jit``, its
  parameters, optimizer state and batch placed by ``NamedSharding`` with the
  very FSDP-3 partition specs on a mesh of ``Auto`` axes, so that XLA's
  partitioner (GSPMD) decides the communication.

Reported: per-device bytes of parameters and optimizer state (read from each
array's addressable shard), XLA's temporary bytes (``memory_analysis``), the
collective bytes per step in the compiled HLO (each collective's result times
its runs per step, only those crossing devices), and median step times,
interleaved step by step. The last line is JSON. Targets (issue 13):
state_bytes_fsdp3_over_dp <= 0.135, temp_fsdp3_minus_dp_over_layer <= 2.5,
bytes_fsdp3_over_auto <= 1.0; time_fsdp3_over_dp is reported.

Run: python benchmarks/fsdp_memory.py [--layers 8] [--d-model 256] [--steps 10]
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import optax  # noqa: E402
from auto_partitioner import auto_partitioned  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

import titanax as tx  # noqa: E402
from titanax import nn  # noqa: E402
from titanax.lowering import collectives_in_hlo  # noqa: E402
from titanax.lowering.pipeline import sequential_loss  # noqa: E402

P = jax.P


@tx.step_fn
def train_step(state, batch):
    loss, grads = tx.pipeline.value_and_grad(nn.GPT_PIPELINE, state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def shard_bytes(tree) -> int:
    """Bytes one device holds of every array in ``tree``."""
    return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))


def collective_bytes(compiled) -> tuple[int, dict[str, int]]:
    by_op: dict[str, int] = {}
    for c in collectives_in_hlo(compiled.as_text()):
        if c.crosses_devices:
            by_op[c.op] = by_op.get(c.op, 0) + c.result_bytes * (c.executions or 1)
    return sum(by_op.values()), by_op


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    config = {"vocab": 512, "seq_len": args.seq, "d_model": args.d_model, "heads": 8, "d_ff": 4 * args.d_model}
    params = nn.init_gpt(jax.random.PRNGKey(0), layers=args.layers, stacked=True, **config)
    ids = jax.random.randint(jax.random.PRNGKey(1), (args.batch, args.seq + 1), 0, config["vocab"])
    batch = {"ids": ids[:, :-1], "labels": ids[:, 1:]}
    optimizer = optax.adamw(1e-3)
    layer_bytes = sum(x[0].nbytes for x in jax.tree.leaves(params["blocks"]))

    plans = {
        "dp": (tx.MeshSpec(axes=("data",), shape=(8,)), tx.Plan(data_parallel=tx.DP(axis="data"))),
        "fsdp3": (tx.MeshSpec(axes=("fsdp",), shape=(8,)), tx.Plan(fully_sharded=tx.FSDP(axis="fsdp", stage=3))),
    }
    states, compiled, placed = {}, {}, {}
    for name, (mesh, plan) in plans.items():
        engine = tx.Engine(mesh=mesh, plan=plan, optimizer=optimizer)
        states[name] = engine.create_state(params, stacked="blocks")
        compiled[name] = train_step.lower(states[name], batch).compile()
        placed[name] = train_step.compiled(states[name]).place_batch(batch)

    # -- automatic partitioner with the FSDP-3 specs ---------------------------------
    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))
    model = nn.GPT_PIPELINE
    auto = auto_partitioned(
        states["fsdp3"],
        params,
        optimizer,
        lambda p, b: sequential_loss(model.first, model.block, model.last, model.blocks, p, b),
        mesh,
        batch,
        ("fsdp",),
    )

    # -- time DP and FSDP-3, interleaved, the order alternating ------------------------
    times = {"dp": [], "fsdp3": []}
    losses = {}
    for step in range(args.steps + 2):
        for name in ("dp", "fsdp3") if step % 2 else ("fsdp3", "dp"):
            start = time.perf_counter()
            states[name], metrics = train_step(states[name], placed[name])
            losses[name] = float(jax.block_until_ready(metrics)["loss"])
            if step >= 2:
                times[name].append(time.perf_counter() - start)
    losses_agree = abs(losses["dp"] - losses["fsdp3"]) <= 1e-4 * abs(losses["dp"])

    report = {}
    for name in ("dp", "fsdp3"):
        state, stats = states[name], compiled[name].memory_analysis()
        total, by_op = collective_bytes(compiled[name])
        report[name] = {
            "state": shard_bytes((state.params, state.opt_state)),
            "temp": stats.temp_size_in_bytes,
            "bytes": total,
            "ms": statistics.median(times[name]) * 1e3,
        }
        r = report[name]
        print(
            f"{name:6} params+opt/device={r['state'] / 2**20:8.2f} MiB temp={r['temp'] / 2**20:7.2f} MiB "
            f"collective bytes/step/device={total:11d} {by_op} median_step={r['ms']:.1f} ms"
        )
    auto_total, auto_by_op = collective_bytes(auto.compiled)
    print(f"auto   collective bytes/step/device={auto_total:11d} {auto_by_op}")
    print(f"one layer of whole parameters: {layer_bytes / 2**20:.2f} MiB; losses agree: {losses_agree}")
    dp, fsdp = report["dp"], report["fsdp3"]
    print(
        json.dumps(
            {
                "state_bytes_fsdp3_over_dp": round(fsdp["state"] / dp["state"], 4),
                "temp_fsdp3_minus_dp_over_layer": round((fsdp["temp"] - dp["temp"]) / layer_bytes, 4),
                "bytes_fsdp3_over_auto": round(fsdp["bytes"] / auto_total, 4),
                "time_fsdp3_over_dp": round(fsdp["ms"] / dp["ms"], 4),
                "fsdp3_ms": round(fsdp["ms"], 2),
                "dp_ms": round(dp["ms"], 2),
                "layers": args.layers,
                "layer_bytes": layer_bytes,
                "losses_agree": losses_agree,
                "devices": 8,
            }
        )
    )


if __name__ == "__main__":
    main()
