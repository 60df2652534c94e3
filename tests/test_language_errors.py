"""Every error a ``.tx`` file can produce: its code, line, column and message."""

import pytest

import titanax as tx
from titanax.frontend.language import SourceFile
from titanax.loader import read_source

MESH = "mesh { data = 2, model = 2, pipe = 2 }\n"

CASES = [
    # code, source, line, column, message fragment
    ("TX101", "mesh { data = 2, data = 4 }", 1, 18, "mesh axis 'data' appears more than once"),
    ("TX102", "mesh { data = 0 }", 1, 8, "has size 0"),
    ("TX103", "mesh { devices = 8, data = 3, model = 2 }", 1, 1, "multiply to 6 but there are 8 devices"),
    ("TX104", "mesh { devices = 0, data = 2 }", 1, 18, "device count must be positive"),
    ("TX106", "mesh { data = auto, model = auto }", 1, 1, "at most one size can be inferred"),
    ("TX108", "mesh { 1f1b = 2 }", 1, 8, "'1f1b' is not an identifier"),
    ("TX108", "mesh { devices = 8 }", 1, 1, "the mesh declares no axis"),
    ("TX201", MESH + "data_parallel over dta", 2, 1, "data parallelism uses axis 'dta'"),
    ("TX202", MESH + "data_parallel over data\ntensor_parallel over data", 3, 1, "axis 'data' is used by both"),
    ("TX203", MESH + "data_parallel over data {\n  accumulate_steps = 0\n}", 3, 3, "accumulate_steps = 0"),
    ("TX205", MESH + "data_parallel over (data, data)", 2, 1, "lists axis ['data'] more than once"),
    ("TX208", MESH + 'tensor_parallel over model { "*/w" = colum }', 2, 30, "unknown role 'colum'"),
    (
        "TX209",
        MESH + 'tensor_parallel over model {\n  "*/w" = row\n  "*/w" = column\n}',
        4,
        3,
        "given twice (first at line 3)",
    ),
    (
        "TX210",
        MESH + 'tensor_parallel over model { "*/w" = (model, model) }',
        2,
        30,
        "uses axis ['model'] more than once",
    ),
    (
        "TX211",
        MESH + 'tensor_parallel over model { "*/w" = (data, none) }',
        2,
        30,
        "'data', which is not a tensor-parallel axis",
    ),
    (
        "TX201",
        MESH + 'tensor_parallel over model { "*/w" = (modle, none) }',
        2,
        30,
        "uses axis 'modle', which is not in the mesh",
    ),
    (
        "TX212",
        MESH + "pipeline over pipe { microbatches = 4 stage [a] stage [b] stage [c] }",
        2,
        1,
        "3 stages but axis 'pipe' has size 2",
    ),
    ("TX213", MESH + "pipeline over pipe { microbatches = 1 }", 2, 1, "1 microbatches, 2 stages"),
    ("TX214", MESH + "pipeline over pipe { microbatches = 2 stage [a] stage [] }", 2, 49, "stage 1 has no layers"),
    (
        "TX215",
        MESH + "pipeline over pipe { microbatches = 2 stage [b[0:4]] stage [b[3:8]] }",
        2,
        54,
        "overlaps 'b[0:4]' also in stage 0",
    ),
    (
        "TX216",
        MESH + "pipeline over pipe { schedule = pipedream microbatches = 2 }",
        2,
        1,
        "unknown pipeline schedule 'pipedream'",
    ),
    ("TX217", MESH + "pipeline over pipe { schedule = gpipe microbatches = 0 }", 2, 1, "microbatches = 0"),
    (
        "TX218",
        MESH + "pipeline over pipe { microbatches = 2 stage [b[4:2]] stage [c] }",
        2,
        39,
        "'b[4:2]', which is not NAME",
    ),
    ("TX219", MESH + "precision { compute = bf16 }", 2, 1, "'bf16' is not a supported floating dtype"),
    ("TX601", "mesh { data 2 }", 1, 13, "unexpected integer '2'"),
    ("TX601", "mesh { data = 2 }\ndata_paralel over data", 2, 1, "unexpected name 'data_paralel'"),
    ("TX602", "mesh { data = 2 } @", 1, 19, "unexpected character '@'"),
    ("TX602", 'mesh { data = 2 }\nmodel "a.b:c', 2, 7, "unterminated string"),
    ("TX603", "mesh { data = 2", 1, 16, "ends in the middle of a statement"),
    ("TX606", "mesh { data = 2 }\nmesh { data = 2 }", 2, 1, "a second 'mesh' statement (the first is at line 1)"),
    ("TX607", "data_parallel over data", 1, 1, "the plan has no mesh"),
    ("TX607", "", 1, 1, "the plan has no mesh"),
    ("TX608", MESH + "data_parallel over data { acumulate_steps = 2 }", 2, 27, "unknown setting 'acumulate_steps'"),
    (
        "TX609",
        MESH + "data_parallel over data { accumulate_steps = many }",
        2,
        46,
        "'accumulate_steps' must be an integer",
    ),
    ("TX609", "mesh { data = big }", 1, 15, "must have an integer size or auto"),
    (
        "TX610",
        MESH + "pipeline over pipe { microbatches = 2 microbatches = 4 }",
        2,
        39,
        "'microbatches' is given twice",
    ),
    (
        "TX611",
        MESH + 'data_parallel over data { "*/w" = column }',
        2,
        27,
        "a sharding rule ('*/w' = ...) cannot appear in a data_parallel block",
    ),
    ("TX612", MESH + 'model "my model"', 2, 1, "'my model' is not a Python entry point"),
    ("TX613", MESH + "pipeline over pipe { schedule = gpipe }", 2, 1, "needs a microbatches setting"),
]


