"""Each stage of the step body against a plain-JAX statement of what it does."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType

from titanax.ir import CollectiveNode, Operand
from titanax.lowering.collectives import IRCollective
from titanax.lowering.stages import (
    apply_optimizer,
    cast_floating,
    count_nonfinite,
    keep_where,
    reduce_metrics,
    sync_gradients,
    unscale_gradients,
)

P = jax.P
MESH = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)


def collective(operand, reduction, axes):
    node = CollectiveNode(
        name="x", op="all-reduce", reduction=reduction, axes=axes, operand=operand, origin="lowering", group_size=8
    )
    return IRCollective(f"collective.{operand}", node)


def per_device(fn, values):
    """Run ``fn`` on each device's slice of ``values`` (leading dims 4 x 2 = the mesh) and return
    what device (0, 0) computed."""
    program = jax.shard_map(
        lambda v: jax.tree.map(lambda x: x[None, None], fn(jax.tree.map(lambda x: x[0, 0], v))),
        mesh=MESH,
        in_specs=P("data", "model"),
        out_specs=P("data", "model"),
    )
    placed = jax.device_put(values, jax.NamedSharding(MESH, P("data", "model")))
    return jax.tree.map(lambda x: np.asarray(x)[0, 0], jax.jit(program)(placed))


def test_sync_gradients_is_the_mean_over_the_dp_axis():
    grads = {"w": jnp.arange(4 * 2 * 3, dtype=jnp.float32).reshape(4, 2, 3)}
    synced = per_device(lambda g: sync_gradients((collective(Operand.GRADIENTS, "mean", ("data",)),), g), grads)
    np.testing.assert_allclose(synced["w"], jnp.mean(grads["w"][:, 0], axis=0))


def test_sync_gradients_without_collectives_is_the_identity():
    grads = {"w": jnp.ones((3,))}
    assert sync_gradients((), grads) is grads


def test_unscale_divides_by_the_scale_in_the_gradient_dtype():
    grads = {"a": jnp.full((2,), 8.0, jnp.float16), "b": jnp.full((2,), 6.0)}
    out = unscale_gradients(grads, jnp.asarray(2.0, jnp.float32))
    assert out["a"].dtype == jnp.float16
    np.testing.assert_array_equal(out["a"], [4.0, 4.0])
    np.testing.assert_array_equal(out["b"], [3.0, 3.0])


def test_count_nonfinite_sums_over_the_split_axes():
    # Device (d, m) holds d * 2 + m bad values: the count over 'model' is (2d) + (2d + 1).
    values = jnp.zeros((4, 2, 8))
    for d in range(4):
        for m in range(2):
            values = values.at[d, m, : d * 2 + m].set(jnp.inf)
    count = per_device(lambda g: count_nonfinite(g, (collective(Operand.NONFINITE_COUNT, "sum", ("model",)),)), values)
    assert int(count) == 0 + 1  # device (0, 0): its 0 plus its model neighbour's 1
    assert int(count_nonfinite({"a": jnp.array([jnp.nan, 1.0, -jnp.inf])}, ())) == 2


@dataclasses.dataclass(frozen=True)
class FakeState:
    params: dict
    opt_state: object
    step: int = 0
    optimizer: optax.GradientTransformation = optax.sgd(0.5)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def apply_update(self, grads):
        updates, opt_state = self.optimizer.update(grads, self.opt_state, self.params)
        return self.replace(params=optax.apply_updates(self.params, updates), opt_state=opt_state, step=self.step + 1)


def test_apply_optimizer_is_one_sgd_step():
    params = {"w": jnp.array([1.0, 2.0])}
    state = FakeState(params=params, opt_state=optax.sgd(0.5).init(params))
    new = apply_optimizer(state, {"w": jnp.array([2.0, -2.0])})
    np.testing.assert_allclose(new.params["w"], [0.0, 3.0])
    assert new.step == 1


@pytest.mark.parametrize("keep", [True, False])
def test_keep_where_picks_parameters_and_optimizer_state_only(keep):
    old = FakeState(params={"w": jnp.zeros(2)}, opt_state={"m": jnp.zeros(2)}, step=3)
    new = FakeState(params={"w": jnp.ones(2)}, opt_state={"m": jnp.ones(2)}, step=4)
    kept = keep_where(jnp.asarray(keep), new, old)
    np.testing.assert_array_equal(kept.params["w"], (new if keep else old).params["w"])
    np.testing.assert_array_equal(kept.opt_state["m"], (new if keep else old).opt_state["m"])
    assert kept.step == 4  # the step counts a skipped step too


def test_reduce_metrics_casts_floats_and_averages_over_dp():
    metrics = {"loss": jnp.arange(8.0).reshape(4, 2), "tokens": jnp.ones((4, 2), jnp.int32)}
    out = per_device(
        lambda m: reduce_metrics((collective(Operand.METRICS, "mean", ("data",)),), m, "bfloat16"), metrics
    )
    # Integers are not cast to the output dtype; their mean over replicas is a float.
    assert out["loss"].dtype == jnp.bfloat16 and out["tokens"].dtype == jnp.float32
    assert float(out["loss"]) == float(jnp.mean(metrics["loss"][:, 0]))
    assert float(out["tokens"]) == 1.0


def test_cast_floating_leaves_integers_alone():
    out = cast_floating({"x": jnp.ones(2), "ids": jnp.ones(2, jnp.int32)}, "float16")
    assert out["x"].dtype == jnp.float16 and out["ids"].dtype == jnp.int32
