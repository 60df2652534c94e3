"""Against Hugging Face ``transformers`` itself (the optional ``transformers`` extra, slow): a tiny random
Llama and GPT-2 built locally from a configuration (nothing downloaded) give the logits Titanax computes
from the same weights, within 1e-4, both ways: their checkpoint into Titanax, and Titanax's into them."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from titanax import nn
from titanax.nn import hf

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, D, HEADS, KV_HEADS, FF, LAYERS, SEQ = 40, 32, 4, 2, 48, 2, 12


def ids(seed=1):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(2, SEQ))


def their_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.numpy().astype(np.float64)


def close(ours, theirs) -> float:
    ours = np.asarray(ours, np.float64)
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def llama_config():
    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=FF,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )


def test_a_transformers_llama_checkpoint_loads_into_titanax(tmp_path):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(llama_config()).eval()
    with torch.no_grad():  # norms away from 1, so a misplaced norm weight would show
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(torch.randn_like(param) * 0.2)
    model.save_pretrained(tmp_path, safe_serialization=True)
    params = hf.import_hf(tmp_path / "model.safetensors", family="llama", heads=HEADS)
    tokens = ids()
    assert close(nn.llama_forward(jax.tree.map(np.asarray, params), tokens), their_logits(model, tokens)) < 1e-4


def test_a_titanax_llama_exports_a_checkpoint_transformers_loads(tmp_path):
    params = nn.init_llama(
        jax.random.PRNGKey(3), vocab=VOCAB, d_model=D, heads=HEADS, kv_heads=KV_HEADS, d_ff=FF, layers=LAYERS
    )
    params = jax.tree.map(lambda x: np.asarray(x) * 5, params)  # larger weights: logits far from uniform
    hf.save_safetensors(tmp_path / "model.safetensors", hf.to_hf(params, "llama"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(llama_config().to_dict()))
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    tokens = ids(2)
    assert close(nn.llama_forward(params, tokens), their_logits(model, tokens)) < 1e-4


def gpt2_config():
    return transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQ,
        n_embd=D,
        n_layer=LAYERS,
        n_head=HEADS,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
    )


def test_gpt2_both_ways(tmp_path):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(gpt2_config()).eval()
    model.save_pretrained(tmp_path / "theirs", safe_serialization=True)
    params = hf.import_hf(tmp_path / "theirs" / "model.safetensors", family="gpt2", heads=HEADS)
    tokens = ids(3)
    assert close(nn.gpt_forward(jax.tree.map(np.asarray, params), tokens), their_logits(model, tokens)) < 1e-4
    # Titanax's weights (the head tied to the embedding, as GPT-2 has it) into transformers.
    ours = nn.init_gpt(
        jax.random.PRNGKey(4), vocab=VOCAB, seq_len=SEQ, d_model=D, heads=HEADS, d_ff=4 * D, layers=LAYERS
    )
    ours = jax.tree.map(lambda x: np.asarray(x) * 5, ours)
    ours["head"]["w"] = ours["embed"]["tokens"].T
    (tmp_path / "ours").mkdir()
    hf.save_safetensors(tmp_path / "ours" / "model.safetensors", hf.to_hf(ours, "gpt2"), metadata={"format": "pt"})
    (tmp_path / "ours" / "config.json").write_text(json.dumps(gpt2_config().to_dict()))
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    assert close(nn.gpt_forward(ours, tokens), their_logits(loaded, tokens)) < 1e-4
