"""Hugging Face weights in and out: a tiny Llama and GPT-2 written in Hugging Face's names and layouts
load into titanax.nn, match an independent NumPy forward of the same tensors, and export back bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import titanax as tx
from titanax import nn
from titanax.errors import TrainingError
from titanax.nn import hf

pytest.importorskip("safetensors")

VOCAB, D, HEADS, KV_HEADS, FF, LAYERS, SEQ = 40, 32, 4, 2, 48, 2, 12
HEAD_DIM = D // HEADS


def hf_llama_tensors(seed=0) -> dict[str, np.ndarray]:
    """Random weights named and shaped as Hugging Face's LlamaForCausalLM stores them ((out, in) matrices)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": w(VOCAB, D),
        "model.norm.weight": 1 + w(D),
        "lm_head.weight": w(VOCAB, D),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": 1 + w(D),
            p + "post_attention_layernorm.weight": 1 + w(D),
            p + "self_attn.q_proj.weight": w(HEADS * HEAD_DIM, D),
            p + "self_attn.k_proj.weight": w(KV_HEADS * HEAD_DIM, D),
            p + "self_attn.v_proj.weight": w(KV_HEADS * HEAD_DIM, D),
            p + "self_attn.o_proj.weight": w(D, HEADS * HEAD_DIM),
            p + "mlp.gate_proj.weight": w(FF, D),
            p + "mlp.up_proj.weight": w(FF, D),
            p + "mlp.down_proj.weight": w(D, FF),
        }
    return tensors


