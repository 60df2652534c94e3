"""Checkpoint integrity: only finite states are saved, checksums and a metadata schema are verified on
restore, one writer per directory, readers racing a writer, and every I/O failure is a TX error."""

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from models import Recorder

import titanax as tx
from titanax.runtime import checkpoint as checkpoint_module

WIDTH = 8
BOMB = 2
"""The batch position (step 3) whose finite loss comes with an update that overflows the parameters."""


def make_engine(directory, *, every=1, keep=1, async_=True, nonfinite="raise", lr=1000.0, loggers=(), **mesh):
    plan = tx.Plan(
        data_parallel=tx.DP(axis="data"),
        tensor_parallel=tx.TP(axis="model", rules={"w": "column"}) if "shape" in mesh else None,
    )
    return tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model") if "shape" in mesh else ("data",), **mesh),
        plan=plan,
        optimizer=tx.optim.sgd(lr),
        loggers=loggers,
        nonfinite=nonfinite,
        checkpoint=tx.Checkpoint(directory, every=every, keep=keep, async_=async_),
    )


def init_params():
    return {"w": jnp.ones((WIDTH,)), "big": jnp.zeros((4, 4))}


@tx.step_fn
def linear_step(state, batch):
    """loss = mean(x @ w): its gradient is the batch mean of x, so a batch of 1e36 gives a finite loss
    (8e36 times w) and, with learning rate 1000, an update of -1e39: -inf in float32."""

    def loss_fn(params):
        return jnp.mean(batch["x"] @ params["w"]) + jnp.sum(params["big"] ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}


def batches(position):
    scale = 1e36 if position == BOMB else 1e-3
    return {"x": np.full((16, WIDTH), scale, np.float32)}


def saved_steps(directory):
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def restored_params(directory, **options):
    reader = make_engine(directory, **options)
    state = reader.restore(reader.create_state(init_params()))
    return reader.host_step, np.asarray(state.params["w"])


# -- 1. only finite states are saved ---------------------------------------------------------------


@pytest.mark.parametrize("async_", [True, False], ids=["async", "sync"])
def test_an_update_that_overflows_stops_raise_before_its_state_is_saved(tmp_path, async_):
    engine = make_engine(tmp_path, keep=1, async_=async_)
    with pytest.raises(
        tx.NonFiniteError,
        match=r"(?s)TX711.*after step 3 hold Inf or NaN values \(params/w: 8\).*step 3 was not saved.*last checkpoint is step 2",
    ):
        engine.fit(
            linear_step, batches, steps=6, log_every=100, progress=False, state=engine.create_state(init_params())
        )
    engine.close()
    # keep=1 kept the newest finite checkpoint, step 2, and step 3 was never written.
    assert saved_steps(tmp_path) == [2]
    host_step, w = restored_params(tmp_path)
    assert host_step == 2 and np.isfinite(w).all()


def test_skip_refuses_an_update_whose_result_is_not_finite(tmp_path):
    recorder = Recorder()
    engine = make_engine(tmp_path, keep=1, nonfinite="skip", loggers=[recorder])
    state = engine.fit(
        linear_step, batches, steps=5, log_every=1, progress=False, state=engine.create_state(init_params())
    )
    engine.close()
    assert [recorder.rows[s]["skipped"] for s in range(1, 6)] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert np.isfinite(recorder.rows[3]["loss"])  # the loss was finite: only the update was not
    assert np.isfinite(np.asarray(state.params["w"])).all()
    assert saved_steps(tmp_path) == [5]
    host_step, w = restored_params(tmp_path, nonfinite="skip")
    assert host_step == 5 and np.isfinite(w).all()


def test_a_non_finite_state_is_never_saved_even_split_over_tensor_parallel_axes(tmp_path):
    # A split state cannot be checked inside the step without a collective; the save checks it.
    engine = make_engine(tmp_path, shape=(2, 4), async_=False)
    state = engine.create_state(init_params())
    assert state.params["w"].sharding.spec == jax.P("model")
    w = np.ones(WIDTH, np.float32)
    w[5] = -np.inf  # on one of the four shards only
    poisoned = state.replace(params={**state.params, "w": jax.device_put(w, state.params["w"].sharding)})
    engine.host_step = 1
    engine.save(state)
    engine.host_step = 2
    with pytest.raises(
        tx.NonFiniteError, match=r"(?s)TX712.*step 2 holds Inf or NaN values \(params/w: 1\).*newest is step 1"
    ):
        engine.save(poisoned)
    engine.close()
    assert saved_steps(tmp_path) == [1]


