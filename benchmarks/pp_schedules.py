"""Pipeline schedules: modelled step time, executed FLOPs, memory and compile time.

p = 4 stages on 4 CPU devices, an MLP of 8 blocks (2 per stage) on microbatches
of 32 sequences x 32 positions x width 128 (activations outweigh the weights, as
in transformer training). Simulated CPU devices share two cores, so pipeline wall
time means little here; the figures that carry over to accelerators are:

- the modelled step time over the ideal (``titanax.ir.schedule``'s cost model:
  F = 1, B = 2, or B = W = 1 when split, a tick as long as its busiest device,
  ideal 3m), for 1F1B, interleaved (v = 2) and ZB-H1 at m = 32 and 1F1B at m = 8;
- executed FLOPs of a pipelined step over the same step without pipelining: XLA's
  cost analysis of each cell (a stage's forward with its residuals, its backward
  from them) times how often the schedule runs it (cost analysis counts a loop body
  once, so it cannot be read off the compiled step), for ``remat = none`` and ``full``;
- the compiled step's temporary memory (``memory_analysis().temp_size_in_bytes``) of
  Titanax 1F1B with ``remat = none`` against a GPipe written in plain JAX that keeps
  every activation (``jax.grad`` through a scan over the forward ticks, the baseline a
  user would write), at m = 32; and Titanax 1F1B at m = 32 against m = 4 and m = 8;
- compile time of Titanax 1F1B at m = 32 over m = 4.

Targets (issue 12): modelled <= 1.12, 1.08, 1.06 (m = 32) and 1.45 (1F1B, m = 8);
flops_pp_over_nopp <= 1.02 (remat none); mem_1f1b_over_gpipe_noremat_m32 <= 0.3;
mem_1f1b_m32_over_m4 <= 1.1; compile_m32_over_m4_1f1b <= 1.5. The last line is JSON.

Run: python benchmarks/pp_schedules.py [--width 128] [--seq 32] [--steps 3]
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import titanax as tx  # noqa: E402
from titanax.ir import build_schedule  # noqa: E402
from titanax.lowering.pipeline import stage_function, stage_primals  # noqa: E402
from titanax.lowering.pipeline_tables import stage_kind  # noqa: E402
from titanax.lowering.residuals import apply_remat  # noqa: E402

STAGES, LAYERS, MICRO = 4, 8, 32


def first(o, mb):
    return mb["x"] @ o["embed"]["w"]


def block(layer, x):
    return jnp.tanh(x @ layer["w"] + layer["b"])


def last(o, x, mb):
    return jnp.mean((x @ o["head"]["w"] - mb["y"]) ** 2)


MODEL = tx.PipelineModel(first=first, block=block, last=last)


def init(width: int) -> dict:
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return {
        "embed": {"w": jax.random.normal(k[0], (width, width)) / width**0.5},
        "blocks": {"w": jax.random.normal(k[1], (LAYERS, width, width)) / width**0.5, "b": jnp.zeros((LAYERS, width))},
        "head": {"w": jax.random.normal(k[2], (width, 1)) / width**0.5},
    }


def batch_of(m: int, width: int, seq: int) -> dict:
    return {"x": jnp.ones((MICRO * m, seq, width)), "y": jnp.zeros((MICRO * m, seq, 1))}


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def flops_of(fn, *args) -> float:
    cost = jax.jit(fn).lower(*abstract(args)).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", 0.0))


def unrolled(b, x):
    """One stage's blocks as straight-line code, so cost analysis counts every layer."""
    for k in range(jax.tree.leaves(b)[0].shape[0]):
        x = block(jax.tree.map(lambda w, k=k: w[k], b), x)
    return x


