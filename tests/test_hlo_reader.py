"""The compiled-HLO collective reader: every op and form, the call graph, and mesh axes.

Hand-written snippets pin the text forms XLA prints (including GPU-only async forms); real
programs compiled on the 8 CPU devices pin what XLA:CPU in this JAX version actually prints.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from titanax.lowering.hlo import (
    HloCollective,
    collectives_in_hlo,
    mesh_axes_of,
    permute_shifts,
    shape_bytes,
)

MESH_4x2 = (("data", 4), ("model", 2))


def one(text: str) -> HloCollective:
    (found,) = collectives_in_hlo(text)
    return found


# -- every op, sync ----------------------------------------------------------------------
SYNC_OPS = """HloModule m, entry_computation_layout={(f32[8]{0})->f32[8]{0}}, num_partitions=8

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8]{0} parameter(0)
  %ar = f32[8]{0} all-reduce(%x), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7}}, use_global_device_ids=true, to_apply=%add
  %ag = f32[64]{0} all-gather(%x), channel_id=2, replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
  %rs = f32[1]{0} reduce-scatter(%x), channel_id=3, replica_groups=[1,8]<=[8], dimensions={0}, to_apply=%add
  %cp = f32[8]{0} collective-permute(%x), channel_id=4, source_target_pairs={{0,1},{1,0}}
  %a2a = f32[8]{0} all-to-all(%x), channel_id=5, replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}
  %cb = f32[8]{0} collective-broadcast(%x), channel_id=6, replica_groups={{0,1}}
  %rag = f32[16]{0} ragged-all-to-all(%x, %out, %o1, %s1, %o2, %s2), replica_groups={{0,1}}
  %tok = token[] after-all()
  %send = (f32[8]{0}, u32[], token[]) send(%x, %tok), channel_id=7, frontend_attributes={_xla_send_recv_source_target_pairs="{{0,1},{1,2}}"}
  %send-done = token[] send-done(%send), channel_id=7
  %recv = (s32[4]{0}, u32[], token[]) recv(%tok), channel_id=8, frontend_attributes={_xla_send_recv_source_target_pairs="{{0,1},{1,2}}"}
  %recv-done = (s32[4]{0}, token[]) recv-done(%recv), channel_id=8
  ROOT %r = f32[8]{0} copy(%ar)
}
"""


def test_every_sync_op_is_read_once_with_its_result_bytes_and_dtypes():
    found = collectives_in_hlo(SYNC_OPS)
    assert [(c.op, c.result_bytes, c.dtypes) for c in found] == [
        ("all-reduce", 32, ("f32",)),
        ("all-gather", 256, ("f32",)),
        ("reduce-scatter", 4, ("f32",)),
        ("collective-permute", 32, ("f32",)),
        ("all-to-all", 32, ("f32",)),
        ("collective-broadcast", 32, ("f32",)),
        ("ragged-all-to-all", 64, ("f32",)),
        ("send", 32, ("f32",)),
        ("recv", 16, ("s32",)),
    ]
    assert all(c.entry and c.computation == "main" and c.executions == 1 for c in found)
    assert not any(c.async_ or c.conditional for c in found)
    by_op = {c.op: c for c in found}
    assert by_op["all-gather"].replica_groups == (tuple(range(8)),) and by_op["all-gather"].group_size == 8
    assert by_op["all-to-all"].replica_groups == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert by_op["collective-permute"].source_target_pairs == ((0, 1), (1, 0))
    assert by_op["collective-permute"].group_size is None
    assert by_op["send"].source_target_pairs == by_op["recv"].source_target_pairs == ((0, 1), (1, 2))


# -- async forms -------------------------------------------------------------------------
ASYNC_OPS = """HloModule m

ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8]{0} parameter(0)
  %ars = f32[8]{0} all-reduce-start(f32[8]{0} %x), replica_groups={{0,1}}, to_apply=%add
  %ard = f32[8]{0} all-reduce-done(f32[8]{0} %ars)
  %ars2 = (bf16[4]{0}, f32[2]{0}) all-reduce-start(%y, %z), replica_groups={{0,1}}, to_apply=%add
  %ard2 = (bf16[4]{0}, f32[2]{0}) all-reduce-done(%ars2)
  %ags = (f32[8]{0}, f32[16]{0}) all-gather-start(f32[8]{0} %x), replica_groups={{0,1}}, dimensions={0}
  %agd = f32[16]{0} all-gather-done((f32[8]{0}, f32[16]{0}) %ags)
  %agm = ((f32[8]{0}, bf16[2]{0}), (f32[16]{0}, bf16[4]{0})) all-gather-start(%x, %w), replica_groups={{0,1}}, dimensions={0}
  %agmd = (f32[16]{0}, bf16[4]{0}) all-gather-done(%agm)
  %cps = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(f32[8]{0} %x), source_target_pairs={{0,1},{1,0}}
  %cpd = f32[8]{0} collective-permute-done((f32[8]{0}, f32[8]{0}, u32[], u32[]) %cps)
  %rss = ((f32[8]{0}), f32[4]{0}) reduce-scatter-start(%x), replica_groups={{0,1}}, dimensions={0}, to_apply=%add
  %rsu = ((f32[8]{0}), f32[4]{0}) reduce-scatter-update(%rss)
  %rsd = f32[4]{0} reduce-scatter-done(%rsu)
  %a2as = ((f32[8]{0}), f32[8]{0}) all-to-all-start(%x), replica_groups={{0,1}}, dimensions={0}
  %a2ad = f32[8]{0} all-to-all-done(%a2as)
  %cbs = ((f32[8]{0}), f32[8]{0}) collective-broadcast-start(%x), replica_groups={{0,1}}
  %cbd = f32[8]{0} collective-broadcast-done(%cbs)
  %ras = ((f32[8]{0}, f32[32]{0}, s64[2]{0}, s64[2]{0}, s64[2]{0}, s64[2]{0}), f32[32]{0}) ragged-all-to-all-start(%x, %o, %a, %b, %c, %d), replica_groups={{0,1}}
  ROOT %rad = f32[32]{0} ragged-all-to-all-done(%ras)
}
"""


def test_async_start_done_pairs_count_once_with_the_result_not_the_operand():
    found = collectives_in_hlo(ASYNC_OPS)
    assert [(c.op, c.result_bytes, c.dtypes) for c in found] == [
        ("all-reduce", 32, ("f32",)),
        ("all-reduce", 16, ("bf16", "f32")),  # all-reduce-start returns its (tuple) result
        ("all-gather", 64, ("f32",)),
        ("all-gather", 72, ("f32", "bf16")),  # (operands, results): the results tuple
        ("collective-permute", 32, ("f32",)),
        ("reduce-scatter", 16, ("f32",)),
        ("all-to-all", 32, ("f32",)),
        ("collective-broadcast", 32, ("f32",)),
        ("ragged-all-to-all", 128, ("f32",)),
    ]
    assert all(c.async_ and c.entry and c.executions == 1 for c in found)
    assert found[4].source_target_pairs == ((0, 1), (1, 0))


def test_generic_async_start_counts_the_wrapped_collective_once_at_the_start():
    text = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%async_wrapped (p: f32[8]) -> f32[4] {
  %p = f32[8]{0} parameter(0)
  ROOT %rs = f32[4]{0} reduce-scatter(f32[8]{0} %p), replica_groups={{0,1}}, dimensions={0}, to_apply=%add
}

ENTRY %main (x: f32[8]) -> f32[4] {
  %x = f32[8]{0} parameter(0)
  %start = ((f32[8]{0}), f32[4]{0}, u32[]) async-start(f32[8]{0} %x), calls=%async_wrapped
  %update = ((f32[8]{0}), f32[4]{0}, u32[]) async-update(%start), calls=%async_wrapped
  ROOT %done = f32[4]{0} async-done(%update), calls=%async_wrapped
}
"""
    found = one(text)
    assert (found.op, found.result_bytes, found.dtypes, found.async_) == ("reduce-scatter", 16, ("f32",), True)
    assert (found.computation, found.entry, found.executions, found.group_size) == ("main", True, 1, 2)


