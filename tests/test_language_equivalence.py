"""The Python API and the ``.tx`` language are two front ends of one IR."""

from pathlib import Path

import pytest

import titanax as tx
from titanax.cli import main
from titanax.ir import build_ir, ir_to_json, print_ir
from titanax.passes import Target, compile_plan

PLANS = Path(__file__).parent.parent / "examples" / "plans"

PYTHON_PLANS = {
    "dp.tx": (tx.MeshSpec(axes=("data",)), tx.Plan(data_parallel=tx.DP(axis="data"))),
    "dp_tp.tx": (
        tx.MeshSpec(devices=8, axes=("data", "model"), shape=(2, 4)),
        tx.Plan(
            data_parallel=tx.DP(axis="data"),
            tensor_parallel=tx.TP(
                axis="model",
                rules={
                    "**/attn/qkv/w": "column",
                    "**/attn/qkv/b": "column",
                    "**/attn/out/w": "row",
                    "**/mlp/up/w": "column",
                    "**/mlp/up/b": "column",
                    "**/mlp/down/w": "row",
                    "embed/tokens": ("model", None),
                    "head/w": "column",
                },
            ),
        ),
    ),
    "dp_pp.tx": (
        tx.MeshSpec(devices=8, axes=("data", "pipe"), shape=(2, 4)),
        tx.Plan(
            data_parallel=tx.DP(axis="data"),
            pipeline_parallel=tx.PP(
                axis="pipe",
                microbatches=8,
                schedule="1f1b",
                stages=[
                    ("embed", "pos", "blocks[0:3]"),
                    ("blocks[3:6]",),
                    ("blocks[6:9]",),
                    ("blocks[9:12]", "ln_f", "head"),
                ],
            ),
        ),
    ),
    "3d.tx": (
        tx.MeshSpec(devices=8, axes=("data", "model", "pipe"), shape=(2, 2, 2)),
        tx.Plan(
            data_parallel=tx.DP(axis="data", accumulate_steps=1),
            tensor_parallel=tx.TP(
                axis="model",
                rules={
                    "**/attn/qkv/w": "column",
                    "**/attn/qkv/b": "column",
                    "**/attn/out/w": "row",
                    "**/mlp/up/w": "column",
                    "**/mlp/up/b": "column",
                    "**/mlp/down/w": "row",
                    "embed/tokens": "row",
                    "head/w": "column",
                },
                sequence_parallel=False,
            ),
            pipeline_parallel=tx.PP(
                axis="pipe",
                microbatches=4,
                schedule="1f1b",
                stages=[("embed", "pos", "blocks[0:6]"), ("blocks[6:12]", "ln_f", "head")],
            ),
            precision=tx.Precision(params="float32", compute="bfloat16", output="float32"),
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(PYTHON_PLANS))
def test_file_and_python_give_the_same_objects_and_ir(name):
    loaded = tx.load_plan(PLANS / name)
    mesh, plan = PYTHON_PLANS[name]
    assert (loaded.mesh, loaded.plan) == (mesh, plan)
    target = Target(device_count=8)
    from_file = loaded.compile(target=target)
    from_python = compile_plan(mesh, plan, target=target)
    assert print_ir(from_file) == print_ir(from_python)
    assert ir_to_json(from_file) == ir_to_json(from_python)


@pytest.mark.parametrize("name", sorted(PYTHON_PLANS))
def test_dump_ir_from_the_command_line_matches_python(name, capsys):
    assert main(["compile", str(PLANS / name), "--dump-ir", "--devices", "8"]) == 0
    mesh, plan = PYTHON_PLANS[name]
    assert capsys.readouterr().out == print_ir(compile_plan(mesh, plan, target=Target(device_count=8)))


def test_file_nodes_carry_locations_python_nodes_do_not():
    from_file = tx.load_plan(PLANS / "3d.tx").build_ir()
    from_python = build_ir(*PYTHON_PLANS["3d.tx"])
    assert str(from_file.node("stage.1").location).endswith("3d.tx:32:3")
    assert from_python.node("stage.1").location is None
    assert "3d.tx:32:3" in print_ir(from_file, locations=True)


def test_loaded_plan_runs_in_the_engine():
    import jax
    import jax.numpy as jnp

    loaded = tx.load_plan(text="mesh { data = auto }\ndata_parallel over data")
    engine = tx.Engine(mesh=loaded.mesh, plan=loaded.plan, optimizer=tx.optim.sgd(0.1))
    state = engine.create_state({"w": jnp.ones((2,))})

    @tx.step_fn
    def step(state, batch):
        def loss_fn(params):
            return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), {"loss": loss}

    batch = {"x": jnp.ones((8, 2)), "y": jnp.zeros((8,))}
    state, metrics = step(state, batch)
    assert float(metrics["loss"]) == pytest.approx(4.0)
    assert engine.ir.data_parallel().axes == ("data",)