def cell_flops(params: dict, mb: dict, remat: str) -> dict:
    """FLOPs of each cell: (op kind, stage kind) -> flops, for one stage's share of the blocks."""
    others = {n: v for n, v in params.items() if n != "blocks"}
    blocks = jax.tree.map(lambda w: w[: LAYERS // STAGES], params["blocks"])
    x = jax.eval_shape(lambda o, b, mb: unrolled(b, first(o, mb)), others, blocks, mb)
    x = jnp.zeros(x.shape, x.dtype)
    costs = {}
    for kind in ("first", "middle", "last"):
        captured = {}

        def forward(o, b, x, mb, kind=kind, captured=captured):
            fn = apply_remat(stage_function(kind, first, unrolled, last, mb), remat)
            out, pullback = jax.vjp(fn, *stage_primals(kind, o, b, x))
            leaves, captured["treedef"] = jax.tree.flatten(pullback)
            return out, leaves  # the residuals are outputs: nothing is dead

        out, leaves = jax.eval_shape(forward, others, blocks, x, mb)
        treedef = captured["treedef"]

        def backward(leaves, g, treedef=treedef):
            return jax.tree.unflatten(treedef, leaves)(g)

        costs[("F", kind)] = flops_of(forward, others, blocks, x, mb)
        g = jnp.ones(out.shape, out.dtype)
        costs[("B", kind)] = flops_of(backward, [jnp.zeros(leaf.shape, leaf.dtype) for leaf in leaves], g)
    return costs


def executed_flops(schedule, costs: dict) -> float:
    return sum(costs[(op.kind, stage_kind(op.model_stage(STAGES), STAGES))] for op in schedule.ops)


def nopp_flops(params: dict, batch: dict) -> float:
    def loss(p):
        return last(p, unrolled(p["blocks"], first(p, batch)), batch)

    return flops_of(jax.value_and_grad(loss), params)


def titanax_step(m: int, schedule: str, remat: str, width: int, seq: int, steps: int) -> dict:
    params, batch = init(width), batch_of(m, width, seq)
    engine = tx.Engine(
        mesh=tx.MeshSpec(devices=STAGES, axes=("pipe",)),
        # The first stage also runs the width x width input layer: 3 blocks' worth of work to the others' 2.
        plan=tx.Plan(
            pipeline_parallel=tx.PP(axis="pipe", microbatches=m, schedule=schedule, remat=remat, balance_tolerance=1.6)
        ),
        optimizer=tx.optim.sgd(0.01),
    )

    @tx.step_fn
    def step(state, batch):
        loss, grads = tx.pipeline.value_and_grad(MODEL, state.params, batch)
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


def plain_gpipe_temp(m: int, width: int, seq: int) -> int:
    """Temporary memory of a GPipe in plain JAX that keeps every activation: ``jax.grad`` through
    a scan over the ``m + p - 1`` forward ticks (reverse mode keeps each tick's residuals)."""
    mesh = jax.make_mesh((STAGES,), ("pipe",), axis_types=(jax.sharding.AxisType.Explicit,))
    params, batch = init(width), batch_of(m, width, seq)
    specs = {"embed": {"w": jax.P()}, "blocks": {"w": jax.P("pipe"), "b": jax.P("pipe")}, "head": {"w": jax.P()}}

    def loss(params, batch):
        stage = lax.axis_index("pipe")
        o = jax.tree.map(
            lambda w: lax.pcast(w, ("pipe",), to="varying"), {n: v for n, v in params.items() if n != "blocks"}
        )
        micro = jax.tree.map(lambda x: x.reshape(m, MICRO, *x.shape[1:]), batch)

        def tick(x_prev, t):
            i = jnp.clip(t - stage, 0, m - 1)
            mb = jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, keepdims=False), micro)
            x_in = jnp.where(stage == 0, first(o, mb), x_prev)
            y = lax.scan(lambda h, layer: (block(layer, h), None), x_in, params["blocks"])[0]
            valid = (stage == STAGES - 1) & (t - stage >= 0) & (t - stage < m)
            out = jnp.where(valid, last(o, y, mb), 0.0)
            return lax.ppermute(y, "pipe", [(s, s + 1) for s in range(STAGES - 1)]), out

        x0 = lax.pcast(jnp.zeros((MICRO, seq, width)), ("pipe",), to="varying")
        _, losses = lax.scan(tick, x0, jnp.arange(m + STAGES - 1))
        return lax.psum(jnp.sum(losses), "pipe") / m

    def step(params, batch):
        value, grads = jax.value_and_grad(loss)(params, batch)
        return value, jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)

    mapped = jax.shard_map(step, mesh=mesh, in_specs=(specs, jax.P()), out_specs=(jax.P(), specs), check_vma=True)
    with jax.set_mesh(mesh):
        params = jax.tree.map(lambda x, s: jax.device_put(x, jax.NamedSharding(mesh, s)), params, specs)
        compiled = jax.jit(mapped).lower(params, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    modelled = {
        "modelled_over_ideal_1f1b_m32": build_schedule("1f1b", STAGES, 32).modelled_over_ideal(),
        "modelled_over_ideal_interleaved_v2_m32": build_schedule("interleaved", STAGES, 32, 2).modelled_over_ideal(),
        "modelled_over_ideal_zbh1_m32": build_schedule("zbh1", STAGES, 32).modelled_over_ideal(),
        "modelled_over_ideal_1f1b_m8": build_schedule("1f1b", STAGES, 8).modelled_over_ideal(),
        "modelled_over_ideal_gpipe_m32": build_schedule("gpipe", STAGES, 32).modelled_over_ideal(),
    }
    for name, value in modelled.items():
        print(f"{name}: {value:.4f}", flush=True)

    params, m = init(args.width), 32
    mb = jax.tree.map(lambda x: x[:MICRO], batch_of(1, args.width, args.seq))
    table = build_schedule("1f1b", STAGES, m)
    nopp = nopp_flops(params, batch_of(m, args.width, args.seq))
    flops = {remat: executed_flops(table, cell_flops(params, mb, remat)) / nopp for remat in ("none", "full")}
    print(f"executed FLOPs over no pipeline: remat none {flops['none']:.4f}, full {flops['full']:.4f}", flush=True)

    runs = {}
    for m in (4, 8, 32):
        runs[("1f1b", m)] = titanax_step(m, "1f1b", "none", args.width, args.seq, args.steps)
    runs[("gpipe", 32)] = titanax_step(32, "gpipe", "none", args.width, args.seq, args.steps)
    runs[("1f1b-full", 32)] = titanax_step(32, "1f1b", "full", args.width, args.seq, args.steps)
    for (name, m), r in runs.items():
        print(
            f"titanax {name:9} m={m:2d}: temp {r['temp_bytes'] / 2**20:7.2f} MiB, compile {r['compile_s']:5.2f} s, "
            f"step {r['step_ms']:7.2f} ms",
            flush=True,
        )
    plain = plain_gpipe_temp(32, args.width, args.seq)
    print(f"plain-JAX GPipe keeping every activation, m=32: temp {plain / 2**20:7.2f} MiB", flush=True)
    one = {m: runs[("1f1b", m)] for m in (4, 8, 32)}
    result = {
        **{k: round(v, 4) for k, v in modelled.items()},
        "flops_pp_over_nopp": round(flops["none"], 4),
        "flops_pp_over_nopp_remat_full": round(flops["full"], 4),
        "mem_1f1b_over_gpipe_noremat_m32": round(one[32]["temp_bytes"] / plain, 4),
        "mem_1f1b_m32_over_m4": round(one[32]["temp_bytes"] / one[4]["temp_bytes"], 4),
        "mem_1f1b_m32_over_m8": round(one[32]["temp_bytes"] / one[8]["temp_bytes"], 4),
        "mem_1f1b_over_titanax_gpipe_m32": round(one[32]["temp_bytes"] / runs[("gpipe", 32)]["temp_bytes"], 4),
        "mem_1f1b_full_over_none_m32": round(runs[("1f1b-full", 32)]["temp_bytes"] / one[32]["temp_bytes"], 4),
        "compile_m32_over_m4_1f1b": round(one[32]["compile_s"] / one[4]["compile_s"], 4),
        "step_1f1b_over_gpipe_m32_cpu": round(one[32]["step_ms"] / runs[("gpipe", 32)]["step_ms"], 4),
        "stages": STAGES,
        "microbatch_shape": [MICRO, args.seq, args.width],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