def test_shapes_with_tiled_layouts_and_wrapped_lines_are_read():
    text = """ENTRY %main {
  %ags = (f32[8,128]{1,0:T(8,128)}, f32[16,128]{1,0:T(8,128)S(1)}) all-gather-start(%x),
      replica_groups={{0,1}}, dimensions={0}
  %agd = f32[16,128]{1,0} all-gather-done(%ags)
  %ar = f32[<=4]{0} all-reduce(%y), replica_groups={}, metadata={op_name="body=%fake calls=%fake"}
}"""
    ag, ar = collectives_in_hlo(text)
    assert (ag.result_bytes, ag.replica_groups, ag.async_) == (16 * 128 * 4, ((0, 1),), True)
    assert (ar.result_bytes, ar.replica_groups, ar.group_size) == (16, None, None)
    assert shape_bytes("(f32[3,2], s32[], pred[5])") == 24 + 4 + 5


# -- replica groups ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ("{{0,1},{2,3}}", ((0, 1), (2, 3))),
        ("{{0},{1},{2}}", ((0,), (1,), (2,))),
        ("[4,2]<=[8]", ((0, 1), (2, 3), (4, 5), (6, 7))),
        ("[1,8]<=[8]", ((0, 1, 2, 3, 4, 5, 6, 7),)),
        ("[2,4]<=[4,2]T(1,0)", ((0, 2, 4, 6), (1, 3, 5, 7))),
        ("[4,2]<=[2,4]T(1,0)", ((0, 4), (1, 5), (2, 6), (3, 7))),
        # iota(8) as [2,2,2], a[i,j,k] = 4i+2j+k, read in (i,k,j) order.
        ("[2,4]<=[2,2,2]T(0,2,1)", ((0, 2, 1, 3), (4, 6, 5, 7))),
    ],
)
def test_replica_groups_explicit_and_iota(groups, expected):
    found = one(f"ENTRY %main {{\n  %ar = f32[4]{{0}} all-reduce(%x), replica_groups={groups}, to_apply=%add\n}}")
    assert found.replica_groups == expected
    assert found.group_size == len(expected[0])


