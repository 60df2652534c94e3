"""``engine.fit(profile=tx.Profile(...))`` writes a jax.profiler trace of the chosen steps."""

import gzip
import json

import jax
import numpy as np
import pytest
from models import init_mlp, mlp_loss

import titanax as tx


@tx.step_fn
def train_step(state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def batches(count=5):
    rng = np.random.default_rng(0)
    return [
        {"x": rng.normal(size=(16, 4)).astype(np.float32), "y": rng.normal(size=(16, 3)).astype(np.float32)}
        for _ in range(count)
    ]


def engine():
    return tx.Engine(
        mesh=tx.MeshSpec(axes=("data",)), plan=tx.Plan(data_parallel=tx.DP(axis="data")), optimizer=tx.optim.sgd(0.1)
    )


def fit_with(profile, steps):
    e = engine()
    e.fit(train_step, batches(), steps=steps, progress=False, state=e.create_state(init_mlp()), profile=profile)


def test_fit_traces_the_chosen_steps(tmp_path):
    fit_with(tx.Profile(tmp_path, 2, 3), steps=5)
    planes = list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))
    traces = list(tmp_path.glob("plugins/profile/*/*.trace.json.gz"))
    assert len(planes) == 1 and planes[0].stat().st_size > 0 and len(traces) == 1
    events = json.loads(gzip.decompress(traces[0].read_bytes()))["traceEvents"]
    names = " ".join(str(event.get("name", "")) for event in events)
    assert "train_step" in names or "jit" in names  # the step's execution is in the trace


def test_a_run_that_ends_before_the_last_step_still_writes_the_trace(tmp_path):
    fit_with(tx.Profile(tmp_path, 3, 9), steps=3)
    assert list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))


@pytest.mark.parametrize(("first", "last"), [(0, None), (3, 2), (True, None), (1.5, 2)])
def test_bad_profiles(first, last, tmp_path):
    with pytest.raises(tx.TrainingError, match="TX720"):
        tx.Profile(tmp_path, first, last)
