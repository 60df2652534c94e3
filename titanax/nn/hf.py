"""Hugging Face weights in and out: ``safetensors`` files with Hugging Face's tensor names and layouts.

Two families, each a name map with the layout change of every tensor:

- ``llama`` (``LlamaForCausalLM``) <-> :func:`titanax.nn.init_llama`'s tree. Hugging Face stores a
  linear layer's weight as ``(out, in)``; Titanax stores ``(in, *out)`` with heads split out
  (``q/w`` ``(d_model, heads, head_dim)``), so each matrix is transposed and reshaped, nothing else:
  both use the same rotary convention (``rotate_half``).
- ``gpt2`` (``GPT2LMHeadModel``) <-> :func:`titanax.nn.init_gpt`'s tree. GPT-2's ``Conv1D`` already
  stores ``(in, out)``; its fused ``c_attn`` is query | key | value, each split into heads, while
  Titanax's ``qkv/w`` is head-major ``(d_model, heads, 3, head_dim)`` (what a column split over heads
  needs), so the columns are regrouped. GPT-2 ties its output head to the token embedding: importing
  copies ``wte`` into ``head/w``; exporting writes ``lm_head.weight`` from ``head/w``.

:func:`export_hf` writes a state's parameters (gathered whole from their shards, in model order
under an interleaved pipeline; process 0 writes); :func:`import_hf` reads a file into a parameter
tree for ``engine.create_state``. The ``safetensors`` package is the optional ``hf`` extra.
Importing and exporting again gives back the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from titanax.errors import TrainingError

__all__ = ["FAMILIES", "export_hf", "from_hf", "import_hf", "load_safetensors", "save_safetensors", "to_hf"]

Tensors = dict[str, np.ndarray]


def _safetensors() -> Any:
    try:
        import safetensors.numpy as st
    except ImportError:
        raise TrainingError.single(
            "TX751",
            "reading or writing Hugging Face weights needs the safetensors package",
            "pip install 'titanax[hf]' (or pip install safetensors)",
        ) from None
    return st


def save_safetensors(
    path: str | Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` to a ``.safetensors`` file (contiguous copies, so any layout is accepted)."""
    _safetensors().save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)


def load_safetensors(path: str | Path) -> Tensors:
    """Every tensor of a ``.safetensors`` file, as NumPy arrays (the format holds no code: nothing is executed)."""
    st = _safetensors()
    from safetensors import SafetensorError

    try:
        return dict(st.load_file(str(path)))
    except (OSError, ValueError, SafetensorError) as err:
        raise TrainingError.single(
            "TX751", f"cannot read {path} as safetensors: {err}", "give the path of a .safetensors file"
        ) from None


# -- Llama ---------------------------------------------------------------------------------------
_LLAMA_MATRICES = {
    "attn/q/w": "self_attn.q_proj.weight",
    "attn/k/w": "self_attn.k_proj.weight",
    "attn/v/w": "self_attn.v_proj.weight",
    "mlp/gate/w": "mlp.gate_proj.weight",
    "mlp/up/w": "mlp.up_proj.weight",
    "mlp/down/w": "mlp.down_proj.weight",
}
_LLAMA_NORMS = {"attn_norm/scale": "input_layernorm.weight", "mlp_norm/scale": "post_attention_layernorm.weight"}


