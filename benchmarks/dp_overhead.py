"""Titanax DP step vs the same step hand-written as jax.jit(jax.shard_map(...)).

Both run an MLP training step (SGD) over 8 devices, interleaved step by step in
one process so that machine noise hits both alike. Prints the median step
times and their ratio; the last line is JSON. Target: titanax_over_handwritten <= 1.05.

Run: python benchmarks/dp_overhead.py [--steps 200] [--width 512] [--batch 512]
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402

import titanax as tx  # noqa: E402

P = jax.P


def init_params(width: int) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    dims = [(width, width), (width, width), (width, 1)]
    return {
        f"layer{i}": {"w": jax.random.normal(k, d) / d[0] ** 0.5, "b": jnp.zeros((d[1],))}
        for i, (k, d) in enumerate(zip(keys, dims, strict=True))
    }


def loss_fn(params: dict, batch: dict) -> jax.Array:
    h = batch["x"]
    for name in sorted(params)[:-1]:
        h = jax.nn.relu(h @ params[name]["w"] + params[name]["b"])
    last = params[sorted(params)[-1]]
    return jnp.mean((h @ last["w"] + last["b"] - batch["y"]) ** 2)


def handwritten_step(mesh, optimizer):
    def body(params, opt_state, batch):
        varying = jax.tree.map(lambda p: lax.pcast(p, ("data",), to="varying"), params)
        loss, grads = jax.value_and_grad(loss_fn)(varying, batch)
        grads = jax.tree.map(lambda g: lax.pmean(g, "data"), grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, lax.pmean(loss, "data")

    program = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=(P(), P(), P()), check_vma=True)
    return jax.jit(program, donate_argnums=(0, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()

    optimizer = optax.sgd(0.01)
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)), plan=tx.Plan(data_parallel=tx.DP(axis="data")), optimizer=optimizer
    )

    @tx.step_fn
    def titanax_step(state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(AxisType.Explicit,))
    hand = handwritten_step(mesh, optimizer)
    replicated = lambda x: jax.device_put(x, NamedSharding(mesh, P(*([None] * x.ndim))))  # noqa: E731
    hand_params = jax.tree.map(replicated, init_params(args.width))
    hand_opt = jax.jit(jax.shard_map(optimizer.init, mesh=mesh, in_specs=P(), out_specs=P()))(hand_params)
    state = engine.create_state(init_params(args.width))

    key = jax.random.PRNGKey(1)
    batch = {"x": jax.random.normal(key, (args.batch, args.width)), "y": jnp.ones((args.batch, 1))}
    batch_sharding = NamedSharding(mesh, P("data"))

    times = {"titanax": [], "handwritten": []}
    for step in range(args.steps + 5):  # the first 5 steps compile and warm up
        start = time.perf_counter()
        state, metrics = titanax_step(state, batch)
        metrics["loss"].block_until_ready()
        middle = time.perf_counter()
        hand_params, hand_opt, loss = hand(hand_params, hand_opt, jax.device_put(batch, batch_sharding))
        loss.block_until_ready()
        end = time.perf_counter()
        if step >= 5:
            times["titanax"].append(middle - start)
            times["handwritten"].append(end - middle)

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["titanax"] / medians["handwritten"]
    print(f"devices={len(jax.devices())} width={args.width} batch={args.batch} steps={args.steps}")
    print(f"titanax     median step: {medians['titanax'] * 1e3:.3f} ms")
    print(f"handwritten median step: {medians['handwritten'] * 1e3:.3f} ms")
    print(f"ratio titanax/handwritten: {ratio:.3f} (target <= 1.05)")
    print(
        json.dumps(
            {
                "titanax_over_handwritten": round(ratio, 4),
                "titanax_ms": round(medians["titanax"] * 1e3, 4),
                "handwritten_ms": round(medians["handwritten"] * 1e3, 4),
                "devices": len(jax.devices()),
            }
        )
    )


if __name__ == "__main__":
    main()
