"""Shard rules: resolution against real parameter trees, precedence, and every error."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import titanax as tx
from titanax.ir import print_ir
from titanax.passes import DEFAULT_PASSES, PassPipeline, ResolveShardings, Target, compile_plan, glob_matches

MESH = tx.MeshSpec(axes=("data", "model"), shape=(2, 4))


def resolve(rules, parameters, *, mesh=MESH, dp="data", tp="model"):
    plan = tx.Plan(data_parallel=tx.DP(axis=dp) if dp else None, tensor_parallel=tx.TP(axis=tp, rules=rules))
    ir = compile_plan(mesh, plan, target=Target(device_count=8))
    return PassPipeline([ResolveShardings(parameters=tuple(parameters))]).run(ir, Target(device_count=8))


def specs(ir):
    return {node.path: node.spec for node in ir.params()}


def error(rules, parameters, **kwargs):
    with pytest.raises(tx.TitanaxError) as info:
        resolve(rules, parameters, **kwargs)
    return info.value


# -- globs and precedence -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*/w", "dense/w", True),
        ("*/w", "blocks/0/w", False),  # * stays within one key
        ("**/w", "blocks/0/w", True),
        ("**/w", "w", True),  # ** may match no key at all
        ("blocks/?/w", "blocks/3/w", True),
        ("blocks/?/w", "blocks/12/w", False),
        ("dense/w", "dense/w", True),
    ],
)
def test_glob_semantics(pattern, path, matches):
    assert glob_matches(pattern, path) is matches


def test_most_specific_rule_wins():
    ir = resolve({"**/w": "column", "attn/*": "row", "attn/w": "replicated"}, [("attn/w", (8, 8)), ("mlp/w", (8, 8))])
    assert specs(ir) == {"attn/w": (None, None), "mlp/w": (None, "model")}
    assert "%rule.tp.2 -lays_out-> %param.attn/w" in print_ir(ir)


def test_any_tp_rule_beats_the_default():
    ir = resolve({"**": "column"}, [("w", (8, 8))])
    assert specs(ir) == {"w": (None, "model")}


def test_roles_and_explicit_specs():
    parameters = [
        ("qkv/w", (16, 4, 3, 8)),
        ("qkv/b", (96,)),
        ("out/w", (4, 8, 16)),
        ("emb", (64, 16)),
        ("x", (8, 8, 8)),
    ]
    ir = resolve({"qkv/*": "column", "out/w": "row", "emb": ("model",), "x": (None, None, "model")}, parameters)
    assert specs(ir) == {
        "qkv/w": (None, "model", None, None),
        "qkv/b": ("model",),
        "out/w": ("model", None, None),
        "emb": ("model", None),
        "x": (None, None, "model"),
    }
    assert {n.path: n.local_shape for n in ir.params()}["qkv/w"] == (16, 1, 3, 8)


# -- every error, with its message --------------------------------------------------------
def test_rule_matching_no_parameter():
    err = error({"**/attn/qkv/w": "column"}, [("blocks/0/mlp/w", (8, 8))])
    assert err.code == "TX221" and "'**/attn/qkv/w' matches no parameter" in str(err)


def test_ambiguous_tie_names_the_path_and_both_patterns():
    err = error({"a/*": "column", "*/w": "row"}, [("a/w", (8, 8))])
    assert err.code == "TX222"
    assert "a/w (8, 8) matches equally specific TP rules ['a/*', '*/w']" in str(err)


def test_equal_layouts_are_not_ambiguous():
    assert specs(resolve({"a/*": "column", "*/w": "column"}, [("a/w", (8, 8))])) == {"a/w": (None, "model")}


def test_indivisible_dimension_names_path_shape_axis_and_size():
    err = error({"w": "column"}, [("w", (8, 6))])
    assert err.code == "TX223"
    assert "parameter w has shape (8, 6); dimension 1 (6) does not split over axis 'model' (size 4)" in str(err)


def test_spec_longer_than_the_rank():
    err = error({"b": (None, "model")}, [("b", (8,))])
    assert err.code == "TX224" and "has 2 entries but parameter b has shape (8,)" in str(err)


def test_row_parallel_vector_and_column_scalar():
    err = error({"b": "row", "s": "column"}, [("b", (8,)), ("s", ())])
    assert [d.code for d in err.diagnostics] == ["TX225", "TX225"]
    assert "row-parallel layer's bias stays replicated" in err.diagnostics[0].message


def test_axis_conflicts_and_bad_specs_are_found_before_any_parameter_is_seen():
    plan = tx.Plan(
        data_parallel=tx.DP(axis="data"),
        tensor_parallel=tx.TP(
            axis="data",
            rules=[("w", ("model", "model")), ("v", ("pipe",)), ("u", "colum"), ("w", "row")],
        ),
    )
    with pytest.raises(tx.TitanaxError) as info:
        compile_plan(MESH, plan, target=Target(device_count=8))
    codes = sorted(d.code for d in info.value.diagnostics)
    assert codes == ["TX201", "TX202", "TX208", "TX209", "TX210", "TX211"]
    text = str(info.value)
    assert "axis 'data' is used by both data parallelism and tensor parallelism" in text
    assert "did you mean 'column'?" in text


def test_engine_reports_rule_errors_when_it_sees_the_parameters():
    import jax.numpy as jnp

    engine = tx.Engine(
        mesh=MESH,
        plan=tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model", rules={"w": "column"})),
        optimizer=tx.optim.sgd(0.1),
    )
    with pytest.raises(tx.PlanError, match="TX223"):
        engine.create_state({"w": jnp.ones((8, 6))})


# -- hypothesis: resolution is deterministic and every spec fits its shape ----------------
keys = st.sampled_from(["attn", "mlp", "w", "b", "0", "1", "qkv"])
paths = st.lists(keys, min_size=1, max_size=3).map("/".join)
shapes = st.lists(st.sampled_from([1, 2, 3, 4, 6, 8, 12]), max_size=4).map(tuple)
pattern_parts = st.one_of(keys, st.just("*"), st.just("**"), st.just("?"))
patterns = st.lists(pattern_parts, min_size=1, max_size=3).map("/".join)
layouts = st.one_of(
    st.sampled_from(["column", "row", "replicated"]),
    st.lists(st.sampled_from([None, "model"]), max_size=4).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(paths, shapes, min_size=1, max_size=6),
    st.dictionaries(patterns, layouts, max_size=4),
)
def test_resolution_is_deterministic_and_specs_fit_or_the_error_names_the_path(parameters, rules):
    parameters = sorted(parameters.items())
    try:
        first = resolve(rules, parameters)
    except tx.TitanaxError as err:
        for diagnostic in err.diagnostics:
            named = [p for p, _ in parameters if p in diagnostic.message] or [
                r for r in rules if repr(r) in diagnostic.message
            ]
            assert named, diagnostic.render()
        with pytest.raises(tx.TitanaxError) as again:
            resolve(rules, parameters)
        assert str(again.value) == str(err)
        return
    assert print_ir(first) == print_ir(resolve(rules, parameters))
    resolved = {node.path: node for node in first.params()}
    assert set(resolved) == {p for p, _ in parameters}
    for path, shape in parameters:
        node = resolved[path]
        assert len(node.spec) == len(shape)
        for size, entry, local in zip(shape, node.spec, node.local_shape, strict=True):
            parts = 4 if entry == "model" else 1
            assert size % parts == 0 and local == size // parts


def test_default_passes_do_not_resolve_without_parameters():
    ir = compile_plan(
        MESH, tx.Plan(tensor_parallel=tx.TP(axis="model", rules={"w": "row"})), target=Target(device_count=8)
    )
    assert not ir.params() and "resolve-shardings" not in DEFAULT_PASSES