def _layers(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The blocks as a list of per-layer trees, stacked (leading layer dimension) or keyed ``"0"``, ``"1"``..."""
    blocks = params["blocks"]
    if all(isinstance(k, str) and k.isdigit() for k in blocks):
        return [blocks[k] for k in sorted(blocks, key=int)]
    count = jax.tree.leaves(blocks)[0].shape[0]
    return [jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(count)]


def _blocks(layers: list[dict[str, Any]], stacked: bool) -> Any:
    if stacked:
        return jax.tree.map(lambda *xs: np.stack(xs), *layers)
    return {str(i): layer for i, layer in enumerate(layers)}


def _get(tree: dict[str, Any], path: str) -> np.ndarray:
    for key in path.split("/"):
        tree = tree[key]
    return np.asarray(tree)


def _put(tree: dict[str, Any], path: str, value: np.ndarray) -> None:
    *parents, last = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value


def llama_to_hf(params: dict[str, Any]) -> Tensors:
    """Hugging Face ``LlamaForCausalLM`` tensors of a :func:`~titanax.nn.init_llama` tree."""
    out: Tensors = {
        "model.embed_tokens.weight": _get(params, "embed/tokens"),
        "model.norm.weight": _get(params, "norm/scale"),
        "lm_head.weight": _get(params, "head/w").T,
    }
    for i, layer in enumerate(_layers(params)):
        prefix = f"model.layers.{i}."
        for ours, theirs in _LLAMA_MATRICES.items():
            w = _get(layer, ours)
            out[prefix + theirs] = w.reshape(w.shape[0], -1).T
        o = _get(layer, "attn/o/w")
        out[prefix + "self_attn.o_proj.weight"] = o.reshape(-1, o.shape[-1]).T
        for ours, theirs in _LLAMA_NORMS.items():
            out[prefix + theirs] = _get(layer, ours)
    return out


def llama_from_hf(tensors: Mapping[str, np.ndarray], *, heads: int, stacked: bool = False) -> dict[str, Any]:
    """A :func:`~titanax.nn.init_llama` tree from Hugging Face ``LlamaForCausalLM`` tensors (``heads``:
    the number of query heads, ``num_attention_heads`` in its config; key/value heads follow from the shapes)."""
    take = _taker(tensors, "llama")
    embed = take("model.embed_tokens.weight")
    d_model = embed.shape[1]
    head_dim = d_model // heads
    layers = []
    for i in range(_layer_count(tensors, "model.layers.")):
        prefix = f"model.layers.{i}."
        layer: dict[str, Any] = {}
        for ours, theirs in _LLAMA_MATRICES.items():
            w = take(prefix + theirs).T  # (in, out)
            if ours.startswith("attn/"):
                w = w.reshape(d_model, -1, head_dim)
            _put(layer, ours, w)
        _put(layer, "attn/o/w", take(prefix + "self_attn.o_proj.weight").T.reshape(heads, head_dim, d_model))
        for ours, theirs in _LLAMA_NORMS.items():
            _put(layer, ours, take(prefix + theirs))
        layers.append(layer)
    params = {
        "embed": {"tokens": embed},
        "blocks": _blocks(layers, stacked),
        "norm": {"scale": take("model.norm.weight")},
        "head": {"w": take("lm_head.weight").T},
    }
    take.check_all_used()
    return params


# -- GPT-2 ---------------------------------------------------------------------------------------
_GPT2_COPIED = {
    "ln1/scale": "ln_1.weight",
    "ln1/bias": "ln_1.bias",
    "ln2/scale": "ln_2.weight",
    "ln2/bias": "ln_2.bias",
    "attn/out/b": "attn.c_proj.bias",
    "mlp/up/w": "mlp.c_fc.weight",
    "mlp/up/b": "mlp.c_fc.bias",
    "mlp/down/w": "mlp.c_proj.weight",
    "mlp/down/b": "mlp.c_proj.bias",
}


def gpt2_to_hf(params: dict[str, Any]) -> Tensors:
    """Hugging Face ``GPT2LMHeadModel`` tensors of a :func:`~titanax.nn.init_gpt` tree."""
    out: Tensors = {
        "transformer.wte.weight": _get(params, "embed/tokens"),
        "transformer.wpe.weight": _get(params, "pos"),
        "transformer.ln_f.weight": _get(params, "ln_f/scale"),
        "transformer.ln_f.bias": _get(params, "ln_f/bias"),
        "lm_head.weight": _get(params, "head/w").T,
    }
    for i, layer in enumerate(_layers(params)):
        prefix = f"transformer.h.{i}."
        qkv = _get(layer, "attn/qkv/w")  # (d_model, heads, 3, head_dim) -> columns q | k | v
        d_model, heads, _, head_dim = qkv.shape
        out[prefix + "attn.c_attn.weight"] = qkv.transpose(0, 2, 1, 3).reshape(d_model, -1)
        bias = _get(layer, "attn/qkv/b").reshape(heads, 3, head_dim)
        out[prefix + "attn.c_attn.bias"] = bias.transpose(1, 0, 2).reshape(-1)
        out[prefix + "attn.c_proj.weight"] = _get(layer, "attn/out/w").reshape(-1, d_model)
        for ours, theirs in _GPT2_COPIED.items():
            out[prefix + theirs] = _get(layer, ours)
    return out


def gpt2_from_hf(tensors: Mapping[str, np.ndarray], *, heads: int, stacked: bool = False) -> dict[str, Any]:
    """A :func:`~titanax.nn.init_gpt` tree from Hugging Face ``GPT2LMHeadModel`` tensors (``heads``: ``n_head``).

    Without ``lm_head.weight`` (GPT-2 ties it to the token embedding) the head is the embedding's transpose.
    """
    take = _taker(tensors, "gpt2", optional=("lm_head.weight",))
    wte = take("transformer.wte.weight")
    d_model = wte.shape[1]
    head_dim = d_model // heads
    layers = []
    for i in range(_layer_count(tensors, "transformer.h.")):
        prefix = f"transformer.h.{i}."
        layer: dict[str, Any] = {}
        qkv = take(prefix + "attn.c_attn.weight").reshape(d_model, 3, heads, head_dim)
        _put(layer, "attn/qkv/w", qkv.transpose(0, 2, 1, 3))
        bias = take(prefix + "attn.c_attn.bias").reshape(3, heads, head_dim)
        _put(layer, "attn/qkv/b", bias.transpose(1, 0, 2).reshape(-1))
        _put(layer, "attn/out/w", take(prefix + "attn.c_proj.weight").reshape(heads, head_dim, d_model))
        for ours, theirs in _GPT2_COPIED.items():
            _put(layer, ours, take(prefix + theirs))
        layers.append(layer)
    head = take("lm_head.weight") if "lm_head.weight" in tensors else wte
    params = {
        "embed": {"tokens": wte},
        "pos": take("transformer.wpe.weight"),
        "blocks": _blocks(layers, stacked),
        "ln_f": {"scale": take("transformer.ln_f.weight"), "bias": take("transformer.ln_f.bias")},
        "head": {"w": np.asarray(head).T},
    }
    take.check_all_used()
    return params


# -- shared --------------------------------------------------------------------------------------
class _taker:
    """Takes tensors by name, with errors naming what is missing or left over (TX750)."""

    def __init__(self, tensors: Mapping[str, np.ndarray], family: str, optional: tuple[str, ...] = ()):
        self.tensors, self.family, self.used = tensors, family, set(optional)

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise TrainingError.single(
                "TX750",
                f"the {self.family} weights have no tensor {name!r} ({len(self.tensors)} tensors, e.g. "
                f"{sorted(self.tensors)[:3]})",
                f"give a Hugging Face {_CLASSES[self.family]} checkpoint, or the family its tensors belong to",
            )
        self.used.add(name)
        return np.asarray(self.tensors[name])

    def check_all_used(self) -> None:
        extra = sorted(set(self.tensors) - self.used)
        if extra:
            raise TrainingError.single(
                "TX750",
                f"the {self.family} weights hold tensors the model has no place for: {extra[:5]}"
                + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""),
                "check the family and the configuration (biases, tied weights) the checkpoint was saved with",
            )


def _layer_count(tensors: Mapping[str, np.ndarray], prefix: str) -> int:
    indices = {int(name[len(prefix) :].split(".")[0]) for name in tensors if name.startswith(prefix)}
    if indices != set(range(len(indices))):
        raise TrainingError.single(
            "TX750",
            f"the layers under {prefix!r} are numbered {sorted(indices)}, not 0 to {len(indices) - 1}",
            "give a whole checkpoint (every layer, in one file)",
        )
    return len(indices)


_CLASSES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
FAMILIES: dict[str, tuple[Callable[[dict[str, Any]], Tensors], Callable[..., dict[str, Any]]]] = {
    "llama": (llama_to_hf, llama_from_hf),
    "gpt2": (gpt2_to_hf, gpt2_from_hf),
}
"""Family name -> (to Hugging Face tensors, from them)."""


def _family(family: str) -> tuple[Callable[[dict[str, Any]], Tensors], Callable[..., dict[str, Any]]]:
    if family not in FAMILIES:
        raise TrainingError.single(
            "TX750", f"unknown model family {family!r}", f"use one of {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[family]


def to_hf(params: dict[str, Any], family: str) -> Tensors:
    """Hugging Face tensors (NumPy, on the host) of a parameter tree of ``family`` (``llama`` or ``gpt2``)."""
    return _family(family)[0](params)


def from_hf(tensors: Mapping[str, np.ndarray], family: str, *, heads: int, stacked: bool = False) -> dict[str, Any]:
    """A parameter tree of ``family`` from Hugging Face tensors; ``stacked`` stacks the blocks."""
    return _family(family)[1](tensors, heads=heads, stacked=stacked)


def export_hf(engine: Any, state: Any, path: str | Path, *, family: str) -> None:
    """Write ``state``'s parameters as a Hugging Face ``.safetensors`` file (process 0 writes).

    The parameters are gathered whole from their shards (every process takes part) and taken in
    model order (``engine.params_in_model_order``), so any plan exports the same file.
    """
    params = engine.params_in_model_order(state)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(params, tiled=True)
    tensors = to_hf(jax.device_get(params), family)
    if jax.process_index() == 0:
        save_safetensors(path, tensors, metadata={"format": "pt"})


def import_hf(path: str | Path, *, family: str, heads: int, stacked: bool = False) -> dict[str, Any]:
    """Read a Hugging Face ``.safetensors`` file into a parameter tree for ``engine.create_state``."""
    return from_hf(load_safetensors(path), family, heads=heads, stacked=stacked)