@pytest.mark.parametrize(("code", "source", "line", "column", "message"), CASES, ids=[c[0] for c in CASES])
def test_error_is_located(code, source, line, column, message):
    with pytest.raises(tx.TitanaxError) as info:
        tx.load_plan(text=source, name="plan.tx")
    matching = [d for d in info.value.diagnostics if d.code == code]
    assert matching, f"expected {code}, got {[d.render() for d in info.value.diagnostics]}"
    diagnostic = matching[0]
    assert (diagnostic.location.path, diagnostic.location.line, diagnostic.location.column) == ("plan.tx", line, column)
    assert message in diagnostic.message
    assert diagnostic.hint, "every error says how to fix it"
    rendered = str(info.value)
    assert f"plan.tx:{line}:{column}: error[{code}]: " in rendered
    assert "^" in rendered, "the source line is shown with a caret under the span"


def test_inferred_size_without_a_device_count_is_reported_when_compiling():
    loaded = tx.load_plan(text="mesh { data = auto }", name="plan.tx")  # fine until a size is needed
    with pytest.raises(tx.MeshError) as info:
        loaded.compile()
    assert info.value.code == "TX107" and str(info.value.diagnostics[0].location) == "plan.tx:1:8"


def test_all_errors_of_a_file_come_together():
    source = MESH + "data_parallel over dta\nprecision { compute = bf16 }\npipeline over pipe { microbatches = 1 }"
    with pytest.raises(tx.TitanaxError) as info:
        tx.load_plan(text=source)
    assert sorted(d.code for d in info.value.diagnostics) == ["TX201", "TX213", "TX219"]
    assert type(info.value) is tx.PlanError  # every code is TX2xx


def test_structure_errors_come_together():
    source = "mesh { data = big }\nmesh { data = 2 }\ndata_parallel over data { x = 1 }"
    with pytest.raises(tx.ParseError) as info:
        tx.load_plan(text=source)
    assert sorted(d.code for d in info.value.diagnostics) == ["TX606", "TX608", "TX609"]


def test_unreadable_file(tmp_path):
    with pytest.raises(tx.ParseError, match="TX605"):
        read_source(tmp_path / "missing.tx")
    with pytest.raises(tx.ParseError, match="TX605"):
        read_source(tmp_path)  # a directory


def test_invalid_utf8_is_located():
    with pytest.raises(tx.ParseError) as info:
        SourceFile.from_bytes("plan.tx", b"mesh { data = 2 }\n# caf\xe9\n")
    location = info.value.diagnostics[0].location
    assert info.value.code == "TX604" and (location.line, location.column) == (2, 6)


def test_oversized_file_is_refused(monkeypatch):
    import titanax.frontend.language.source as source

    monkeypatch.setattr(source, "MAX_SOURCE_BYTES", 10)
    with pytest.raises(tx.ParseError, match="TX604"):
        source.SourceFile.from_bytes("plan.tx", b"mesh { data = 8 }")
