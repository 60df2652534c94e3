"""GPipe vs 1F1B in Titanax's single-program pipeline: memory, compile time and step time.

p = 4 stages on 4 CPU devices, an MLP of 8 blocks (2 per stage) applied to
microbatches of 32 sequences x 32 positions x width 128 (activations outweigh the
weights, as in transformer training), m in {4, 8, 16, 32}. ``--seq 1 --width 256``
gives the weight-dominated regime, where fixed temporaries (gradient
accumulators, the optimizer update) hide most of the stash. For each (schedule, m): the compiled step's
temporary memory (``compiled.memory_analysis().temp_size_in_bytes``), its compile
time, and the median step time. The last line is JSON. Targets: 1F1B's temporary
memory at m=16 <= 0.5 x GPipe's and flat in m; 1F1B compile time at m=32 <= 1.5 x
at m=4.

Both schedules recompute each stage's forward in its backward, so a stage keeps
only its inputs: one stash slot (plus a cotangent slot) per microbatch in flight,
m under GPipe and about p under 1F1B.

Run: python benchmarks/pp_schedules.py [--width 128] [--seq 32] [--steps 5]
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import titanax as tx  # noqa: E402

STAGES, LAYERS, MICRO = 4, 8, 32


def model() -> tx.PipelineModel:
    return tx.PipelineModel(
        first=lambda o, mb: mb["x"] @ o["embed"]["w"],
        block=lambda layer, x: jnp.tanh(x @ layer["w"] + layer["b"]),
        last=lambda o, x, mb: jnp.mean((x @ o["head"]["w"] - mb["y"]) ** 2),
    )


def measure(schedule: str, m: int, width: int, seq: int, steps: int) -> dict:
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {
        "embed": {"w": jax.random.normal(k[0], (width, width)) / width**0.5},
        "blocks": {"w": jax.random.normal(k[1], (LAYERS, width, width)) / width**0.5, "b": jnp.zeros((LAYERS, width))},
        "head": {"w": jax.random.normal(k[2], (width, 1)) / width**0.5},
    }
    batch = {"x": jnp.ones((MICRO * m, seq, width)), "y": jnp.zeros((MICRO * m, seq, 1))}
    engine = tx.Engine(
        mesh=tx.MeshSpec(devices=STAGES, axes=("pipe",)),
        # The first stage also runs the width x width input layer: 3 blocks' worth of work to the others' 2.
        plan=tx.Plan(pipeline_parallel=tx.PP(axis="pipe", microbatches=m, schedule=schedule, balance_tolerance=1.6)),
        optimizer=tx.optim.sgd(0.01),
    )
    pipelined = model()

    @tx.step_fn
    def step(state, batch):
        loss, grads = tx.pipeline.value_and_grad(pipelined, state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    state = engine.create_state(params)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    temp = compiled.memory_analysis().temp_size_in_bytes
    placed = step.compiled(state).place_batch(batch)
    state, metrics = step(state, placed)  # compiles the jit's own copy; not timed
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, placed)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return {"temp_bytes": temp, "compile_s": compile_s, "step_ms": statistics.median(times) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    results = {}
    for m in (4, 8, 16, 32):
        for schedule in ("gpipe", "1f1b"):
            r = measure(schedule, m, args.width, args.seq, args.steps)
            results[(schedule, m)] = r
            print(
                f"{schedule:5} m={m:2d}: temp memory {r['temp_bytes'] / 2**20:7.2f} MiB, "
                f"compile {r['compile_s']:5.2f} s, step {r['step_ms']:7.2f} ms",
                flush=True,
            )
    one, gp = "1f1b", "gpipe"
    temps_1f1b = [results[(one, m)]["temp_bytes"] for m in (4, 8, 16, 32)]
    print(
        json.dumps(
            {
                "mem_1f1b_over_gpipe_m16": round(results[(one, 16)]["temp_bytes"] / results[(gp, 16)]["temp_bytes"], 4),
                "mem_1f1b_over_gpipe_m32": round(results[(one, 32)]["temp_bytes"] / results[(gp, 32)]["temp_bytes"], 4),
                "mem_1f1b_m32_over_m4": round(temps_1f1b[-1] / temps_1f1b[0], 4),
                "compile_m32_over_m4_1f1b": round(results[(one, 32)]["compile_s"] / results[(one, 4)]["compile_s"], 4),
                "compile_m32_over_m4_gpipe": round(results[(gp, 32)]["compile_s"] / results[(gp, 4)]["compile_s"], 4),
                "step_1f1b_over_gpipe_m16": round(results[(one, 16)]["step_ms"] / results[(gp, 16)]["step_ms"], 4),
                "temp_mib_1f1b": [round(t / 2**20, 3) for t in temps_1f1b],
                "temp_mib_gpipe": [round(results[(gp, m)]["temp_bytes"] / 2**20, 3) for m in (4, 8, 16, 32)],
                "stages": STAGES,
                "microbatch_shape": [MICRO, args.seq, args.width],
            }
        )
    )


if __name__ == "__main__":
    main()
