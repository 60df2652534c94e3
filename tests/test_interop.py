"""Flax NNX and Equinox models under Titanax's plans, against the same models on one device (the optional
``flax`` and ``equinox`` extras)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models import max_relative_error

import titanax as tx
from titanax.errors import StepFnError

nnx = pytest.importorskip("flax.nnx")
eqx = pytest.importorskip("equinox")

LR = 0.1
MESH = tx.MeshSpec(axes=("data", "model"), shape=(2, 4))


def batches(steps, features=16, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {
            "x": rng.standard_normal((size, features)).astype(np.float32),
            "y": rng.standard_normal((size, 4)).astype(np.float32),
        }
        for _ in range(steps)
    ]


def sgd_on_one_device(loss_fn, params, data):
    step = jax.jit(jax.value_and_grad(loss_fn))
    losses = []
    for batch in data:
        loss, grads = step(params, batch)
        losses.append(float(loss))
        params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
    return losses, params


def train(loss_fn, params, data, plan, **create):
    engine = tx.Engine(mesh=MESH, plan=plan, optimizer=tx.optim.sgd(LR))

    @tx.step_fn
    def step(state, batch):
        loss, grads = tx.value_and_grad(loss_fn)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    state = engine.create_state(params, **create)
    losses = []
    for batch in data:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return engine, state, losses


# -- Flax NNX ----------------------------------------------------------------------------------
def nnx_mlp(row_layer):
    from titanax.nn.nnx_layers import RowParallelLinear

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.norm = nnx.LayerNorm(16, rngs=rngs)
            self.up = nnx.Linear(16, 32, rngs=rngs)
            down = RowParallelLinear if row_layer == "adapter" else nnx.Linear
            self.down = down(32, 4, bias_init=nnx.initializers.normal(1.0), rngs=rngs)

        def __call__(self, x):
            return self.down(jax.nn.gelu(self.up(self.norm(x))))

    graphdef, params = nnx.split(MLP(nnx.Rngs(0)))

    def loss_fn(params, batch):
        return jnp.mean((nnx.merge(graphdef, params)(batch["x"]) - batch["y"]) ** 2)

    return loss_fn, params


NNX_TP = tx.TP(axis="model", rules={"up/kernel": "column", "up/bias": "column", "down/kernel": "row"})


def test_an_nnx_model_under_dp_x_tp_matches_itself_on_one_device():
    loss_fn, params = nnx_mlp("adapter")
    data = batches(3)
    plan = tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=NNX_TP)
    engine, state, losses = train(loss_fn, params, data, plan)
    # The rules name nnx's own paths: the variables' trailing .value is not part of them.
    assert {node.path for node in engine.ir.params()} >= {"up/kernel", "down/kernel", "down/bias"}
    kernel = jax.tree.leaves(state.params["up"]["kernel"])[0]
    assert kernel.addressable_shards[0].data.shape == (16, 8)
    ref_losses, ref_params = sgd_on_one_device(loss_fn, params, data)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(jax.device_get(state.params), ref_params) < 1e-5


@pytest.mark.parametrize("stage", [1, 3])
def test_an_nnx_model_under_fsdp_matches_itself_on_one_device(stage):
    loss_fn, params = nnx_mlp("adapter")
    data = batches(3)
    fsdp8 = tx.MeshSpec(axes=("fsdp",), shape=(8,))
    engine = tx.Engine(
        mesh=fsdp8,
        plan=tx.Plan(fully_sharded=tx.FSDP(axis="fsdp", stage=stage, min_size=16)),
        optimizer=tx.optim.sgd(LR),
    )

    @tx.step_fn
    def step(state, batch):
        loss, grads = tx.value_and_grad(loss_fn)(state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    state = engine.create_state(params)
    assert {n.path: n.fsdp_dim for n in engine.ir.params()}["up/kernel"] == 1
    losses = []
    for batch in data:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    ref_losses, ref_params = sgd_on_one_device(loss_fn, params, data)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(jax.device_get(state.params), ref_params) < 1e-5


@pytest.mark.slow
def test_nnx_blocks_stacked_into_a_pipeline_model_match_one_device_under_dp_x_tp_x_pp():
    """The pipeline recipe: split each block, stack their states under "blocks", merge one layer per call."""
    from titanax.nn.nnx_layers import RowParallelLinear

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.norm = nnx.LayerNorm(16, rngs=rngs)
            self.up = nnx.Linear(16, 32, rngs=rngs)
            self.down = RowParallelLinear(32, 16, rngs=rngs)

        def __call__(self, x):
            return x + self.down(jax.nn.gelu(self.up(self.norm(x))))

    rngs = nnx.Rngs(0)
    blocks = [Block(rngs) for _ in range(4)]
    block_def, _ = nnx.split(blocks[0])
    head_def, head = nnx.split(nnx.Linear(16, 4, rngs=rngs))
    params = {"head": head, "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.split(b)[1] for b in blocks])}

    def block(layer, x):
        return nnx.merge(block_def, layer)(x)

    def last(params, x, batch):
        return jnp.mean((nnx.merge(head_def, params["head"])(x) - batch["y"]) ** 2)

    model = tx.PipelineModel(first=lambda params, batch: batch["x"], block=block, last=last)

    def reference_loss(params, batch):
        x = batch["x"]
        for i in range(len(blocks)):
            x = block(jax.tree.map(lambda a, i=i: a[i], params["blocks"]), x)
        return last(params, x, batch)

    rules = {"blocks/up/kernel": "column", "blocks/up/bias": "column", "blocks/down/kernel": "row"}
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model", "pipe"), shape=(2, 2, 2)),
        plan=tx.Plan(
            data_parallel=tx.DP(axis="data"),
            tensor_parallel=tx.TP(axis="model", rules=rules),
            pipeline_parallel=tx.PP(axis="pipe", microbatches=2),
        ),
        optimizer=tx.optim.sgd(LR),
    )

    @tx.step_fn
    def step(state, batch):
        loss, grads = tx.pipeline.value_and_grad(model, state.params, batch)
        return state.apply_gradients(grads=grads), {"loss": loss}

    state = engine.create_state(params)
    data = batches(3)
    losses = []
    for batch in data:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    ref_losses, ref_params = sgd_on_one_device(reference_loss, params, data)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(jax.device_get(state.params), ref_params) < 1e-5


def test_the_adapters_compute_what_the_stock_layers_do_outside_tensor_parallelism():
    from titanax.nn.eqx_layers import RowParallelLinear as EqxRow
    from titanax.nn.nnx_layers import RowParallelLinear as NnxRow

    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    stock = nnx.Linear(8, 4, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(1))
    adapter = NnxRow(8, 4, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(np.asarray(adapter(x)), np.asarray(stock(x)))
    linear = eqx.nn.Linear(8, 4, key=jax.random.PRNGKey(2))
    row = EqxRow(8, 4, key=jax.random.PRNGKey(2))
    np.testing.assert_allclose(np.asarray(jax.vmap(row)(x)), np.asarray(jax.vmap(linear)(x)), rtol=1e-6)


def test_a_stock_nnx_linear_as_the_row_parallel_layer_is_refused_with_the_adapter_named():
    loss_fn, params = nnx_mlp("stock")
    plan = tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=NNX_TP)
    with pytest.raises(StepFnError) as err:
        train(loss_fn, params, batches(1), plan)
    diagnostic = next(d for d in err.value.diagnostics if d.code == "TX518")
    assert "nnx_layers.RowParallelLinear" in diagnostic.hint


@pytest.mark.slow
def test_the_flax_nnx_example_matches_one_device():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "examples" / "flax_nnx" / "train.py"
    result = subprocess.run(
        [sys.executable, str(script), "--plan", "dp_tp", "--steps", "3", "--check"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["max_relative_parameter_error"] < 1e-5 and summary["max_relative_loss_error"] < 1e-5


# -- Equinox ----------------------------------------------------------------------------------
def eqx_mlp():
    from titanax.nn.eqx_layers import RowParallelLinear

    class MLP(eqx.Module):
        up: eqx.nn.Linear
        down: RowParallelLinear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.up = eqx.nn.Linear(16, 32, key=k1)
            self.down = RowParallelLinear(32, 4, key=k2)

        def __call__(self, x):
            return self.down(jax.nn.gelu(self.up(x)))

    params, static = eqx.partition(MLP(jax.random.PRNGKey(0)), eqx.is_array)

    def loss_fn(params, batch):
        model = eqx.combine(params, static)
        return jnp.mean((jax.vmap(model)(batch["x"]) - batch["y"]) ** 2)

    return loss_fn, params


def test_an_equinox_model_stored_out_in_under_dp_x_tp_matches_itself_on_one_device():
    loss_fn, params = eqx_mlp()
    data = batches(3)
    tp = tx.TP(
        axis="model", rules={"up/weight": "column", "up/bias": "column", "down/weight": "row"}, weight_layout="out_in"
    )
    engine, state, losses = train(loss_fn, params, data, tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tp))
    specs = {node.path: node.spec for node in engine.ir.params()}
    # Equinox stores (out, in): column splits the output rows, row the input columns.
    assert specs["up/weight"] == ("model", None) and specs["down/weight"] == (None, "model")
    ref_losses, ref_params = sgd_on_one_device(loss_fn, params, data)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(jax.device_get(state.params), ref_params) < 1e-5


def test_weight_layout_in_a_plan_file_and_its_errors():
    loaded = tx.load_plan(text='mesh { model = 8 }\ntensor_parallel over model { weight_layout = out_in, "w" = row }\n')
    assert loaded.plan.tensor_parallel.weight_layout == "out_in"
    with pytest.raises(tx.TitanaxError) as err:
        tx.load_plan(text="mesh { model = 8 }\ntensor_parallel over model { weight_layout = sideways }\n")
    assert err.value.diagnostics[0].code == "TX204" and "out_in" in err.value.diagnostics[0].hint
