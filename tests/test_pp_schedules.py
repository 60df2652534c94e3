"""Every pipeline schedule and remat policy against the sequential single-device reference.

GPipe, lockstep 1F1B, interleaved 1F1B (two chunks per device) and ZB-H1 (split
backward), each with ``remat = none`` (residuals stashed, no forward runs twice)
and ``remat = full`` (the backward reruns the forward), train an MLP with SGD:
losses and parameters after each step must match plain JAX within 1e-5, and the
schedules must agree with each other.
"""

import jax
import numpy as np
import pytest
from models import max_relative_error
from test_pp_numerics import REFERENCE, mlp_batches, mlp_params, run, sgd_reference

import titanax as tx

SCHEDULES = [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("zbh1", 1)]


def train(schedule, virtual, stages, microbatches, remat, batches, layers=None):
    params = mlp_params(layers or 2 * stages * virtual)
    pp = tx.PP(axis="pipe", microbatches=microbatches, schedule=schedule, virtual_stages=virtual, remat=remat)
    return run(tx.Plan(pipeline_parallel=pp), tx.MeshSpec(devices=stages, axes=("pipe",)), params, batches), params


FAST = [(s, v, p, m, r) for s, v in SCHEDULES for r in ("none", "full") for p, m in ((2, 2), (2, 5))]
FAST += [(s, v, 4, 4, "none") for s, v in SCHEDULES]
SLOW = [(s, v, p, m, r) for s, v in SCHEDULES for r in ("none", "full") for p, m in ((4, 4), (4, 9))]
SLOW = [case for case in SLOW if case not in FAST]


def check_against_reference(schedule, virtual, stages, microbatches, remat):
    batches = mlp_batches(2, 2 * microbatches)
    (losses, _, state), params = train(schedule, virtual, stages, microbatches, remat, batches)
    got = jax.device_get(state.engine.params_in_model_order(state))
    ref_losses, ref_params = sgd_reference(REFERENCE, params, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert max_relative_error(got, ref_params) < 1e-5
    return got


def ids(cases):
    return [f"{s}{'-v' + str(v) if v > 1 else ''}-p{p}-m{m}-{r}" for s, v, p, m, r in cases]


@pytest.mark.parametrize(("schedule", "virtual", "stages", "microbatches", "remat"), FAST, ids=ids(FAST))
def test_schedule_and_remat_match_the_sequential_reference(schedule, virtual, stages, microbatches, remat):
    check_against_reference(schedule, virtual, stages, microbatches, remat)


@pytest.mark.slow
@pytest.mark.parametrize(("schedule", "virtual", "stages", "microbatches", "remat"), SLOW, ids=ids(SLOW))
def test_schedule_and_remat_match_the_sequential_reference_p4(schedule, virtual, stages, microbatches, remat):
    check_against_reference(schedule, virtual, stages, microbatches, remat)


def test_every_schedule_gives_the_same_parameters():
    batches = mlp_batches(1, 8)
    results = {}
    for schedule, virtual in SCHEDULES:
        (_, _, state), _ = train(schedule, virtual, 2, 4, "none", batches, layers=4)
        results[schedule] = jax.device_get(state.engine.params_in_model_order(state))
    for schedule, got in results.items():
        assert max_relative_error(got, results["gpipe"]) < 1e-6, schedule