# -- the call graph ----------------------------------------------------------------------
LOOPS = """HloModule m

%inner_body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %ar.inner = f32[4]{0} all-reduce(%g), replica_groups={{0,1}}, to_apply=%add
}

%inner_cond (p: (s32[], f32[4])) -> pred[] {
  %p = (s32[], f32[4]{0}) parameter(0)
}

%outer_body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %w = (s32[], f32[4]{0}) while(%t), condition=%inner_cond, body=%inner_body, backend_config={"known_trip_count":{"n":"3"}}
  %ag.outer = f32[8]{0} all-gather(%g), replica_groups={{0,1}}, dimensions={0}
}

%outer_cond (p: (s32[], f32[4])) -> pred[] {
  %p = (s32[], f32[4]{0}) parameter(0)
}

%dyn_body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %cp.dyn = f32[4]{0} collective-permute(%g), source_target_pairs={{0,1},{1,0}}
  %w2 = (s32[], f32[4]{0}) while(%t), condition=%inner_cond, body=%inner_body, backend_config={"known_trip_count":{"n":"3"}}
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]{0}) while(%t), condition=%outer_cond, body=%outer_body, metadata={op_name="jit(f)/while"}, backend_config={"known_induction_variable":{"tuple_index":"0"},"known_trip_count":{"n":"4"}}
  %d = (s32[], f32[4]{0}) while(%t), condition=%outer_cond, body=%dyn_body
}
"""


