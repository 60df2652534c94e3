"""Remat policies on the stacked blocks without pipeline parallelism (DP, TP): same numbers, less kept.

``tx.Plan(activations=tx.Activations(remat=...))`` (``activations { remat = ... }`` in a
``.tx`` file) runs each block of ``tx.pipeline.value_and_grad`` under ``jax.checkpoint``
with the policy's checkpoint policy. The losses and parameters after SGD steps must
equal the plain single-device reference, and the lowered step must hold the
checkpoint (``jax.checkpoint`` marks what it recomputes with optimization barriers).
"""

import jax
import pytest
from models import GPT, gpt_batches, gpt_pipeline_step, train_against_gpt_reference

import titanax as tx
from titanax import nn
from titanax.passes import Target

LR = 0.3
GPT_STACKED = {**GPT, "layers": 2}


def engine_for(remat, shape=(4, 2)):
    plan = tx.Plan(
        data_parallel=tx.DP(axis="data"),
        tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES),
        activations=tx.Activations(remat=remat) if remat is not None else None,
    )
    return tx.Engine(mesh=tx.MeshSpec(axes=("data", "model"), shape=shape), plan=plan, optimizer=tx.optim.sgd(LR))


@pytest.mark.parametrize("remat", ["none", "dots", "full"])
def test_dp_x_tp_with_remat_matches_the_reference(remat):
    params = nn.init_gpt(jax.random.PRNGKey(0), stacked=True, **GPT_STACKED)
    batches = gpt_batches(2, 8)
    engine = engine_for(remat)
    state = engine.create_state(params, stacked="blocks")
    train_against_gpt_reference(gpt_pipeline_step, state, params, batches, LR)


def test_the_policy_reaches_the_program():
    params = nn.init_gpt(jax.random.PRNGKey(0), stacked=True, **GPT_STACKED)
    batch = gpt_batches(1, 8)[0]
    texts = {}
    for remat in (None, "full"):
        engine = engine_for(remat)
        texts[remat] = gpt_pipeline_step.lower(engine.create_state(params, stacked="blocks"), batch).as_text()
    assert "optimization_barrier" in texts["full"] and "optimization_barrier" not in texts[None]


def test_activations_in_a_plan_file_and_the_ir():
    loaded = tx.load_plan(text="mesh { data = 8 }\ndata_parallel over data\nactivations { remat = full }\n")
    assert loaded.plan.activations == tx.Activations(remat="full")
    ir = loaded.compile(target=Target(device_count=8))
    assert ir.activations().remat == "full" and ir.remat() == "full"


def test_the_pipeline_takes_the_plans_policy_unless_it_names_one():
    text = "mesh { pipe = 2 }\npipeline over pipe { microbatches = 2 }\nactivations { remat = dots }\n"
    assert tx.load_plan(text=text).compile(target=Target(device_count=2)).remat() == "dots"
    with pytest.raises(tx.PlanError, match="(?s)TX204.*give the policy once"):
        tx.Plan(
            pipeline_parallel=tx.PP(axis="pipe", microbatches=2, remat="full"), activations=tx.Activations(remat="dots")
        )


def test_an_unknown_policy_is_located():
    with pytest.raises(tx.TitanaxError) as info:
        tx.load_plan(text="mesh { data = 8 }\nactivations { remat = everything }\n")
    (d,) = info.value.diagnostics
    assert d.code == "TX234" and d.location.line == 2
