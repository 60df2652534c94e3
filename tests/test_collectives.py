"""``tx.collectives`` inside a step: the values they compute, the errors, and the IR listing."""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import titanax as tx
from titanax.lowering import collectives_in_hlo

C = tx.collectives


@tx.step_fn
def probe(state, batch):
    rank = C.axis_index("model").astype(jnp.float32)
    ring = [(i, (i + 1) % 4) for i in range(4)]
    pieces = jnp.arange(4.0) * (rank + 1)
    metrics = {
        "psum": C.psum(rank, "model"),
        "pmean": C.pmean(rank, "model"),
        "pmax": C.pmax(lax.stop_gradient(rank), "model"),
        "pmin": C.pmin(lax.stop_gradient(rank), "model"),
        "gathered": C.pmean(jnp.sum(C.all_gather(rank[None], "model") * jnp.arange(4.0)), "model"),
        "scattered": C.psum(C.psum_scatter(pieces, "model")[0] * (rank == 2), "model"),
        "from_left": C.psum(C.ppermute(rank, "model", ring) * (rank == 0), "model"),
        "exchanged": C.psum(
            C.all_to_all(pieces[:, None], "model", split_dim=0, concat_dim=1)[0, 3] * (rank == 1), "model"
        ),
        "batch": jnp.sum(batch["x"]),
    }
    return state, metrics


def engine():
    return tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(2, 4)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model")),
        optimizer=tx.optim.sgd(0.1),
    )


def test_collectives_compute_what_they_say():
    state = engine().create_state({"w": jnp.ones((2,))})
    batch = {"x": jnp.arange(8.0)}
    _, metrics = probe(state, batch)
    got = {k: float(v) for k, v in metrics.items()}
    assert got == {
        "psum": 6.0,  # 0 + 1 + 2 + 3
        "pmean": 1.5,
        "pmax": 3.0,
        "pmin": 0.0,
        "gathered": 14.0,  # [0, 1, 2, 3] . [0, 1, 2, 3]
        "scattered": 20.0,  # element 2 of sum_r (r + 1) * [0, 1, 2, 3] = 2 * 10
        "from_left": 3.0,  # device 0 receives from device 3
        "exchanged": 4.0,  # device 1 receives element 1 of device 3's pieces: 1 * (3 + 1)
        "batch": 14.0,  # mean over data of (0+1+2+3) and (4+5+6+7)
    }


def test_each_user_collective_is_in_the_ir_and_the_hlo():
    state = engine().create_state({"w": jnp.ones((2,))})
    batch = {"x": jnp.arange(8.0)}
    ir = probe.plan_ir(state, batch)
    user = [c for c in ir.collectives() if c.origin == "user"]
    assert {c.op for c in user} == {"all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all"}
    assert all("tests/test_collectives.py" in c.name for c in user)
    hlo = collectives_in_hlo(probe.lower(state, batch).compile().as_text())
    for op in ("all-gather", "reduce-scatter", "collective-permute", "all-to-all"):
        assert sum(c.result_bytes for c in hlo if c.op == op) == sum(c.payload_bytes for c in user if c.op == op)


def test_outside_a_step_is_a_clear_error():
    with pytest.raises(tx.StepFnError, match="TX504.*outside a @tx.step_fn"):
        C.psum(jnp.ones(()), "model")


def test_unknown_axis_is_a_clear_error():
    @tx.step_fn
    def bad(state, batch):
        return state, {"x": C.psum(jnp.ones(()), "modle")}

    state = engine().create_state({"w": jnp.ones((2,))})
    with pytest.raises(tx.StepFnError, match="(?s)TX505.*'modle'.*did you mean 'model'"):
        bad(state, {"x": jnp.ones((8,))})


def test_layers_are_plain_math_outside_a_step():
    from titanax import nn

    params = {"w": jnp.eye(3), "b": jnp.ones((3,))}
    x = jnp.arange(6.0).reshape(2, 3)
    assert jnp.allclose(nn.column_dense(params, x), x + 1) and jnp.allclose(nn.row_dense(params, x), x + 1)
    assert nn.tp_axis() is None
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 7))
    labels = jnp.array([0, 3, 6, 2])
    expected = -jax.nn.log_softmax(logits)[jnp.arange(4), labels]
    assert jnp.allclose(nn.vocab_cross_entropy(logits, labels), expected)
