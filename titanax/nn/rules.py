"""The shard rules that make :mod:`titanax.nn`'s GPT Megatron-parallel."""

from __future__ import annotations

__all__ = ["GPT_TP_RULES"]

GPT_TP_RULES: dict[str, str | tuple[str | None, ...]] = {
    "**/attn/qkv/w": "column",
    "**/attn/qkv/b": "column",
    "**/attn/out/w": "row",
    "**/mlp/up/w": "column",
    "**/mlp/up/b": "column",
    "**/mlp/down/w": "row",
    "embed/tokens": "row",
    "head/w": "column",
}
"""Rules for ``tx.TP(axis=..., rules=GPT_TP_RULES)``: attention heads and the MLP's hidden
units split Megatron-style, the embedding and the output head split over the
vocabulary; layer norms, position embeddings and row-parallel biases replicated."""
