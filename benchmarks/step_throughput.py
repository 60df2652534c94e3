"""Training throughput a user can compare: tokens per second, model FLOPs per token, and MFU.

Trains ``titanax.nn``'s Llama (or GPT) for a few dozen steps under a plan on whatever devices exist
(default: data parallelism over all of them; ``--plan`` takes a ``.tx`` file) and prints tokens per
second, the model FLOPs per token, and:

- on an accelerator with a known peak (the table below, dense bfloat16), MFU = achieved model FLOP/s
  over the peak of the devices used;
- otherwise (CPU), the throughput over that of a hand-written ``jax.jit`` step of the same model,
  parameters replicated and the batch split over the same devices by ``NamedSharding`` (what a JAX
  user writes without Titanax), timed interleaved with it in this process.

Model FLOPs per token follow the usual count (Kaplan et al.; PaLM's appendix B): 6 per parameter of
the matrices the tokens go through (embedding lookups excluded, the output head included) plus
12 x layers x width x sequence for the attention scores and their use; recomputation is not counted.
The last line is JSON.

Run: python benchmarks/step_throughput.py [--model llama|gpt] [--plan PLAN.tx] [--steps 30]
     [--dtype bfloat16] [--d-model 256 --layers 4 --seq 256 --batch 16]
"""

import argparse
import dataclasses
import json
import math
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402

import titanax as tx  # noqa: E402
from titanax import nn  # noqa: E402
from titanax.lowering.context import outside_step_context  # noqa: E402
from titanax.lowering.pipeline import sequential_loss  # noqa: E402

P = jax.P

PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5p": 459e12,
    "TPU v4": 275e12,
    "TPU v6 lite": 918e12,  # Trillium
}
"""Dense bfloat16 peak FLOP/s per device, by a substring of ``device.device_kind`` (SXM parts for GPUs)."""


def peak_flops(device: jax.Device) -> float | None:
    kind = device.device_kind
    return next((peak for name, peak in PEAK_BF16_FLOPS.items() if name in kind), None)


def model_flops_per_token(params: dict, model: str, layers: int, d_model: int, seq: int) -> float:
    """6 x the matrix parameters a token passes through (no embedding lookup), + the attention term."""
    total = sum(x.size for x in jax.tree.leaves(params))
    embeddings = params["embed"]["tokens"].size + (params["pos"].size if model == "gpt" else 0)
    return 6.0 * (total - embeddings) + 12.0 * layers * d_model * seq


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("llama", "gpt"), default="llama")
    parser.add_argument("--plan", default=None, help="a .tx plan (default: data parallelism over every device)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    vocab, d, heads = 1024, args.d_model, max(4, args.d_model // 32)
    if args.model == "llama":
        params = nn.init_llama(
            jax.random.PRNGKey(0), vocab=vocab, d_model=d, heads=heads, kv_heads=heads // 2,
            d_ff=(8 * d // 3 + 63) // 64 * 64, layers=args.layers, stacked=True,
        )  # fmt: skip
        model = nn.LLAMA_PIPELINE
    else:
        params = nn.init_gpt(
            jax.random.PRNGKey(0), vocab=vocab, seq_len=args.seq, d_model=d, heads=heads, d_ff=4 * d,
            layers=args.layers, stacked=True,
        )  # fmt: skip
        model = nn.GPT_PIPELINE
    devices = jax.device_count()
    if args.plan:
        loaded = tx.load_plan(args.plan)
        mesh_spec, plan = loaded.mesh, loaded.plan
    else:
        mesh_spec, plan = tx.MeshSpec(axes=("data",), shape=(devices,)), tx.Plan(data_parallel=tx.DP(axis="data"))
    if args.dtype == "bfloat16":
        plan = dataclasses.replace(plan, precision=tx.Precision(compute="bfloat16"))
    optimizer = optax.adamw(1e-4)
    engine = tx.Engine(mesh=mesh_spec, plan=plan, optimizer=optimizer)
    state = engine.create_state(params, stacked="blocks")
    ids = jax.random.randint(jax.random.PRNGKey(1), (args.batch, args.seq + 1), 0, vocab)
    batch = {"ids": ids[:, :-1], "labels": ids[:, 1:]}

    @tx.step_fn
    def step(state, batch):
        loss, grads = tx.pipeline.value_and_grad(model, state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    placed = step.compiled(state).place_batch(batch)

    # -- the hand-written jax.jit baseline: replicated parameters, batch split over the same devices --
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(AxisType.Auto,))
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    compute = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32

    def plain_step(params, opt_state, batch):
        def loss_fn(p):
            p = jax.tree.map(lambda x: x.astype(compute), p)
            with outside_step_context():
                return sequential_loss(model.first, model.block, model.last, model.blocks, p, batch)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    plain_params = jax.device_put(params, replicated)
    plain_opt = jax.jit(optimizer.init, out_shardings=replicated)(plain_params)
    plain_batch = jax.device_put(batch, split)
    plain_jit = jax.jit(plain_step, donate_argnums=(0, 1))

    times = {"titanax": [], "jit": []}
    for index in range(args.steps + 3):
        for name in ("titanax", "jit") if index % 2 else ("jit", "titanax"):
            start = time.perf_counter()
            if name == "titanax":
                state, metrics = step(state, placed)
                jax.block_until_ready(metrics)
            else:
                plain_params, plain_opt, loss = plain_jit(plain_params, plain_opt, plain_batch)
                jax.block_until_ready(loss)
            if index >= 3:  # the first calls compile
                times[name].append(time.perf_counter() - start)

    tokens = args.batch * args.seq
    flops_token = model_flops_per_token(params, args.model, args.layers, d, args.seq)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    tokens_per_s = {name: tokens / s for name, s in seconds.items()}
    used = engine.mesh.devices.size
    peak = peak_flops(jax.devices()[0])
    mfu = tokens_per_s["titanax"] * flops_token / (peak * used) if peak else None
    print(
        f"{args.model}: {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.2f}M parameters, "
        f"{tokens} tokens per step on {used} {jax.devices()[0].device_kind} device(s), {args.dtype}"
    )
    for name in ("titanax", "jit"):
        print(f"  {name:8} median step {seconds[name] * 1e3:8.2f} ms  {tokens_per_s[name]:12.0f} tokens/s")
    print(f"  model FLOPs per token {flops_token / 1e6:.2f} M" + (f", MFU {mfu:.1%}" if mfu is not None else ""))
    print(
        json.dumps(
            {
                "model": args.model,
                "plan": os.path.basename(args.plan) if args.plan else f"dp{devices}",
                "dtype": args.dtype,
                "devices": used,
                "device_kind": jax.devices()[0].device_kind,
                "tokens_per_s": round(tokens_per_s["titanax"], 1),
                "model_flops_per_token": flops_token,
                "mfu": round(mfu, 4) if mfu is not None else None,
                "tokens_per_s_over_jit": round(tokens_per_s["titanax"] / tokens_per_s["jit"], 4),
                "step_ms": round(seconds["titanax"] * 1e3, 3),
                "jit_step_ms": round(seconds["jit"] * 1e3, 3),
                "peak_flops_per_device": peak,
                "loss_finite": math.isfinite(float(metrics["loss"])),
            }
        )
    )


if __name__ == "__main__":
    main()
