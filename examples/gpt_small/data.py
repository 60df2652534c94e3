"""Character-level text from the Python standard library's own source files.

Every machine with Python has this text, so the example needs no download.
Characters outside printable ASCII become '?', giving a 96-symbol vocabulary.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

VOCAB = ["\n"] + [chr(c) for c in range(32, 127)]
"""Newline plus the 95 printable ASCII characters."""

_INDEX = {ch: i for i, ch in enumerate(VOCAB)}
_UNKNOWN = _INDEX["?"]


def load_corpus(max_chars: int = 2_000_000) -> np.ndarray:
    """Token ids of the standard library's ``.py`` files, in sorted order, up to ``max_chars``."""
    root = Path(os.__file__).parent
    pieces, total = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        pieces.append(text)
        total += len(text)
        if total >= max_chars:
            break
    text = "".join(pieces)[:max_chars]
    return np.array([_INDEX.get(ch, _UNKNOWN) for ch in text], dtype=np.int32)


def decode(ids) -> str:
    """Text for a sequence of token ids."""
    return "".join(VOCAB[int(i)] for i in ids)


class Batches:
    """Random windows of the corpus: ``{"ids": (batch, seq), "labels": ids shifted by one}``."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0):
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.rng = np.random.default_rng(seed)

    def __next__(self) -> dict[str, np.ndarray]:
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size)
        windows = np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts])
        return {"ids": windows[:, :-1], "labels": windows[:, 1:]}

    def __iter__(self) -> Batches:
        return self
