"""The largest values a plan may declare, and how to show a huge number in a message.

Every count a plan declares costs work in proportion to it (devices in a mesh, microbatches in a schedule
table), so each has a ceiling far above any real run but low enough that checking and compiling a plan
stays fast, and that the value fits the integer type the runtime stores it in.
"""

from __future__ import annotations

__all__ = [
    "MAX_BALANCE_TOLERANCE",
    "MAX_DEVICES",
    "MAX_GROWTH_INTERVAL",
    "MAX_LITERAL_DIGITS",
    "MAX_MICROBATCHES",
    "shown",
]

MAX_DEVICES = 2**20
"""Most devices a mesh may hold (1048576): each axis size, and their product."""
MAX_MICROBATCHES = 2**16
"""Most pipeline microbatches, and most data-parallel ``accumulate_steps`` (65536)."""
MAX_GROWTH_INTERVAL = 2**31 - 1
"""Largest ``loss_scale_growth_interval``: the step counter it is compared with is an int32."""
MAX_BALANCE_TOLERANCE = 1e6
"""Largest pipeline ``balance_tolerance`` (a ratio of stage costs; 1e6 already accepts any split)."""
MAX_LITERAL_DIGITS = 1000
"""Most digits in an integer written in a ``.tx`` file; every setting's ceiling has far fewer."""

_EXACT = 10**15


def shown(value: object) -> str:
    """``value`` as a message shows it: a huge integer as its digit count, never as thousands of digits.

    Python refuses to print an integer of more than 4300 digits, so a bare ``f"{value}"`` would fail.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _EXACT:
        sign = "negative " if value < 0 else ""
        if value.bit_length() < 10_000:
            return f"a {sign}{len(str(abs(value)))}-digit integer"
        return f"{'a negative' if value < 0 else 'an'} integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return repr(value)
