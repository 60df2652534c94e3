"""Run-time contracts: each misuse is a TitanaxError with a code, raised before anything compiles."""

import contextlib

import jax
import jax.numpy as jnp
import pytest
from models import GPT, gpt_batches, init_mlp, make_batches, mlp_loss

import titanax as tx
from titanax import nn


@contextlib.contextmanager
def no_compile():
    """Fail if XLA compiles anything inside the block (counted through jax.monitoring)."""
    compiled = []

    def listener(name, duration, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            compiled.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiled == [], f"{len(compiled)} XLA compile(s) happened before the error"


def engine(devices=8):
    return tx.Engine(
        mesh=tx.MeshSpec(axes=("data",), devices=devices),
        plan=tx.Plan(data_parallel=tx.DP(axis="data")),
        optimizer=tx.optim.sgd(0.1),
    )


@tx.step_fn
def train_step(state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def test_reusing_a_donated_state_is_tx516_not_a_crash():
    state = engine().create_state(init_mlp())
    batch = make_batches(1, 16)[0]
    new_state, _ = train_step(state, batch)
    with no_compile(), pytest.raises(tx.StepFnError, match="TX516.*donates.*cannot be used again") as info:
        train_step(state, batch)
    assert "donate_state=False" in str(info.value)
    train_step(new_state, batch)  # the returned state is fine


def test_a_deleted_batch_array_is_tx516():
    state = engine().create_state(init_mlp())
    batch = make_batches(1, 16)[0]
    state, _ = train_step(state, batch)
    batch = jax.device_put(batch)
    batch["x"].delete()
    with pytest.raises(tx.StepFnError, match=r"TX516.*batch.*\['x'\]"):
        train_step(state, batch)


def returning(result):
    @tx.step_fn
    def step(state, batch):
        loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
        new = state.apply_gradients(grads=grads)
        return result(new, grads, loss)

    return step


@pytest.mark.parametrize(
    ("result", "fragment"),
    [
        (lambda new, grads, loss: new, "returned a TrainState"),
        (lambda new, grads, loss: (grads, {"loss": loss}), "first value is a dict"),
        (lambda new, grads, loss: (new, {"loss": loss}, loss), "returned a tuple of 3"),
        (lambda new, grads, loss: (new, {"loss": loss, "note": "hello"}), r"\['note'\] is a str"),
    ],
    ids=["state-only", "grads-first", "three-values", "string-metric"],
)
def test_the_return_contract_is_checked(result, fragment):
    state = engine().create_state(init_mlp())
    with no_compile(), pytest.raises(tx.StepFnError, match="TX517") as info:
        returning(result)(state, make_batches(1, 16)[0])
    assert pytest.importorskip("re").search(fragment, str(info.value)), str(info.value)


def test_integer_parameters_are_refused_at_create_state():
    params = {**init_mlp(), "table": jnp.arange(4)}
    with no_compile(), pytest.raises(tx.TrainingError, match=r"TX723.*\['table'\] has dtype int32"):
        engine().create_state(params)


def test_layout_errors_come_before_any_array_is_copied_or_compiled():
    params = nn.init_gpt(jax.random.PRNGKey(0), **GPT)
    odd = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(1, 8)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model", rules={"head/w": "row"})),
        optimizer=tx.optim.sgd(0.1),
    )
    params = {**params, "head": {"w": jnp.ones((12, 64))}}  # 12 rows do not split 8 ways
    with no_compile(), pytest.raises(tx.PlanError, match="TX223"):
        odd.create_state(params)


def test_plan_ir_raises_tx509_like_the_step():
    @tx.step_fn
    def unreduced(state, batch):
        rank = tx.collectives.axis_index("model").astype(jnp.float32)
        return state, {"rank": rank}

    engine_tp = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(2, 4)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model")),
        optimizer=tx.optim.sgd(0.1),
    )
    state = engine_tp.create_state({"w": jnp.ones((2,))})
    batch = gpt_batches(1, 8)[0]
    with pytest.raises(tx.StepFnError, match="TX509"):
        unreduced.plan_ir(state, batch)
    with pytest.raises(tx.StepFnError, match="TX509"):
        unreduced(state, batch)


def test_device_count_errors_on_cpu_name_the_xla_flag():
    with pytest.raises(tx.MeshError, match="TX10[34]") as info:
        tx.Engine(
            mesh=tx.MeshSpec(axes=("data", "model"), shape=(4, 4)),
            plan=tx.Plan(data_parallel=tx.DP(axis="data")),
            optimizer=tx.optim.sgd(0.1),
        )
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=16" in str(info.value)
