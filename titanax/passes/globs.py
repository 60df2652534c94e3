"""Parameter-path globs shared by the tensor-parallel and FSDP rules.

``*`` matches within one ``/``-separated key, ``**`` across any number of keys,
``?`` one character. A rule's specificity orders matches: more literal
characters first, then fewer wildcards.
"""

from __future__ import annotations

import functools
import re

__all__ = ["glob_matches", "glob_regex", "rule_specificity"]


@functools.cache
def glob_regex(pattern: str) -> re.Pattern[str]:
    """The compiled regular expression of the glob ``pattern`` (cached)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def glob_matches(pattern: str, path: str) -> bool:
    """Whether the glob ``pattern`` matches the whole ``/``-joined ``path``."""
    return glob_regex(pattern).fullmatch(path) is not None


def rule_specificity(pattern: str) -> tuple[int, int]:
    """Sort key of a pattern: more literal characters first, then fewer wildcards."""
    wildcards = len(re.findall(r"\*\*|\*|\?", pattern))
    literals = len(re.sub(r"[*?]", "", pattern))
    return (literals, -wildcards)