def test_nested_loops_multiply_trip_counts_and_unknown_counts_give_none():
    found = {c.computation: c for c in collectives_in_hlo(LOOPS)}
    assert found["outer_body"].executions == 4
    assert not found["outer_body"].entry
    # inner_body runs 3 x 4 times via the outer loop, and an unknown number via dyn_body.
    assert found["inner_body"].executions is None
    assert found["dyn_body"].executions is None


def test_nested_known_loops_give_the_product():
    text = LOOPS.replace("  %d = (s32[], f32[4]{0}) while(%t), condition=%outer_cond, body=%dyn_body\n", "")
    found = {c.computation: c for c in collectives_in_hlo(text)}
    assert (found["inner_body"].executions, found["outer_body"].executions) == (12, 4)
    assert found["dyn_body"].executions is None, "not reached from ENTRY"


def test_a_loop_condition_runs_once_more_than_its_body():
    text = """%c (p: s32[]) -> pred[] {
  %ar = s32[] all-reduce(%p), replica_groups={{0,1}}, to_apply=%add
}

%b (p: s32[]) -> s32[] {
  %p = s32[] parameter(0)
}

ENTRY %main {
  %w = s32[] while(%x), condition=%c, body=%b, backend_config={"known_trip_count":{"n":"5"}}
}"""
    assert one(text).executions == 6


def test_a_computation_called_from_several_places_sums_its_executions():
    text = """%sub (p: f32[4]) -> f32[4] {
  %ar = f32[4]{0} all-reduce(%p), replica_groups={{0,1}}, to_apply=%add
}

%body (p: f32[4]) -> f32[4] {
  %c = f32[4]{0} call(%p), to_apply=%sub
}

ENTRY %main {
  %c1 = f32[4]{0} call(%x), to_apply=%sub
  %c2 = f32[4]{0} call(%c1), to_apply=%sub
  %w = f32[4]{0} while(%c2), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
}"""
    found = one(text)
    assert (found.executions, found.computation, found.entry, found.conditional) == (5, "sub", False, False)


def test_collectives_in_conditional_branches_are_flagged():
    text = """%b0 (p: (f32[4])) -> (f32[4]) {
  %ar0 = f32[4]{0} all-reduce(%p), replica_groups={{0,1}}, to_apply=%add
}

%b1 (p: (f32[4])) -> (f32[4]) {
  %ar1 = f32[4]{0} all-reduce(%p), replica_groups={{0,1}}, to_apply=%add
}

%t (p: f32[4]) -> f32[4] {
  %cp = f32[4]{0} collective-permute(%p), source_target_pairs={{0,1}}
}

%f (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
}

%body (p: f32[4]) -> f32[4] {
  %k = f32[4]{0} conditional(%pred, %p, %p), true_computation=%t, false_computation=%f
}

ENTRY %main {
  %c = (f32[4]{0}) conditional(%i, %x, %x), branch_computations={%b0, %b1}
  %w = f32[4]{0} while(%c2), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"2"}}
  %ar = f32[4]{0} all-reduce(%x), replica_groups={{0,1}}, to_apply=%add
}"""
    found = collectives_in_hlo(text)
    assert [(c.computation, c.conditional, c.executions) for c in found] == [
        ("b0", True, 1),
        ("b1", True, 1),
        ("t", True, 2),
        ("main", False, 1),
    ]


# -- mesh axes ---------------------------------------------------------------------------
def collective(op="all-reduce", groups=None, pairs=None) -> HloCollective:
    return HloCollective(
        op=op,
        result_bytes=4,
        computation="main",
        entry=True,
        replica_groups=groups,
        source_target_pairs=pairs,
        group_size=len(groups[0]) if groups else None,
    )