def numpy_llama_logits(t: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Hugging Face's Llama forward, in float64 NumPy, straight from its tensors: linear = x @ W.T,
    rotate_half rotary embedding, repeat_kv grouping, causal softmax, SwiGLU, RMSNorm (eps 1e-5)."""

    def rms(x, weight):
        return weight * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5)

    def linear(x, name):
        return x @ t[name].astype(np.float64).T

    def rope(x):  # (batch, heads, seq, head_dim)
        inv = 1.0 / 10000.0 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
        freqs = np.outer(np.arange(x.shape[2]), inv)
        emb = np.concatenate([freqs, freqs], axis=-1)
        half = HEAD_DIM // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * np.cos(emb) + rotated * np.sin(emb)

    batch, seq = ids.shape
    x = t["model.embed_tokens.weight"].astype(np.float64)[ids]
    mask = np.tril(np.ones((seq, seq), bool))
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        h = rms(x, t[p + "input_layernorm.weight"])
        q = linear(h, p + "self_attn.q_proj.weight").reshape(batch, seq, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)
        k = linear(h, p + "self_attn.k_proj.weight").reshape(batch, seq, KV_HEADS, HEAD_DIM).transpose(0, 2, 1, 3)
        v = linear(h, p + "self_attn.v_proj.weight").reshape(batch, seq, KV_HEADS, HEAD_DIM).transpose(0, 2, 1, 3)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, HEADS // KV_HEADS, axis=1), np.repeat(v, HEADS // KV_HEADS, axis=1)
        scores = np.where(mask, q @ k.transpose(0, 1, 3, 2) / np.sqrt(HEAD_DIM), -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, seq, D)
        x = x + linear(context, p + "self_attn.o_proj.weight")
        h = rms(x, t[p + "post_attention_layernorm.weight"])
        gate = linear(h, p + "mlp.gate_proj.weight")
        x = x + linear(gate / (1 + np.exp(-gate)) * linear(h, p + "mlp.up_proj.weight"), p + "mlp.down_proj.weight")
    return linear(rms(x, t["model.norm.weight"]), "lm_head.weight")


def ids(seed=1, batch=2):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, SEQ))


@pytest.mark.parametrize("stacked", [False, True])
def test_a_hugging_face_llama_loads_and_matches_a_numpy_forward(tmp_path, stacked):
    tensors = hf_llama_tensors()
    hf.save_safetensors(tmp_path / "model.safetensors", tensors)
    params = hf.import_hf(tmp_path / "model.safetensors", family="llama", heads=HEADS, stacked=stacked)
    assert params["blocks"]["attn"]["k"]["w"].shape[-2:] == (KV_HEADS, HEAD_DIM) if stacked else True
    tokens = ids()
    ours = np.asarray(nn.llama_forward(jax.tree.map(np.asarray, params), tokens), np.float64)
    theirs = numpy_llama_logits(tensors, tokens)
    assert np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)) < 1e-5
    # And back: the same names, shapes and bytes.
    again = hf.to_hf(params, "llama")
    assert sorted(again) == sorted(tensors)
    for name, value in tensors.items():
        assert again[name].tobytes() == value.tobytes() and again[name].shape == value.shape, name


def test_a_state_exports_the_file_it_was_imported_from_under_dp_x_tp(tmp_path):
    tensors = hf_llama_tensors(seed=2)
    hf.save_safetensors(tmp_path / "in.safetensors", tensors)
    params = hf.import_hf(tmp_path / "in.safetensors", family="llama", heads=HEADS)
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(4, 2)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model", rules=nn.LLAMA_TP_RULES)),
        optimizer=tx.optim.sgd(0.1),
    )
    state = engine.create_state(params)
    assert state.params["blocks"]["0"]["attn"]["k"]["w"].addressable_shards[0].data.shape == (D, 1, HEAD_DIM)
    hf.export_hf(engine, state, tmp_path / "out.safetensors", family="llama")
    assert (tmp_path / "in.safetensors").read_bytes() != b""
    out = hf.load_safetensors(tmp_path / "out.safetensors")
    assert sorted(out) == sorted(tensors)
    for name, value in tensors.items():
        assert out[name].tobytes() == value.tobytes(), name


def hf_gpt2_tensors(seed=3, positions=SEQ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    tensors = {
        "transformer.wte.weight": w(VOCAB, D),
        "transformer.wpe.weight": w(positions, D),
        "transformer.ln_f.weight": 1 + w(D),
        "transformer.ln_f.bias": w(D),
    }
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        tensors |= {
            p + "ln_1.weight": 1 + w(D),
            p + "ln_1.bias": w(D),
            p + "attn.c_attn.weight": w(D, 3 * D),  # Conv1D: (in, out), columns q | k | v
            p + "attn.c_attn.bias": w(3 * D),
            p + "attn.c_proj.weight": w(D, D),
            p + "attn.c_proj.bias": w(D),
            p + "ln_2.weight": 1 + w(D),
            p + "ln_2.bias": w(D),
            p + "mlp.c_fc.weight": w(D, 4 * D),
            p + "mlp.c_fc.bias": w(4 * D),
            p + "mlp.c_proj.weight": w(4 * D, D),
            p + "mlp.c_proj.bias": w(D),
        }
    return tensors


def numpy_gpt2_logits(t: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Hugging Face's GPT-2 forward in float64 NumPy: Conv1D (x @ W + b), gelu_new, tied head."""

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * t[p + "weight"] + t[p + "bias"]

    def conv(x, p):
        return x @ t[p + "weight"].astype(np.float64) + t[p + "bias"]

    def gelu_new(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    batch, seq = ids.shape
    x = t["transformer.wte.weight"].astype(np.float64)[ids] + t["transformer.wpe.weight"][:seq]
    mask = np.tril(np.ones((seq, seq), bool))
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        qkv = conv(ln(x, p + "ln_1."), p + "attn.c_attn.")
        q, k, v = (a.reshape(batch, seq, HEADS, HEAD_DIM).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
        scores = np.where(mask, q @ k.transpose(0, 1, 3, 2) / np.sqrt(HEAD_DIM), -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        x = x + conv((weights @ v).transpose(0, 2, 1, 3).reshape(batch, seq, D), p + "attn.c_proj.")
        x = x + conv(gelu_new(conv(ln(x, p + "ln_2."), p + "mlp.c_fc.")), p + "mlp.c_proj.")
    return ln(x, "transformer.ln_f.") @ t["transformer.wte.weight"].astype(np.float64).T


def test_a_hugging_face_gpt2_loads_and_matches_a_numpy_forward(tmp_path):
    tensors = hf_gpt2_tensors()
    hf.save_safetensors(tmp_path / "gpt2.safetensors", tensors)
    params = hf.import_hf(tmp_path / "gpt2.safetensors", family="gpt2", heads=HEADS)
    tokens = ids()
    ours = np.asarray(nn.gpt_forward(jax.tree.map(np.asarray, params), tokens), np.float64)
    theirs = numpy_gpt2_logits(tensors, tokens)
    assert np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)) < 1e-5
    # Back out: every tensor bit for bit, plus the tied head written out as lm_head.weight.
    again = hf.to_hf(params, "gpt2")
    assert sorted(again) == sorted([*tensors, "lm_head.weight"])
    for name, value in tensors.items():
        assert again[name].tobytes() == value.tobytes(), name
    assert again["lm_head.weight"].tobytes() == tensors["transformer.wte.weight"].tobytes()


def test_missing_extra_and_unknown_tensors_are_named(tmp_path):
    tensors = hf_llama_tensors()
    del tensors["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(TrainingError) as err:
        hf.from_hf(tensors, "llama", heads=HEADS)
    assert err.value.diagnostics[0].code == "TX750" and "model.layers.1.mlp.up_proj.weight" in str(err.value)
    tensors = hf_llama_tensors() | {"model.layers.0.self_attn.q_proj.bias": np.zeros(D, np.float32)}
    with pytest.raises(TrainingError) as err:
        hf.from_hf(tensors, "llama", heads=HEADS)
    assert "q_proj.bias" in str(err.value)
    with pytest.raises(TrainingError) as err:
        hf.from_hf({}, "mistral", heads=HEADS)
    assert "gpt2, llama" in err.value.diagnostics[0].hint
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TrainingError) as err:
        hf.load_safetensors(tmp_path / "bad.safetensors")
    assert err.value.diagnostics[0].code == "TX751"