# -- 2. integrity ----------------------------------------------------------------------------------


def saved_once(directory, params=None, lr=0.1):
    engine = make_engine(directory, keep=None, async_=False, lr=lr)
    state = engine.create_state(params or init_params())
    engine.fit(linear_step, batches, steps=1, progress=False, state=state)
    engine.close()
    return directory / "1"


def test_a_flipped_bit_in_an_arrays_data_is_refused_naming_the_array(tmp_path):
    rng = np.random.default_rng(0)
    params = {"w": jnp.ones((WIDTH,)), "big": jnp.asarray(rng.normal(size=(256, 256)), jnp.float32)}
    step_dir = saved_once(tmp_path, params)
    data_files = [
        os.path.join(root, name)
        for root, _, names in os.walk(step_dir / "state")
        for name in names
        if os.path.basename(root) == "d"
    ]
    largest = max(data_files, key=os.path.getsize)
    assert os.path.getsize(largest) > 50_000  # "big" (256 KiB) is nearly all of it; the rest is under 1 KiB
    with open(largest, "r+b") as handle:
        handle.seek(os.path.getsize(largest) // 2)
        byte = handle.read(1)[0]
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte ^ 0x10]))
    reader = make_engine(tmp_path)
    with pytest.raises(tx.CheckpointError, match=r"(?s)TX70[28].*params/big") as raised:
        reader.restore(reader.create_state(params))
    assert reader.host_step == 0
    if raised.value.code == "TX708":
        assert "checksum mismatch" in str(raised.value)


def set_meta(step_dir, **changes):
    path = step_dir / "meta" / "metadata"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"host_step": -7}, r"host_step is -7 \(int\), not an integer in 0\.\.2\*\*31-1"),
        ({"host_step": 5}, r"host_step is 5, but the checkpoint is step 1"),
        ({"host_step": 2**40}, r"host_step is 1099511627776"),
        ({"data_position": "3"}, r"data_position is '3' \(str\), not a non-negative integer"),
        ({"data_position": -1}, r"data_position is -1"),
        ({"host_step": True, "mesh": {"data": "8"}}, r"host_step is True \(bool\).*mesh is \{'data': '8'\}"),
        ({"params": {"w": [[8], 7]}}, r"params entries w are not \[shape, dtype\]"),
        ({"plan_ir": None}, r"'plan_ir' is missing"),
        ({"checksums": {"params/w": "not hex"}}, r"checksums is .*not a dict of array path -> 16 hex digits"),
    ],
    ids=["negative", "inconsistent", "huge", "string", "negative-position", "types", "params", "missing", "checksum"],
)
def test_tampered_metadata_is_refused_before_anything_is_used(tmp_path, changes, message):
    step_dir = saved_once(tmp_path)
    set_meta(step_dir, **changes)
    reader = make_engine(tmp_path)
    with pytest.raises(tx.CheckpointError, match=r"(?s)TX709.*" + message):
        reader.restore(reader.create_state(init_params()))
    assert reader.host_step == 0


def test_fit_does_not_resume_from_tampered_metadata(tmp_path):
    set_meta(saved_once(tmp_path), host_step=-7, data_position=-1)
    engine = make_engine(tmp_path)
    with pytest.raises(tx.CheckpointError, match=r"(?s)TX709.*host_step is -7.*data_position is -1"):
        engine.fit(linear_step, batches, steps=3, progress=False, resume=True, state=engine.create_state(init_params()))
    assert engine.host_step == 0 and engine.data_position == 0


def test_a_checksum_that_is_not_the_arrays_is_refused(tmp_path):
    step_dir = saved_once(tmp_path)
    meta = json.loads((step_dir / "meta" / "metadata").read_text())
    set_meta(step_dir, checksums={**meta["checksums"], "params/w": "0123456789abcdef"})
    reader = make_engine(tmp_path)
    with pytest.raises(tx.CheckpointError, match=r"(?s)TX708.*data of params/w differs from what was saved"):
        reader.restore(reader.create_state(init_params()))


# -- 3. one writer per directory; readers racing a writer ------------------------------------------


