"""Hypothesis properties of the parser and formatter.

1. Plans generated from the grammar's constructs survive ``fmt``: the formatted
   text parses to an identical AST, and formatting it again changes nothing.
2. Random mutations of valid plans (tokens deleted, duplicated or swapped; bytes
   changed) only ever give a valid plan or a located ``TitanaxError``.
"""

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import titanax as tx
from titanax.frontend.language import SourceFile, format_plan, parse, to_plan
from titanax.frontend.language import ast as A
from titanax.loader import LoadedPlan
from titanax.passes import VALIDATION_PASSES, Target

# -- generating ASTs ------------------------------------------------------------
identifier = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
digit_word = st.from_regex(r"[0-9]{1,2}[A-Za-z_][A-Za-z0-9_]{0,4}", fullmatch=True)
# `none` means "unsharded" in a spec and `stage` starts a stage, so neither is a key.
key = identifier.filter(lambda s: s not in ("stage", "none", "None"))
name = st.one_of(identifier, digit_word).filter(lambda s: s not in ("none", "None"))
string = st.text(st.characters(blacklist_characters='"\n\r', blacklist_categories=("Cs",)), max_size=12)
integer = st.integers(-(10**6), 10**6)

decimal = st.tuples(st.integers(-999, 999), st.integers(0, 999)).map(lambda t: f"{t[0]}.{t[1]}")
value = st.one_of(
    integer.map(A.IntValue),
    decimal.map(A.FloatValue),
    name.map(A.NameValue),
    string.map(A.StringValue),
    st.lists(st.one_of(st.none(), identifier, st.tuples(identifier, identifier)), max_size=3)
    .map(tuple)
    .map(A.SpecValue),
)
layer = st.one_of(
    identifier.map(A.LayerRef),
    st.builds(A.LayerRef, identifier, st.integers(0, 99), st.none()),
    st.builds(A.LayerRef, identifier, st.integers(0, 99), st.integers(0, 99)),
)
item = st.one_of(
    st.builds(A.Setting, key, value),
    st.builds(A.RuleItem, string, value),
    st.lists(layer, max_size=3).map(tuple).map(A.StageItem),
)
block = st.lists(item, max_size=4).map(tuple).map(A.Block)
axes = st.lists(identifier.map(A.AxisName), min_size=1, max_size=3).map(tuple)
statement = st.one_of(
    block.map(A.MeshStmt),
    st.builds(A.DataParallelStmt, axes, st.one_of(st.none(), block)),
    st.builds(A.TensorParallelStmt, axes, st.one_of(st.none(), block)),
    st.builds(A.PipelineStmt, axes, block),
    block.map(A.PrecisionStmt),
    string.map(A.ModelStmt),
)
plan_files = st.lists(statement, max_size=5).map(tuple).map(A.PlanFile)
comment = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=10).map(
    lambda text: "#" + text
)


def unparse(tree: A.PlanFile) -> str:
    """Write an AST as compact, non-canonical text: everything on few lines."""
    from titanax.frontend.language.formatter import _head, _item

    parts = []
    for stmt in tree.statements:
        text = _head(stmt)
        block_ = getattr(stmt, "block", None)
        if block_ is not None:
            text += " {" + ", ".join(_item(i) for i in block_.items) + "}"
        parts.append(text)
    return " ".join(parts)


@settings(max_examples=150, deadline=None)
@given(plan_files)
def test_formatted_plans_parse_to_the_same_ast(tree):
    text = unparse(tree)
    parsed = parse(SourceFile("gen.tx", text))
    assert parsed.ast == tree
    formatted = format_plan(parsed)
    reparsed = parse(SourceFile("gen.tx", formatted))
    assert reparsed.ast == tree
    assert format_plan(reparsed) == formatted


@settings(max_examples=100, deadline=None)
@given(plan_files, st.lists(st.tuples(st.integers(0, 10**6), comment), max_size=4))
def test_fmt_keeps_every_comment_and_is_idempotent(tree, comments):
    formatted = format_plan(parse(SourceFile("gen.tx", format_plan(parse(SourceFile("gen.tx", unparse(tree)))))))
    lines = formatted.split("\n")
    for position, text in comments:
        index = position % len(lines)
        lines[index] = lines[index] + "  " + text if lines[index].strip() else text
    commented = "\n".join(lines)
    parsed = parse(SourceFile("gen.tx", commented))
    once = format_plan(parsed)
    assert parse(SourceFile("gen.tx", once)).ast == tree
    assert format_plan(parse(SourceFile("gen.tx", once))) == once
    kept = [c.text for c in parse(SourceFile("gen.tx", once)).comments]
    assert sorted(kept) == sorted(c.text for c in parsed.comments)


# -- mutating valid plans ---------------------------------------------------------
PLANS = Path(__file__).parent.parent / "examples" / "plans"
SEEDS = [path.read_text() for path in sorted(PLANS.glob("*.tx"))]
TOKEN = re.compile(r'\s+|"[^"\n]*"|#[^\n]*|\w+|.', re.S)


def load(data: bytes) -> None:
    """What ``titanax check`` does with a file's bytes, minus the printing."""
    parsed = parse(SourceFile.from_bytes("fuzz.tx", data))
    contents = to_plan(parsed)
    loaded = LoadedPlan(contents.mesh, contents.plan, contents.model, contents.model_location, parsed)
    loaded.compile(target=Target(device_count=8), passes=VALIDATION_PASSES)


def assert_only_located_errors(data: bytes) -> None:
    try:
        load(data)
    except tx.TitanaxError as err:
        for diagnostic in err.diagnostics:
            assert diagnostic.location is not None, diagnostic.render()
            assert diagnostic.location.path == "fuzz.tx"
            assert diagnostic.hint


mutation = st.tuples(
    st.sampled_from(["delete", "duplicate", "swap", "byte"]),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 255),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_plans_give_a_plan_or_a_located_error(seed, mutations):
    tokens = TOKEN.findall(seed)
    data = None
    for kind, i, j, byte in mutations:
        i, j = i % len(tokens), j % len(tokens)
        if kind == "delete" and len(tokens) > 1:
            del tokens[i]
        elif kind == "duplicate":
            tokens.insert(i, tokens[i])
        elif kind == "swap":
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif kind == "byte":
            raw = bytearray("".join(tokens).encode())
            raw[i % len(raw)] = byte
            data = bytes(raw)
            break
    assert_only_located_errors(data if data is not None else "".join(tokens).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_plan_or_a_located_error(data):
    assert_only_located_errors(data)
