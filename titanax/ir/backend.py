"""What a backend does to a collective's payload, so the IR's bytes equal the compiled program's.

XLA:CPU runs every collective on ``bfloat16`` data in ``float32`` (measured on
jax 0.10.2: all-reduce, all-gather, reduce-scatter, collective-permute and the
max/min reductions are each wrapped in converts), which doubles their bytes;
``float16`` and integers travel as they are. GPU and TPU backends move each
type as it is. The IR annotated for a target states the bytes that target moves.
"""

from __future__ import annotations

__all__ = ["DTYPE_BYTES", "dtype_bytes", "wire_dtype", "wire_payload"]

DTYPE_BYTES: dict[str, int] = {
    "bool": 1, "int8": 1, "uint8": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "int16": 2, "uint16": 2, "float16": 2, "bfloat16": 2,
    "int32": 4, "uint32": 4, "float32": 4,
    "int64": 8, "uint64": 8, "float64": 8, "complex64": 8, "complex128": 16,
}  # fmt: skip
"""Bytes per element of each dtype name (numpy's names)."""

_PROMOTED: dict[str, dict[str, str]] = {"cpu": {"bfloat16": "float32"}}
"""Per platform: dtypes that its collectives move as another type."""


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype`` (a numpy dtype name)."""
    return DTYPE_BYTES[dtype]


def wire_dtype(dtype: str, platform: str | None) -> str:
    """The dtype a collective on ``dtype`` data moves on ``platform`` (``None``: unknown, as written)."""
    return _PROMOTED.get(platform or "", {}).get(dtype, dtype)


def wire_payload(payload: tuple[tuple[str, int], ...], platform: str | None) -> tuple[tuple[str, ...], int]:
    """``(dtypes, bytes)`` moved on ``platform`` for a logical payload of ``(dtype, bytes)`` pairs."""
    dtypes, total = set(), 0
    for dtype, size in payload:
        moved = wire_dtype(dtype, platform)
        dtypes.add(moved)
        total += size // dtype_bytes(dtype) * dtype_bytes(moved)
    return tuple(sorted(dtypes)), total