@pytest.mark.parametrize(
    ("groups", "axes"),
    [
        (((0, 2, 4, 6), (1, 3, 5, 7)), ("data",)),
        (((0, 1), (2, 3), (4, 5), (6, 7)), ("model",)),
        ((tuple(range(8)),), ("data", "model")),
        (((0, 2, 4, 6, 1, 3, 5, 7),), ("data", "model")),  # an all-reduce's order is moot
        (tuple((i,) for i in range(8)), ()),
        (((0, 1, 2, 3), (4, 5, 6, 7)), None),  # two data rows and both model columns: no coset
        (((0, 3), (1, 2), (4, 7), (5, 6)), None),
        (((0, 2), (4, 6), (1, 3), (5, 7)), None),  # half the data axis
        (((0, 2, 4, 6),), None),  # does not cover the mesh
        (((0, 9),), None),  # off the mesh
    ],
)
def test_mesh_axes_of_replica_groups(groups, axes):
    assert mesh_axes_of(collective(groups=groups), MESH_4x2) == axes


def test_mesh_axes_of_an_order_sensitive_op_follows_the_group_order():
    gather = collective(op="all-gather", groups=((0, 2, 4, 6, 1, 3, 5, 7),))
    assert mesh_axes_of(gather, MESH_4x2) == ("model", "data")
    assert mesh_axes_of(collective(op="all-gather", groups=((0, 1, 2, 3, 4, 5, 6, 7),)), dict(MESH_4x2)) == (
        "data",
        "model",
    )
    assert mesh_axes_of(collective(op="all-gather", groups=((2, 0, 4, 6), (1, 3, 5, 7))), MESH_4x2) is None


def test_mesh_axes_of_pairs_and_their_shifts():
    ring = collective(
        op="collective-permute", pairs=tuple((2 * i + m, 2 * ((i + 1) % 4) + m) for i in range(4) for m in range(2))
    )
    assert mesh_axes_of(ring, MESH_4x2) == ("data",)
    assert permute_shifts(ring, MESH_4x2) == ((("data", 1),),)
    swap = collective(op="collective-permute", pairs=((0, 1), (1, 0), (2, 3), (3, 2)))
    assert mesh_axes_of(swap, MESH_4x2) == ("model",)
    assert permute_shifts(swap, MESH_4x2) == ((("model", 1),),)
    diagonal = collective(op="collective-permute", pairs=((0, 3), (3, 3)))
    assert mesh_axes_of(diagonal, MESH_4x2) == ("data", "model")
    assert permute_shifts(diagonal, MESH_4x2) == ((), (("data", 1), ("model", 1)))
    assert not collective(op="collective-permute", pairs=((3, 3),)).crosses_devices
    assert mesh_axes_of(collective(op="collective-permute", pairs=((0, 8),)), MESH_4x2) is None
    assert mesh_axes_of(collective(), MESH_4x2) is None and permute_shifts(collective(), MESH_4x2) is None


# -- real programs compiled by XLA:CPU ---------------------------------------------------
@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)


BLOCKS = P("data", "model")  # every device holds one block


def compiled(mesh, f, x, in_specs=BLOCKS, out_specs=BLOCKS) -> list[HloCollective]:
    step = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs))
    x = jax.device_put(x, NamedSharding(mesh, in_specs))
    return collectives_in_hlo(step.lower(x).compile().as_text())


X = np.ones((8, 4), np.float32)  # a [2, 2] f32 block per device: 16 bytes


def one_real(found: list[HloCollective]) -> HloCollective:
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(
    ("axes", "out_specs", "group_size"),
    [(("data",), P(None, "model"), 4), (("model",), P("data", None), 2), (("data", "model"), P(), 8)],
)
def test_real_psum_reads_back_as_its_mesh_axes(mesh, axes, out_specs, group_size):
    found = one_real(compiled(mesh, lambda a: lax.psum(a, axes), X, out_specs=out_specs))
    assert (found.op, found.result_bytes, found.dtypes, found.group_size) == ("all-reduce", 16, ("f32",), group_size)
    assert (found.executions, found.entry, found.async_, found.conditional) == (1, True, False, False)
    assert mesh_axes_of(found, mesh.shape) == axes


