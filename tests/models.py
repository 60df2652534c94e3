"""A small MLP, its data and a pure-JAX single-device training loop: the reference for DP tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IN, HIDDEN, OUT = 4, 16, 3


def init_mlp(seed: int = 0) -> dict:
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "dense1": {"w": jax.random.normal(k1, (IN, HIDDEN)) * 0.5, "b": jnp.zeros((HIDDEN,))},
        "dense2": {"w": jax.random.normal(k2, (HIDDEN, OUT)) * 0.5, "b": jnp.full((OUT,), 0.1)},
    }


def mlp_loss(params: dict, batch: dict) -> jax.Array:
    h = jnp.tanh(batch["x"] @ params["dense1"]["w"] + params["dense1"]["b"])
    pred = h @ params["dense2"]["w"] + params["dense2"]["b"]
    return jnp.mean((pred - batch["y"]) ** 2)


def make_batches(steps: int, batch_size: int, seed: int = 1) -> list[dict]:
    key = jax.random.PRNGKey(seed)
    batches = []
    for _ in range(steps):
        key, kx, ky = jax.random.split(key, 3)
        batches.append({"x": jax.random.normal(kx, (batch_size, IN)), "y": jax.random.normal(ky, (batch_size, OUT))})
    return batches


def reference_run(optimizer: optax.GradientTransformation, params: dict, batches: list[dict]):
    """Plain single-device JAX: returns (losses, final params)."""
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(mlp_loss)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for batch in batches:
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
    return losses, params
