"""Titanax explicit tensor parallelism vs XLA's automatic partitioner, same GPT, same mesh.

Titanax: the plan's shard rules, ``titanax.nn``'s Megatron layers, one
``shard_map`` program whose every collective is written in the code.
Automatic: the same model as plain single-device math under ``jax.jit``, with
parameters, optimizer state and batch placed by ``NamedSharding`` with the very
same partition specs on a mesh of ``Auto`` axes, so that XLA's partitioner
(GSPMD) decides the communication.

For each: the collectives in the compiled HLO that cross devices (count and
bytes per device per step), peak memory from ``compiled.memory_analysis()``, and the median step time,
interleaved step by step in one process (alternating which goes first), each
with its batch already on the mesh. The last line is JSON. Targets:
bytes_titanax_over_auto <= 1 and time_titanax_over_auto <= 1.

Run: python benchmarks/tp_vs_gspmd.py [--dp 2 --tp 4] [--steps 30] [--d-model 256]
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

P = jax.P


def peak_bytes(compiled) -> int:
    stats = compiled.memory_analysis()
    return (
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    )


def hlo_summary(compiled) -> tuple[int, int, dict[str, int]]:
    # Collectives over groups of one device move nothing (XLA's CPU backend keeps them anyway).
    found = [c for c in collectives_in_hlo(compiled.as_text()) if c.crosses_devices]
    by_op: dict[str, int] = {}
    for c in found:
        by_op[c.op] = by_op.get(c.op, 0) + c.result_bytes
    return len(found), sum(by_op.values()), by_op


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dp", type=int, default=2)
    parser.add_argument("--tp", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    config = {"vocab": 512, "seq_len": args.seq, "d_model": args.d_model, "heads": 8, "d_ff": 4 * args.d_model}
    params = nn.init_gpt(jax.random.PRNGKey(0), layers=args.layers, **config)
    ids = jax.random.randint(jax.random.PRNGKey(1), (args.batch, args.seq + 1), 0, config["vocab"])
    batch = {"ids": ids[:, :-1], "labels": ids[:, 1:]}
    optimizer = optax.adamw(1e-3)

    # -- Titanax ---------------------------------------------------------------
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(args.dp, args.tp)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES)),
        optimizer=optimizer,
    )
    state = engine.create_state(params)

    @tx.step_fn
    def titanax_step(state, batch):
        loss, grads = jax.value_and_grad(nn.gpt_loss)(state.params, batch["ids"], batch["labels"])
        return state.apply_gradients(grads=grads), {"loss": loss}

    titanax_compiled = titanax_step.lower(state, batch).compile()

    # -- automatic partitioner, same specs -------------------------------------
    mesh = jax.make_mesh((args.dp, args.tp), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))
    auto = auto_partitioned(
        state, params, optimizer, lambda p, b: nn.gpt_loss(p, b["ids"], b["labels"]), mesh, batch, ("data",)
    )
    auto_params, auto_opt, auto_batch, auto_jit, auto_compiled = (
        auto.params,
        auto.opt_state,
        auto.batch,
        auto.step,
        auto.compiled,
    )

    # -- time, interleaved; both batches placed once, and the order alternates ----
    titanax_batch = titanax_step.compiled(state).place_batch(batch)
    times = {"titanax": [], "auto": []}
    for step in range(args.steps + 3):
        for name in ("titanax", "auto") if step % 2 else ("auto", "titanax"):
            start = time.perf_counter()
            if name == "titanax":
                state, metrics = titanax_step(state, titanax_batch)
                jax.block_until_ready(metrics)
            else:
                auto_params, auto_opt, loss = auto_jit(auto_params, auto_opt, auto_batch)
                jax.block_until_ready(loss)
            if step >= 3:
                times[name].append(time.perf_counter() - start)
    losses_agree = abs(float(metrics["loss"]) - float(loss)) < 1e-3 * abs(float(loss))

    report = {}
    for name, compiled in (("titanax", titanax_compiled), ("auto", auto_compiled)):
        count, total, by_op = hlo_summary(compiled)
        median = statistics.median(times[name]) * 1e3
        report[name] = {"collectives": count, "bytes": total, "peak": peak_bytes(compiled), "ms": median}
        print(
            f"{name:8} collectives={count:3d} bytes/step/device={total:10d} {by_op} "
            f"peak_memory={peak_bytes(compiled) / 2**20:.1f} MiB median_step={median:.2f} ms"
        )
    t, a = report["titanax"], report["auto"]
    print(f"losses agree after {args.steps + 3} steps: {losses_agree}")
    print(
        json.dumps(
            {
                "bytes_titanax_over_auto": round(t["bytes"] / a["bytes"], 4),
                "time_titanax_over_auto": round(t["ms"] / a["ms"], 4),
                "peak_memory_titanax_over_auto": round(t["peak"] / a["peak"], 4),
                "collectives_titanax": t["collectives"],
                "collectives_auto": a["collectives"],
                "titanax_ms": round(t["ms"], 3),
                "auto_ms": round(a["ms"], 3),
                "mesh": f"{args.dp}x{args.tp}",
                "devices": args.dp * args.tp,
            }
        )
    )


if __name__ == "__main__":
    main()