def test_replica_groups_are_mesh_positions_not_device_ids():
    shuffled = Mesh(np.array(jax.devices())[[3, 0, 6, 1, 7, 2, 5, 4]].reshape(4, 2), ("data", "model"))
    found = one_real(compiled(shuffled, lambda a: lax.psum(a, "data"), X, out_specs=P(None, "model")))
    assert found.replica_groups == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert mesh_axes_of(found, shuffled.shape) == ("data",)


def test_real_all_gather_and_psum_scatter(mesh):
    gather = one_real(
        compiled(mesh, lambda a: lax.all_gather(a, "data", tiled=True, to="invarying"), X, out_specs=P(None, "model"))
    )
    assert (gather.op, gather.result_bytes, gather.dtypes) == ("all-gather", 64, ("f32",))
    assert mesh_axes_of(gather, mesh.shape) == ("data",)
    both = one_real(
        compiled(mesh, lambda a: lax.all_gather(a, ("model", "data"), tiled=True, to="invarying"), X, out_specs=P())
    )
    assert both.replica_groups == ((0, 2, 4, 6, 1, 3, 5, 7),)
    assert mesh_axes_of(both, mesh.shape) == ("model", "data")
    scatter = one_real(compiled(mesh, lambda a: lax.psum_scatter(a, "data", tiled=True), np.ones((32, 4), np.float32)))
    assert (scatter.op, scatter.result_bytes, scatter.dtypes) == ("reduce-scatter", 16, ("f32",))
    assert mesh_axes_of(scatter, mesh.shape) == ("data",)


def test_real_all_to_all(mesh):
    found = one_real(
        compiled(mesh, lambda a: lax.all_to_all(a, "data", 0, 1, tiled=True), np.ones((32, 16), np.float32))
    )
    # XLA:CPU splits the [8, 8] block into a tuple of four [2, 8] operands and results.
    assert (found.op, found.result_bytes, found.dtypes) == ("all-to-all", 256, ("f32",) * 4)
    assert mesh_axes_of(found, mesh.shape) == ("data",)


def test_real_ppermute_in_a_scan_runs_once_per_iteration(mesh):
    ring = [(i, (i + 1) % 4) for i in range(4)]

    def f(a):
        return lax.scan(lambda c, _: (lax.ppermute(c, "data", ring), None), a, None, length=5)[0]

    found = one_real(compiled(mesh, f, X))
    assert (found.op, found.result_bytes, found.executions, found.entry) == ("collective-permute", 16, 5, False)
    assert mesh_axes_of(found, mesh.shape) == ("data",)
    assert permute_shifts(found, mesh.shape) == ((("data", 1),),)


def test_real_nested_scans_while_loop_and_cond(mesh):
    def inner(c, _):
        return c * 0.5 + lax.psum(c, "model"), None

    def nested(a):
        return lax.scan(lambda c, _: (lax.scan(inner, c, None, length=3)[0], None), a, None, length=4)[0]

    assert one_real(compiled(mesh, nested, X)).executions == 12

    def dynamic(a):
        return lax.while_loop(lambda c: c[0, 0] < 100, lambda c: c + lax.psum(c, "model"), a)

    assert one_real(compiled(mesh, dynamic, X)).executions is None

    def branchy(a):
        return lax.cond(a.sum() > 0, lambda b: b + lax.psum(b, "model"), lambda b: b * 2, a)

    found = one_real(compiled(mesh, branchy, X))
    assert (found.conditional, found.executions, found.entry) == (True, 1, False)


def test_xla_cpu_promotes_a_bf16_psum_to_f32(mesh):
    found = one_real(compiled(mesh, lambda a: lax.psum(a, "data"), X.astype(jnp.bfloat16), out_specs=P(None, "model")))
    # Pinned: the wire carries f32 (16 bytes for a [2, 2] block), not the program's bf16 (8 bytes).
    assert (found.dtypes, found.result_bytes) == (("f32",), 16)
