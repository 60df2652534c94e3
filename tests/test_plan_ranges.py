"""Every number a plan declares is range-checked, as a located TX error, before it costs work:
mesh sizes and device counts up to 2**20, microbatches and accumulate_steps up to 2**16, a growth
interval within int32, a finite balance tolerance, and no integer literal of more than 1000 digits.
Also: ``titanax fmt`` is idempotent wherever comments sit."""

import math
import re

import pytest

import titanax as tx
from titanax.frontend.bounds import MAX_DEVICES, MAX_MICROBATCHES, shown
from titanax.frontend.language import SourceFile, format_plan, parse
from titanax.passes import compile_plan

BIG = "1" + "0" * 100  # 10**100 as a .tx file writes it

PIPE = "mesh { pipe = 2 }\npipeline over pipe { microbatches = %s }\n"


def codes(text):
    with pytest.raises(tx.TitanaxError) as caught:
        tx.load_plan(text=text, name="plan.tx")
    return [(d.code, d.message, d.location.line if d.location else None) for d in caught.value.diagnostics]


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        (
            f"mesh {{ devices = {BIG}, data = 8 }}",
            "TX104",
            "devices = a 101-digit integer; the device count must be at most 2**20",
        ),
        (f"mesh {{ data = {BIG} }}", "TX102", "mesh axis 'data' has size a 101-digit integer; a mesh holds at most"),
        (f"mesh {{ data = {2**20 + 1} }}", "TX102", "has size 1048577; a mesh holds at most 2**20 = 1048576"),
        ("mesh { data = 2048, model = 1024 }", "TX102", "multiply to 2097152 devices"),
        (PIPE % (2**16 + 1), "TX217", "microbatches = 65537; it must be from 1 to 2**16"),
        ("mesh { pipe = 64 }\npipeline over pipe { microbatches = 2048 }", "TX217", "131072 forward steps"),
        ("mesh { data = 2 }\ndata_parallel over data { accumulate_steps = 65537 }", "TX203", "from 1 to 2**16"),
        (
            f"mesh {{ data = 1 }}\nprecision {{ compute = float16, loss_scale_growth_interval = {BIG} }}",
            "TX204",
            "loss_scale_growth_interval=a 101-digit integer) must be an integer from 1 to 2**31 - 1",
        ),
        (
            "mesh { data = 1 }\nprecision { compute = float16, loss_scale_growth_interval = 2147483648 }",
            "TX204",
            "2147483648",
        ),
        (PIPE % ("4, balance_tolerance = 1" + "0" * 400), "TX204", "balance_tolerance=a 401-digit integer"),
        (PIPE % ("4, balance_tolerance = 1" + "0" * 400 + ".5"), "TX204", "balance_tolerance=inf) must be a finite"),
        (f"mesh {{ data = {'9' * 100_000} }}", "TX614", "an integer of 100000 digits"),
        (f"mesh {{ pipe = 2 }}\npipeline over pipe {{ microbatches = 4, stage [b[0:{'9' * 5000}]] }}", "TX614", ""),
    ],
)
def test_out_of_range_numbers_are_located_tx_errors(text, code, message):
    found = codes(text)
    assert [c for c, _, _ in found] == [code], found
    assert message in found[0][1] and found[0][2] is not None


@pytest.mark.parametrize(
    "text",
    [
        f"mesh {{ data = {2**20} }}",
        "mesh { data = 1024, model = 1024 }",
        f"mesh {{ devices = {2**20}, data = auto }}",
        "mesh { pipe = 2 }\npipeline over pipe { microbatches = 32768, balance_tolerance = 1000000 }",
        "mesh { data = 1 }\ndata_parallel over data { accumulate_steps = 65536 }",
        "mesh { data = 1 }\nprecision { compute = float16, loss_scale_growth_interval = 2147483647 }",
    ],
)
def test_the_limits_themselves_are_accepted(text):
    assert tx.load_plan(text=text, validate=False) is not None
    loaded = tx.load_plan(text=text, validate=False)
    ir = loaded.compile(passes=["check-mesh", "check-parallel-axes", "check-pipeline"])
    assert ir is not None


def test_python_objects_refuse_the_same_values():
    for build, code in [
        (lambda: tx.MeshSpec(axes=("data",), devices=10**100), "TX104"),
        (lambda: tx.MeshSpec(axes=("data",), devices=0), "TX104"),
        (lambda: tx.DP(axis="data", accumulate_steps=MAX_MICROBATCHES + 1), "TX203"),
        (lambda: tx.PP(axis="pipe", microbatches=4, balance_tolerance=math.nan), "TX204"),
        (lambda: tx.PP(axis="pipe", microbatches=4, balance_tolerance=math.inf), "TX204"),
        (lambda: tx.PP(axis="pipe", microbatches=4, balance_tolerance=10**400), "TX204"),
        (lambda: tx.Precision(compute="float16", loss_scale_growth_interval=10**100), "TX204"),
        (lambda: tx.Precision(compute="float16", loss_scale_growth_interval=10**5000), "TX204"),
    ]:
        with pytest.raises(tx.TitanaxError) as caught:
            build()
        assert caught.value.diagnostics[0].code == code
    mesh = tx.MeshSpec(axes=("data",), shape=(10**100,))
    with pytest.raises(tx.MeshError) as caught:
        compile_plan(mesh, tx.Plan(data_parallel=tx.DP(axis="data")))
    assert [d.code for d in caught.value.diagnostics] == ["TX102"]
    assert MAX_DEVICES == 2**20 and shown(10**5000).startswith("an integer of about 500")


# -- titanax fmt: comments anywhere --------------------------------------------------------------------------------
PLAN = """mesh { devices = 8, data = 2, model = 2, pipe = 2 }
data_parallel over data { accumulate_steps = 2 }
tensor_parallel over model { sequence_parallel = true, "*/w" = column, "e/t" = (model, none) }
pipeline over pipe { microbatches = 4, schedule = gpipe, stage [embed, block[0:2]], stage [block[2:4], head] }
precision {}
model "a.b:c"
"""


def placements():
    """PLAN with a comment put in every gap between tokens, after code or on a line of its own."""
    gaps = [m.start() for m in re.finditer(r"(?<=\S)(?=[ ,\]\[)(}{=\n])|(?<=[ ,\[({=])(?=\S)", PLAN)]
    for gap in [0, *gaps, len(PLAN)]:
        for comment in (" # c\n", "\n# c\n", "\n\n# c\n\n"):
            yield PLAN[:gap] + comment + PLAN[gap:]


def formatted(text):
    return format_plan(parse(SourceFile(path="plan.tx", text=text)))


def test_fmt_is_idempotent_and_keeps_every_comment_wherever_it_sits():
    checked = 0
    for text in placements():
        once = formatted(text)
        assert formatted(once) == once, text
        assert once.count("# c") == 1, text
        assert parse(SourceFile(path="a.tx", text=once)).ast == parse(SourceFile(path="b.tx", text=text)).ast
        checked += 1
    assert checked > 400


def test_a_comment_between_the_header_and_a_split_first_item_stays_inside_the_block():
    text = "mesh { devices\n# how many\n= 8, data = 8 }\n"
    expected = "mesh {\n  # how many\n  devices = 8\n  data = 8\n}\n"
    assert formatted(text) == expected
    assert formatted(expected) == expected  # it used to move above `mesh {` on the second run