def test_a_second_writer_in_one_process_is_refused_until_the_first_closes(tmp_path):
    first = make_engine(tmp_path, lr=0.1)
    first.fit(linear_step, batches, steps=2, progress=False, state=first.create_state(init_params()))
    second = make_engine(tmp_path, lr=0.1)
    with pytest.raises(tx.CheckpointError, match=r"(?s)TX707.*being written by another Engine in this process"):
        second.fit(linear_step, batches, steps=4, progress=False, resume=True, state=second.create_state(init_params()))
    # Reading needs no lock: an evaluator restores while the first engine still holds the directory.
    assert restored_params(tmp_path)[0] == 2
    first.close()
    second.fit(linear_step, batches, steps=4, progress=False, resume=True, state=second.create_state(init_params()))
    second.close()
    assert saved_steps(tmp_path) == [4]
    assert sorted(os.listdir(tmp_path)) == ["4"]  # the lock file goes with its writer


HOLDER = textwrap.dedent(
    """
    import sys, time
    from titanax.runtime.checkpoint import Checkpoint, Checkpointer

    writer = Checkpointer(Checkpoint(sys.argv[1]))
    writer.acquire()
    print("locked", flush=True)
    time.sleep(300)
    """
)


def test_another_process_writing_the_directory_is_refused_and_its_death_frees_it(tmp_path):
    directory = tmp_path / "ckpt"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # What a killed save leaves behind: orbax's temporary directory, a half-deleted old step.
        (directory / "3.orbax-checkpoint-tmp").mkdir()
        (directory / ".titanax-deleting-1").mkdir()
        engine = make_engine(directory, lr=0.1)
        with pytest.raises(tx.CheckpointError, match=rf"(?s)TX707.*another run \(process {holder.pid} on "):
            engine.fit(
                linear_step, batches, steps=2, progress=False, resume=True, state=engine.create_state(init_params())
            )
        assert engine.host_step == 0
        assert (directory / "3.orbax-checkpoint-tmp").exists()  # a refused run touches nothing
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead writer's lock; the next writer cleans up after it.
    engine.fit(linear_step, batches, steps=2, progress=False, resume=True, state=engine.create_state(init_params()))
    engine.close()
    assert sorted(os.listdir(directory)) == ["2"]


def test_a_reader_whose_step_is_deleted_mid_read_gets_the_newest_or_tx704(tmp_path, monkeypatch):
    writer = make_engine(tmp_path, keep=None, async_=False, lr=0.1)
    writer.fit(linear_step, batches, steps=3, progress=False, state=writer.create_state(init_params()))
    writer.close()
    reader = make_engine(tmp_path)
    real_restore = reader.checkpointer.manager.restore

    def pruned_meanwhile(step, *args, **kwargs):
        if step == 3 and (tmp_path / "3").exists():
            os.rename(tmp_path / "3", tmp_path / ".titanax-deleting-3")  # what a writer's keep= does
        return real_restore(step, *args, **kwargs)

    monkeypatch.setattr(reader.checkpointer.manager, "restore", pruned_meanwhile)
    reader.restore(reader.create_state(init_params()))
    assert reader.host_step == 2  # the newest complete step once 3 was gone
    os.rename(tmp_path / ".titanax-deleting-3", tmp_path / "3")
    with pytest.raises(tx.CheckpointError, match=r"(?s)TX704.*step 3 .* was deleted while it was being read"):
        reader.restore(reader.create_state(init_params()), step=3)


def test_readers_racing_a_pruning_writer_get_whole_steps_or_tx_errors(tmp_path):
    writer = make_engine(tmp_path, keep=1, async_=False)
    state = writer.create_state(init_params())
    reader = make_engine(tmp_path)
    template = reader.create_state(init_params())
    outcomes, done = [], threading.Event()

    def read_until_done():
        while not done.is_set():
            try:
                reader.restore(template)
                outcomes.append(reader.host_step)
            except tx.TitanaxError as err:
                outcomes.append(err.code)
            except Exception as err:  # noqa: BLE001 - what this test exists to catch
                outcomes.append(err)

    writer.host_step = 1
    writer.save(state)
    thread = threading.Thread(target=read_until_done)
    thread.start()
    try:
        for step in range(2, 16):
            writer.host_step = step
            writer.save(state)
    finally:
        done.set()
        thread.join()
        writer.close()
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    assert {o for o in outcomes if isinstance(o, str)} <= {"TX704"}, outcomes
    assert any(isinstance(o, int) for o in outcomes), outcomes


