"""Bad input raises a TitanaxError subclass with a code, the values, and a fix, before any compile."""

import jax
import jax.numpy as jnp
import optax
import pytest
from models import init_mlp, make_batches, mlp_loss

import titanax as tx
from titanax.passes import Target, compile_plan

DP_PLAN = tx.Plan(data_parallel=tx.DP(axis="data"))


@tx.step_fn
def train_step(state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def engine(mesh=None, plan=DP_PLAN, optimizer=None):
    return tx.Engine(mesh=mesh or tx.MeshSpec(axes=("data",)), plan=plan, optimizer=optimizer or tx.optim.sgd(0.1))


def test_mesh_sizes_must_multiply_to_device_count():
    with pytest.raises(tx.MeshError, match=r"TX103.*multiply to 6 but there are 8 devices") as info:
        engine(tx.MeshSpec(axes=("data", "model"), shape=(3, 2)))
    assert "devices=6 in MeshSpec" in str(info.value)


def test_mesh_too_large_for_devices_does_not_suggest_more_devices():
    with pytest.raises(tx.MeshError, match=r"TX103.*multiply to 16 but there are 8") as info:
        engine(tx.MeshSpec(axes=("data", "model"), shape=(4, 4)))
    assert "devices=16" not in str(info.value)


def test_two_inferred_sizes():
    with pytest.raises(tx.MeshError, match=r"TX106.*at most one size can be inferred"):
        engine(tx.MeshSpec(axes=("data", "model"), shape=(-1, -1)))


def test_inferred_size_without_device_count():
    with pytest.raises(tx.MeshError, match=r"TX107.*without a device count"):
        compile_plan(tx.MeshSpec(axes=("data",)), DP_PLAN)


@pytest.mark.parametrize("axes", ["data", (), ("data", "not an identifier")])
def test_mesh_axes_must_be_identifiers(axes):
    with pytest.raises(tx.MeshError, match="TX108"):
        tx.MeshSpec(axes=axes)


@pytest.mark.parametrize("shape", [8, (8, 1), ("8",)])
def test_mesh_shape_must_match_axes(shape):
    with pytest.raises(tx.MeshError, match="TX105"):
        tx.MeshSpec(axes=("data",), shape=shape)


def test_plan_entries_are_typed():
    with pytest.raises(tx.PlanError, match=r"TX204.*must be a tx.DP"):
        tx.Plan(data_parallel="data")
    with pytest.raises(tx.PlanError, match="TX204"):
        tx.DP(axis=3)


def test_axis_repeated_in_one_dimension():
    with pytest.raises(tx.PlanError, match=r"TX205.*\['data'\] more than once"):
        engine(plan=tx.Plan(data_parallel=tx.DP(axis=("data", "data"))))


def test_pass_prerequisites_are_enforced():
    with pytest.raises(tx.PlanError, match=r"TX207.*'insert-dp-collectives' needs"):
        compile_plan(
            tx.MeshSpec(axes=("data",)), DP_PLAN, target=Target(device_count=8), passes=("insert-dp-collectives",)
        )


def test_mesh_asking_for_more_devices_than_exist():
    with pytest.raises(tx.MeshError, match=r"TX104.*asks for 16 devices but only 8"):
        engine(tx.MeshSpec(devices=16, axes=("data",)))


def test_inferred_axis_must_divide_devices():
    with pytest.raises(tx.MeshError, match=r"TX103.*8 devices do not divide"):
        engine(tx.MeshSpec(axes=("data", "model"), shape=(-1, 3)))


def test_multi_axis_mesh_needs_a_shape():
    with pytest.raises(tx.MeshError, match=r"TX105.*needs a shape"):
        tx.MeshSpec(axes=("data", "model"))


def test_dp_axis_not_in_mesh_suggests_the_nearest():
    with pytest.raises(tx.PlanError, match=r"TX201.*'dta', which is not in the mesh") as info:
        engine(plan=tx.Plan(data_parallel=tx.DP(axis="dta")))
    assert "did you mean 'data'" in str(info.value)


def test_all_plan_errors_are_reported_at_once():
    with pytest.raises(tx.TitanaxError) as info:
        engine(tx.MeshSpec(axes=("data", "data"), shape=(2, 0)), plan=tx.Plan(data_parallel=tx.DP(axis="x")))
    codes = [d.code for d in info.value.diagnostics]
    assert codes == ["TX101", "TX102", "TX201"]
    assert type(info.value) is tx.TitanaxError  # mixed mesh and plan errors: the common base class


def test_batch_not_divisible_by_dp_size():
    state = engine().create_state(init_mlp())
    batch = make_batches(1, 12)[0]
    with pytest.raises(
        tx.BatchError, match=r"TX301.*\['x'\] with shape \(12, 4\).*not divisible by the DP size 8"
    ) as info:
        train_step(state, batch)
    assert "e.g. 8 or 16" in str(info.value)


def test_batch_not_divisible_into_microbatches():
    e = engine(plan=tx.Plan(data_parallel=tx.DP(axis="data", accumulate_steps=3)))
    with pytest.raises(tx.BatchError, match=r"TX302.*accumulate_steps=3"):
        train_step(e.create_state(init_mlp()), make_batches(1, 16)[0])


def test_scalar_batch_leaf_under_dp():
    state = engine().create_state(init_mlp())
    batch = dict(make_batches(1, 16)[0], scale=jnp.float32(2.0))
    with pytest.raises(tx.BatchError, match=r"TX303.*\['scale'\].*scalar"):
        train_step(state, batch)


def test_batch_errors_come_before_compilation():
    state = engine().create_state(init_mlp())
    with pytest.raises(tx.BatchError):
        train_step.lower(state, make_batches(1, 12)[0])
    assert train_step.compiled(state).cache_size() == 0


@pytest.mark.parametrize(
    ("optimizer", "fragment"),
    [("sgd", "got str"), (optax.sgd, "sgd is an optax factory: call it"), (object(), "got object")],
)
def test_optimizer_must_be_an_optax_transform(optimizer, fragment):
    with pytest.raises(tx.OptimizerError, match="TX401") as info:
        engine(optimizer=optimizer)
    assert fragment in str(info.value)


def test_accumulate_steps_must_be_positive():
    with pytest.raises(tx.PlanError, match=r"TX203.*accumulate_steps = 0"):
        tx.DP(axis="data", accumulate_steps=0)


def test_apply_gradients_twice_in_one_step():
    @tx.step_fn
    def twice(state, batch):
        grads = jax.grad(mlp_loss)(state.params, batch)
        return state.apply_gradients(grads=grads).apply_gradients(grads=grads), {}

    with pytest.raises(tx.StepFnError, match="TX501.*twice"):
        twice(engine().create_state(init_mlp()), make_batches(1, 16)[0])


def test_gradients_must_match_parameters():
    @tx.step_fn
    def wrong(state, batch):
        grads = jax.grad(mlp_loss)(state.params, batch)
        return state.apply_gradients(grads=grads["dense1"]), {}

    with pytest.raises(tx.StepFnError, match="TX502.*do not match the parameters"):
        wrong(engine().create_state(init_mlp()), make_batches(1, 16)[0])


def test_step_needs_a_train_state():
    with pytest.raises(tx.StepFnError, match="TX503.*got dict"):
        train_step(init_mlp(), make_batches(1, 16)[0])


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("TX103", tx.MeshError),
        ("TX201", tx.PlanError),
        ("TX301", tx.BatchError),
        ("TX401", tx.OptimizerError),
        ("TX501", tx.StepFnError),
        ("TX901", tx.IRVerificationError),
    ],
)
def test_error_codes_map_to_their_classes(code, cls):
    assert tx.errors.error_class_for_code(code) is cls


def test_batch_hint_accounts_for_accumulation():
    e = engine(plan=tx.Plan(data_parallel=tx.DP(axis="data", accumulate_steps=3)))
    with pytest.raises(tx.BatchError, match=r"(?s)TX301.*multiple of 24.*e\.g\. 24"):
        train_step(e.create_state(init_mlp()), make_batches(1, 12)[0])
