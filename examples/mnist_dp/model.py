"""Two MNIST classifiers in plain JAX, parameters as nested dicts of arrays, plus loss and accuracy.

* ``mlp``: flatten, dense + ReLU layers (512, 256 by default), dense 10. About 0.5M parameters.
* ``cnn``: conv 3x3 32 + ReLU + 2x2 max pool, conv 3x3 64 + ReLU + pool, dense 128 + ReLU, dense 10.
  About 0.23M parameters; convolutions are unpadded (28 -> 26 -> 13 -> 11 -> 5), which keeps it cheap on CPU.

Every layer is ``{"w": ..., "b": ...}``, the naming of ``titanax.nn``. Images are ``(N, 28, 28, 1)``
(NHWC; ``(N, 784)`` is accepted too) and the models return unnormalised logits ``(N, 10)``.

Cost on a 2-core CPU, one Adam step at batch 128: about 5 ms for ``mlp`` and 150 ms for ``cnn`` (XLA's
CPU convolution gradients dominate; the forward pass alone is about 8 ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

Params = dict[str, Any]

NUM_CLASSES = 10


def _dense_init(key: jax.Array, fan_in: int, fan_out: int, gain: float) -> Params:
    # Normal with variance gain / fan_in: gain 2 (He) keeps activations' scale through ReLUs; the
    # output layer uses gain 1 (LeCun), as no ReLU follows it. Biases start at zero.
    w = jax.random.normal(key, (fan_in, fan_out), jnp.float32) * jnp.sqrt(gain / fan_in)
    return {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}


def _conv_init(key: jax.Array, in_ch: int, out_ch: int, size: int = 3) -> Params:
    fan_in = size * size * in_ch
    w = jax.random.normal(key, (size, size, in_ch, out_ch), jnp.float32) * jnp.sqrt(2.0 / fan_in)  # HWIO, He
    return {"w": w, "b": jnp.zeros((out_ch,), jnp.float32)}


def _dense(p: Params, x: jax.Array) -> jax.Array:
    return x @ p["w"] + p["b"]


def init_mlp(key: jax.Array, hidden: Sequence[int] = (512, 256)) -> Params:
    """MLP parameters: ``hidden_0 .. hidden_{k-1}`` (dense + ReLU) and ``out`` (dense to 10 logits)."""
    sizes = [28 * 28, *hidden]
    keys = jax.random.split(key, len(hidden) + 1)
    params = {f"hidden_{i}": _dense_init(keys[i], sizes[i], sizes[i + 1], 2.0) for i in range(len(hidden))}
    params["out"] = _dense_init(keys[-1], sizes[-1], NUM_CLASSES, 1.0)
    return params


def mlp_apply(params: Params, images: jax.Array) -> jax.Array:
    """Logits ``(N, 10)`` of the MLP for images ``(N, 28, 28, 1)`` or ``(N, 784)``."""
    x = images.reshape(images.shape[0], -1)
    for i in range(sum(name.startswith("hidden_") for name in params)):
        x = jax.nn.relu(_dense(params[f"hidden_{i}"], x))
    return _dense(params["out"], x)


def init_cnn(key: jax.Array, channels: tuple[int, int] = (32, 64), hidden: int = 128) -> Params:
    """CNN parameters: ``conv_0``, ``conv_1`` (HWIO kernels 3x3), ``hidden`` (dense + ReLU) and ``out``."""
    k0, k1, k2, k3 = jax.random.split(key, 4)
    flat = 5 * 5 * channels[1]  # spatial size after two unpadded 3x3 convolutions and two 2x2 pools
    return {
        "conv_0": _conv_init(k0, 1, channels[0]),
        "conv_1": _conv_init(k1, channels[0], channels[1]),
        "hidden": _dense_init(k2, flat, hidden, 2.0),
        "out": _dense_init(k3, hidden, NUM_CLASSES, 1.0),
    }


def _conv_relu_pool(p: Params, x: jax.Array) -> jax.Array:
    x = jax.lax.conv_general_dilated(
        x, p["w"], window_strides=(1, 1), padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    x = jax.nn.relu(x + p["b"])
    # 2x2 max pool with stride 2; an odd edge row/column is dropped (11 -> 5).
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def cnn_apply(params: Params, images: jax.Array) -> jax.Array:
    """Logits ``(N, 10)`` of the CNN for images ``(N, 28, 28, 1)`` (or ``(N, 784)``)."""
    x = images.reshape(images.shape[0], 28, 28, 1)
    x = _conv_relu_pool(params["conv_0"], x)  # (N, 13, 13, 32)
    x = _conv_relu_pool(params["conv_1"], x)  # (N, 5, 5, 64)
    x = jax.nn.relu(_dense(params["hidden"], x.reshape(x.shape[0], -1)))
    return _dense(params["out"], x)


MODELS = {"mlp": (init_mlp, mlp_apply), "cnn": (init_cnn, cnn_apply)}
"""Model name -> ``(init(key) -> params, apply(params, images) -> logits)``."""


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean over the batch of the softmax cross-entropy, for integer ``labels`` in ``0..9``.

    Under data parallelism each device averages its own shard; the plan's gradient all-reduce
    (a mean over the data axis) then gives the full-batch gradient when shards are equal in size.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of the batch whose highest logit is the label."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
