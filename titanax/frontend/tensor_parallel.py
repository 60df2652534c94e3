"""``TP``: Megatron-style tensor parallelism, as rules from parameter paths to layouts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from titanax.errors import Location, PlanError
from titanax.frontend.axes import axes_tuple

__all__ = ["ROLES", "Rule", "SpecEntry", "TP", "WEIGHT_LAYOUTS"]

ROLES = ("column", "row", "replicated")
"""Named layouts a rule may give instead of an explicit partition spec."""

WEIGHT_LAYOUTS = ("in_out", "out_in")
"""How the model stores a weight matrix: ``(in, out)`` (Flax, Haiku, ``titanax.nn``) or ``(out, in)``
(Equinox, PyTorch); ``column`` and ``row`` rules split the right dimension for either."""

SpecEntry = str | tuple[str, ...] | None
"""One dimension of a partition spec: unsharded, one axis, or several axes (outermost first)."""


def _spec_or_role(value: object, pattern: str) -> str | tuple[SpecEntry, ...]:
    if isinstance(value, str) and value != "spec":  # "spec" marks explicit specs in the IR
        return value
    if isinstance(value, (tuple, list)):
        entries: list[SpecEntry] = []
        for entry in value:
            if entry is None or isinstance(entry, str):
                entries.append(entry)
            elif isinstance(entry, (tuple, list)) and entry and all(isinstance(a, str) for a in entry):
                entries.append(tuple(entry))
            else:
                break
        else:
            return tuple(entries)
    raise PlanError.single(
        "TX204",
        f"TP rule {pattern!r} maps to {value!r}, which is neither a role nor a partition spec",
        f'use one of {ROLES} or a partition spec: (None, "model") in Python, (none, model) in a .tx file',
    )


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One tensor-parallel rule: parameters whose path matches ``pattern`` get ``layout``.

    Example::

        tx.Rule(pattern="*/attn/qkv/w", layout="column")
        tx.Rule(pattern="*/mlp/up/w", layout=(None, "model"))
    """

    pattern: str
    """Glob over ``/``-joined parameter key paths (``*`` matches within one key, ``**`` across keys)."""
    layout: str | tuple[SpecEntry, ...]
    """A role from :data:`ROLES` or an explicit partition spec, one entry per dimension."""
    location: Location | None = field(default=None, compare=False, repr=False)
    """Where the rule was written, when it came from a ``.tx`` file."""

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise PlanError.single(
                "TX204", f"a TP rule pattern must be a non-empty string, got {self.pattern!r}", 'write "*/attn/qkv/w"'
            )
        object.__setattr__(self, "layout", _spec_or_role(self.layout, self.pattern))


def _rules_tuple(rules: object) -> tuple[Rule, ...]:
    if isinstance(rules, Mapping):
        return tuple(Rule(pattern=pattern, layout=layout) for pattern, layout in rules.items())
    if isinstance(rules, Sequence) and not isinstance(rules, str):
        out = []
        for item in rules:
            if isinstance(item, Rule):
                out.append(item)
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                out.append(Rule(pattern=item[0], layout=item[1]))
            else:
                break
        else:
            return tuple(out)
    raise PlanError.single(
        "TX204",
        f"TP(rules=...) must be a dict from glob to layout or a sequence of tx.Rule, got {rules!r}",
        'write rules={"*/attn/qkv/w": "column", "*/attn/out/w": "row"}',
    )


@dataclass(frozen=True, kw_only=True)
class TP:
    """Tensor parallelism: split matching parameters over ``axis`` and communicate explicitly.

    Example::

        tx.TP(axis="model", rules={"*/attn/qkv/w": "column", "*/attn/out/w": "row"})
    """

    axis: str | tuple[str, ...]
    """Mesh axis (or axes) the tensor-parallel shards live on."""
    rules: Mapping[str, object] | Sequence[Rule] = ()
    """Glob -> role or partition spec; kept in order, so a repeated pattern is reported, not lost."""
    sequence_parallel: bool = False
    """Shard activations along the sequence around norms and dropout (reduce-scatter and
    all-gather instead of one all-reduce)."""
    weight_layout: str = "in_out"
    """How the model stores its weight matrices: ``in_out`` (input dimension first) or ``out_in``
    (Equinox's and PyTorch's ``(out, in)``); see :data:`WEIGHT_LAYOUTS`."""
    location: Location | None = field(default=None, compare=False, repr=False)
    """Where the dimension was declared, when it came from a ``.tx`` file."""

    def __post_init__(self) -> None:
        axes_tuple(self.axis, "TP(axis=...)")
        object.__setattr__(self, "rules", _rules_tuple(self.rules))
        if not isinstance(self.sequence_parallel, bool):
            raise PlanError.single(
                "TX204",
                f"TP(sequence_parallel={self.sequence_parallel!r}) must be True or False",
                "write sequence_parallel=True",
            )
        if self.weight_layout not in WEIGHT_LAYOUTS:
            raise PlanError.single(
                "TX204",
                f"TP(weight_layout={self.weight_layout!r}) must be one of {WEIGHT_LAYOUTS}",
                'write weight_layout="out_in" for weights stored (out, in), as Equinox and PyTorch store them',
            )

    @property
    def axes(self) -> tuple[str, ...]:
        """The TP axes as a tuple, even when one name was given."""
        return axes_tuple(self.axis, "TP(axis=...)")