# -- 6. every I/O failure is a TX70x error ---------------------------------------------------------


def test_an_uncreatable_directory_is_tx706_before_training(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    engine = make_engine(tmp_path / "file" / "ckpt")
    with pytest.raises(
        tx.CheckpointError, match=r"(?s)TX706.*cannot be (created|read).*a part of the path .* is a file"
    ):
        engine.fit(linear_step, batches, steps=2, progress=False, state=engine.create_state(init_params()))
    assert engine.host_step == 0


def test_a_path_no_file_system_accepts_is_tx705():
    with pytest.raises(tx.CheckpointError, match=r"TX705.*Checkpoint\(directory='runs/\\x00ckpt'\)"):
        tx.Checkpoint("runs/\x00ckpt")


def test_a_symlink_loop_is_tx706(tmp_path):
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    engine = make_engine(tmp_path / "a")
    with pytest.raises(tx.CheckpointError, match=r"(?s)TX706.*symbolic link that loops"):
        engine.fit(linear_step, batches, steps=2, progress=False, state=engine.create_state(init_params()))


def test_a_read_only_directory_is_tx706_before_training(tmp_path, monkeypatch):
    directory = tmp_path / "ro"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
    else:  # root writes anywhere: refuse writes there as a read-only mount would
        real_open = os.open

        def read_only(path, flags, *args, **kwargs):
            if str(path).startswith(str(directory)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only)
    engine = make_engine(directory)
    with pytest.raises(tx.CheckpointError, match=r"(?s)TX706.*cannot be written.*(read-only|write permission)"):
        engine.fit(linear_step, batches, steps=2, progress=False, state=engine.create_state(init_params()))
    assert engine.host_step == 0


def test_a_full_disk_during_a_synchronous_save_is_tx706_naming_the_step(tmp_path, monkeypatch):
    engine = make_engine(tmp_path, async_=False, lr=0.1)
    state = engine.create_state(init_params())

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine.checkpointer.manager, "save", disk_full)
    engine.host_step = 2
    with pytest.raises(
        tx.CheckpointError, match=r"(?s)TX706.*saving checkpoint step 2 .*No space left.*hint: free space"
    ):
        engine.save(state)
    engine.close()


def test_a_failed_background_commit_names_its_own_step(tmp_path, monkeypatch):
    engine = make_engine(tmp_path, keep=None, lr=0.1)
    state = engine.create_state(init_params())
    manager = engine.checkpointer.manager
    real_save, real_wait = manager.save, manager.wait_until_finished
    failed_commit = []

    # As orbax does: save() returns while the files are written in the background, and a failure
    # there is raised by the next save() or wait_until_finished().
    def save(step, *args, **kwargs):
        if failed_commit:
            raise failed_commit.pop()
        result = real_save(step, *args, **kwargs)
        if step == 2:
            failed_commit.append(OSError(errno.EIO, "Input/output error"))
        return result

    def wait_until_finished():
        real_wait()
        if failed_commit:
            raise failed_commit.pop()

    monkeypatch.setattr(manager, "save", save)
    monkeypatch.setattr(manager, "wait_until_finished", wait_until_finished)
    engine.host_step = 2
    engine.save(state)
    engine.host_step = 4
    with pytest.raises(tx.CheckpointError, match=r"(?s)TX706.*saving checkpoint step 2 .*Input/output error"):
        engine.save(state)
        engine.checkpointer.wait()
    engine.close()


def test_a_reader_on_a_missing_directory_creates_nothing(tmp_path):
    reader = make_engine(tmp_path / "missing")
    with pytest.raises(tx.CheckpointError, match="(?s)TX704.*no complete checkpoint"):
        reader.restore(reader.create_state(init_params()))
    assert not (tmp_path / "missing").exists()
    assert checkpoint_module.LOCK_NAME not in os.listdir(tmp_path)


