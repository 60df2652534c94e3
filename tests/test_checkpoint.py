"""Checkpoints: bit-identical resume, restore onto another mesh and plan, SIGKILL mid-save, bad directories."""

import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models import Recorder

import titanax as tx
from titanax import nn

TP_RULES = {"dense1/w": "column", "dense1/b": "column", "dense2/w": "row"}


def make_engine(directory, mesh=("data",), shape=None, tp=False, every=4, keep=3, async_=True, devices=None):
    axes = tuple(mesh)
    plan = tx.Plan(
        data_parallel=tx.DP(axis="data"),
        tensor_parallel=tx.TP(axis="model", rules=TP_RULES) if tp else None,
    )
    return tx.Engine(
        mesh=tx.MeshSpec(axes=axes, shape=shape, devices=devices),
        plan=plan,
        optimizer=tx.optim.adamw(1e-2),
        checkpoint=tx.Checkpoint(directory, every=every, keep=keep, async_=async_),
    )


def init_params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {
        "dense1": {"w": jax.random.normal(k1, (8, 16)) * 0.3, "b": jnp.zeros((16,))},
        "dense2": {"w": jax.random.normal(k2, (16, 4)) * 0.3, "b": jnp.zeros((4,))},
    }


@tx.step_fn
def dropout_step(state, batch):
    """An MLP with dropout: resume must also reproduce the random masks."""

    def loss_fn(params):
        h = jnp.tanh(nn.column_dense(params["dense1"], batch["x"]))
        keep = jax.random.bernoulli(state.rng_key(), 0.8, h.shape)
        h = jnp.where(keep, h / 0.8, 0.0)
        return jnp.mean((nn.row_dense(params["dense2"], h) - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}


def loader():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = np.sin(x[:, :4]).astype(np.float32)
    return tx.data.ArrayLoader({"x": x, "y": y}, batch_size=32, seed=3)


def losses_of(recorder):
    return {step: row["loss"] for step, row in recorder.rows.items() if "loss" in row}


def test_a_resumed_run_repeats_an_uninterrupted_one_bit_for_bit(tmp_path):
    whole = make_engine(tmp_path / "whole")
    whole.loggers = (straight := Recorder(),)
    final = whole.fit(
        dropout_step, loader(), steps=12, log_every=1, progress=False, state=whole.create_state(init_params())
    )

    first = make_engine(tmp_path / "split")
    first.fit(dropout_step, loader(), steps=8, log_every=1, progress=False, state=first.create_state(init_params()))
    first.close()
    second = make_engine(tmp_path / "split")
    second.loggers = (resumed := Recorder(),)
    state = second.create_state(init_params(), seed=99)  # the RNG key must come from the checkpoint
    state = second.fit(dropout_step, loader(), steps=12, log_every=1, progress=False, resume=True, state=state)

    assert second.host_step == 12 and second.data_position == 12
    assert sorted(losses_of(resumed)) == [9, 10, 11, 12]
    assert all(losses_of(resumed)[s] == losses_of(straight)[s] for s in (9, 10, 11, 12))
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "target",
    [
        {"mesh": ("data", "model"), "shape": (2, 4), "tp": True},
        {"mesh": ("data",), "devices": 1},
    ],
    ids=["dp2xtp4", "one-device"],
)
def test_a_checkpoint_saved_under_dp8_restores_onto_another_mesh_and_plan(tmp_path, target):
    saver = make_engine(tmp_path)
    state = saver.create_state(init_params())
    state = saver.fit(dropout_step, loader(), steps=4, progress=False, state=state)
    saver.close()

    engine = make_engine(tmp_path, **target)
    restored = engine.restore(engine.create_state(init_params()))
    assert engine.host_step == 4 and int(restored.step) == 4
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    w1 = restored.params["dense1"]["w"]
    assert w1.sharding.mesh.shape == engine.mesh.shape
    if target.get("tp"):
        assert w1.sharding.spec == jax.P(None, "model")
        assert w1.addressable_shards[0].data.shape == (8, 4)  # each device read only its columns
        mu = restored.opt_state[0].mu["dense1"]["w"]
        assert mu.sharding.spec == jax.P(None, "model")
    # Training goes on under the new plan.
    engine.fit(dropout_step, loader(), steps=5, progress=False, state=restored)
    engine.close()


def test_keep_and_every(tmp_path):
    engine = make_engine(tmp_path, every=2, keep=2, async_=False)
    engine.fit(dropout_step, loader(), steps=7, progress=False, state=engine.create_state(init_params()))
    engine.close()
    assert sorted(int(p) for p in os.listdir(tmp_path)) == [6, 7]  # every 2 steps and the last, newest 2 kept


KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys, time
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp
    import titanax as tx

    engine = tx.Engine(mesh=tx.MeshSpec(axes=("data",)), plan=tx.Plan(data_parallel=tx.DP(axis="data")),
                       optimizer=tx.optim.sgd(0.1), checkpoint=tx.Checkpoint(sys.argv[1], every=1))
    state = engine.create_state({"w": jnp.full((1024, 1024), 1.0), "v": jnp.full((64, 1024, 256), 2.0)})
    engine.host_step = 1
    engine.save(state)
    engine.checkpointer.wait()
    state = state.replace(params={"w": state.params["w"] + 1, "v": state.params["v"] + 1})
    engine.host_step = 2
    engine.save(state)  # asynchronous: returns while the files are being written
    print("saving", flush=True)
    # Kill the process once orbax has started writing step 2 (its temporary directory exists).
    deadline = time.time() + 60
    while not any(name.startswith("2.") for name in os.listdir(sys.argv[1])) and time.time() < deadline:
        time.sleep(0.001)
    print("writing" if time.time() < deadline else "never started", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_sigkill_during_an_async_save_leaves_the_previous_checkpoint(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SAVE)
    directory = tmp_path / "ckpt"
    result = subprocess.run([sys.executable, str(script), str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert "saving\nwriting" in result.stdout
    assert "2" not in os.listdir(directory)  # step 2 never became visible...
    assert any(name.startswith("2.") for name in os.listdir(directory))  # ...though it was being written

    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data")),
        optimizer=tx.optim.sgd(0.1),
        checkpoint=tx.Checkpoint(directory),
    )
    template = engine.create_state({"w": jnp.zeros((1024, 1024)), "v": jnp.zeros((64, 1024, 256))})
    restored = engine.restore(template)
    assert engine.host_step == 1
    assert float(restored.params["w"][0, 0]) == 1.0 and float(restored.params["v"].max()) == 2.0
    # The resumed run saves step 2 again over the remains of the killed save.
    engine.host_step = 2
    engine.save(restored)
    engine.close()
    assert sorted(os.listdir(directory)) == ["1", "2"]


def saved_checkpoint(directory):
    engine = make_engine(directory, async_=False)
    engine.fit(dropout_step, loader(), steps=4, progress=False, state=engine.create_state(init_params()))
    engine.close()
    return directory / "4"


def test_a_foreign_directory_is_refused(tmp_path):
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "weights.bin").write_bytes(b"\x80\x04not ours")
    engine = make_engine(tmp_path)
    state = engine.create_state(init_params())
    with pytest.raises(tx.CheckpointError, match="TX701.*not a Titanax checkpoint"):
        engine.restore(state)


def test_damaged_files_are_refused_and_leave_the_state_untouched(tmp_path):
    step_dir = saved_checkpoint(tmp_path)
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 64:
                with open(path, "r+b") as handle:
                    handle.truncate(16)
    engine = make_engine(tmp_path)
    state = engine.create_state(init_params())
    before = [np.asarray(x) for x in jax.tree.leaves(state)]
    with pytest.raises(tx.CheckpointError, match="TX702.*cannot be read"):
        engine.restore(state)
    assert engine.host_step == 0
    for a, b in zip(before, jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    saved_checkpoint(tmp_path)
    engine = make_engine(tmp_path)
    params = init_params()
    params["dense2"]["w"] = jnp.zeros((16, 5))
    with pytest.raises(tx.CheckpointError, match=r"TX703.*params dense2/w.*\(16, 4\).*\(16, 5\)"):
        engine.restore(engine.create_state(params))


def test_restore_without_a_checkpoint_and_bad_options(tmp_path):
    engine = make_engine(tmp_path)
    with pytest.raises(tx.CheckpointError, match="TX704.*no complete checkpoint"):
        engine.restore(engine.create_state(init_params()))
    with pytest.raises(tx.CheckpointError, match="TX705.*every=0"):
        tx.Checkpoint(tmp_path, every=0)
    # resume=True with nothing saved yet starts from the beginning.
    engine.fit(dropout_step, loader(), steps=2, progress=False, resume=True, state=engine.create_state(init_params()))
    assert engine.host_step == 2


def test_no_pickle_in_a_checkpoint(tmp_path):
    step_dir = saved_checkpoint(tmp_path)
    for root, _, files in os.walk(step_dir):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                head = handle.read(2)
            assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), name


def test_a_failed_background_save_is_reported_at_the_next_wait(tmp_path, monkeypatch):
    engine = make_engine(tmp_path)
    state = engine.create_state(init_params())

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(engine.checkpointer.manager, "save", disk_full)
    engine.save(state)  # returns: the failure happens in the background
    with pytest.raises(tx.CheckpointError, match="TX706.*step 0.*No space left on device"):
        engine.checkpointer.wait()
    engine.close()


def test_a_fresh_run_refuses_a_directory_holding_another_runs_checkpoints(tmp_path):
    saved_checkpoint(tmp_path)
    engine = make_engine(tmp_path)
    with pytest.raises(tx.CheckpointError, match=r"TX707.*another run \(steps \[4\]\)"):
        engine.fit(dropout_step, loader(), steps=8, progress=False, state=engine.create_state(init_params()))