def test_a_checkpoint_written_before_the_finite_check_is_not_resumed(tmp_path):
    # What an older Titanax left with keep=1: format 1 (no checksums) holding -inf parameters.
    engine = make_engine(tmp_path, async_=False)
    state = engine.create_state(init_params())
    tree = checkpoint_module._tree_of(state)
    tree["params"] = {**tree["params"], "w": jnp.full((WIDTH,), -jnp.inf)}
    meta = {
        "format": "titanax-checkpoint/1",
        "host_step": 3,
        "data_position": 3,
        "mesh": {"data": 8},
        "process_count": 1,
        "plan_ir": "",
        "params": checkpoint_module._describe(state.params),
        "opt_state": checkpoint_module._describe(state.opt_state),
        "loss_scale": False,
    }
    args = checkpoint_module.ocp.args
    engine.checkpointer.acquire()
    engine.checkpointer.manager.save(3, args=args.Composite(state=args.StandardSave(tree), meta=args.JsonSave(meta)))
    engine.checkpointer.manager.wait_until_finished()
    with pytest.raises(tx.NonFiniteError, match=r"(?s)TX712.*checkpoint .*3 holds Inf or NaN values \(params/w: 8\)"):
        engine.fit(linear_step, batches, steps=5, progress=False, resume=True, state=state)
    assert engine.host_step == 0
    engine.close()


def test_the_state_check_of_skip_finds_nan_and_inf_in_any_leaf():
    from titanax.lowering.stages import state_is_finite
    from titanax.runtime.state import TrainState

    def check(params, opt_state=()):
        return bool(
            state_is_finite(TrainState(step=0, params=params, opt_state=opt_state, rng=0, loss_scale=None, engine=None))
        )

    finite = {"w": jnp.ones((3, 3)), "empty": jnp.zeros((0,)), "ids": jnp.arange(3)}
    assert check(finite)
    assert not check({**finite, "w": jnp.ones((3, 3)).at[2, 1].set(jnp.nan)})
    assert not check(finite, opt_state=({"mu": jnp.full((4,), -jnp.inf)},))
    assert check(finite, opt_state=({"mu": jnp.full((4,), 3.0e38)},))  # huge but finite


def test_a_second_interrupt_during_the_final_wait_says_what_happens_to_the_save(tmp_path, monkeypatch):
    engine = make_engine(tmp_path, lr=0.1)

    def interrupted_again():
        raise KeyboardInterrupt  # the second Ctrl-C, while fit waits for the pending save

    def interrupted_at_step_3(position):
        if position == 2:
            monkeypatch.setattr(engine.checkpointer, "wait", interrupted_again)
            monkeypatch.setattr(engine.checkpointer, "pending_steps", lambda: [2])
            raise KeyboardInterrupt  # the first
        return batches(position)

    state = engine.create_state(init_params())
    with pytest.raises(KeyboardInterrupt) as raised:
        engine.fit(linear_step, interrupted_at_step_3, steps=5, progress=False, state=state)
    assert any("checkpoint step(s) [2] were being written" in note for note in raised.value.__notes__)
    monkeypatch.undo()
    engine.close()
    assert saved_steps(tmp_path) == [2]


def test_skip_under_tp_agrees_on_an_update_that_overflows_one_shard():
    """Only the devices holding model shard 0 see an infinite update: the IR's state_finite all-reduce
    makes every device skip it, so the parameters stay whole and finite everywhere."""
    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(2, 4)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data"), tensor_parallel=tx.TP(axis="model", rules={"w": "column"})),
        optimizer=tx.optim.sgd(10.0),
        nonfinite="skip",
    )
    assert [c.name for c in engine.ir.collectives("state_nonfinite")] == ["state_finite"]

    @tx.step_fn
    def overflow_one_shard(state, batch):
        def loss_fn(p):  # the columns of w are split over 'model': sum their squares over it
            return tx.collectives.psum(jnp.sum((batch["x"] @ p["w"]) ** 2), "model") / (8 * 8)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        first_shard = (tx.collectives.axis_index("model") == 0).astype(jnp.float32)
        grads = {"w": grads["w"] + 3e38 * first_shard}  # finite gradients, an infinite update on shard 0
        return state.apply_gradients(grads=grads), {"loss": loss}

    state = engine.create_state({"w": jnp.ones((4, 8))})
    before = np.asarray(state.params["w"])
    state, metrics = overflow_one_shard(state, {"x": jnp.ones((8, 4))})
    assert float(metrics["skipped"]) == 1.0
    np.testing.assert_array_equal(np.asarray(state.params["w"]), before)
