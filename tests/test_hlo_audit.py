"""The collectives in the compiled step are exactly those the plan IR declares."""

import jax
import pytest
from models import init_mlp, make_batches, mlp_loss

import titanax as tx
from titanax.lowering import collectives_in_hlo, shape_bytes


@tx.step_fn
def train_step(state, batch):
    loss, grads = jax.value_and_grad(mlp_loss)(state.params, batch)
    return state.apply_gradients(grads=grads), {"loss": loss}


def compiled_step(devices: int, accumulate_steps: int = 1):
    engine = tx.Engine(
        mesh=tx.MeshSpec(devices=devices, axes=("data",)),
        plan=tx.Plan(data_parallel=tx.DP(axis="data", accumulate_steps=accumulate_steps)),
        optimizer=tx.optim.sgd(0.1),
    )
    state = engine.create_state(init_mlp())
    batch = make_batches(1, 32)[0]
    hlo = train_step.lower(state, batch).compile().as_text()
    return collectives_in_hlo(hlo), train_step.plan_ir(state, batch), state


@pytest.mark.parametrize("devices", [1, 2, 8])
def test_hlo_collectives_are_exactly_the_declared_ones(devices):
    found, ir, state = compiled_step(devices)
    assert {c.op for c in found} == {c.op for c in ir.collectives()} == {"all-reduce"}
    assert sum(c.result_bytes for c in found) == sum(c.payload_bytes for c in ir.collectives())
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
    assert {c.operand: c.payload_bytes for c in ir.collectives()} == {"gradients": param_bytes, "metrics": 4}


def test_dp_step_has_no_gather_or_permute():
    found, _, _ = compiled_step(8)
    assert not [c for c in found if c.op in ("all-gather", "collective-permute", "reduce-scatter", "all-to-all")]


def test_single_device_step_keeps_only_trivial_declared_collectives():
    found, ir, _ = compiled_step(1)
    assert {c.group_size for c in ir.collectives()} == {1}
    assert sum(c.result_bytes for c in found) == sum(c.payload_bytes for c in ir.collectives())


def test_accumulation_adds_no_all_reduce():
    plain, _, _ = compiled_step(8)
    accumulated, _, _ = compiled_step(8, accumulate_steps=4)
    assert len(accumulated) <= len(plain)
    assert sum(c.result_bytes for c in accumulated) == sum(c.result_bytes for c in plain)
    assert all(c.entry for c in accumulated), "the gradient sync must sit outside the microbatch loop"


def test_hlo_parser_reads_tuple_and_loop_collectives():
    text = """HloModule m

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %ar = f32[4]{0} all-reduce(f32[4]{0} %x), replica_groups={{0,1}}
}

ENTRY %main (a: f32[3,2], b: f32[]) -> f32[] {
  %all-reduce = (f32[3,2]{1,0}, f32[]) all-reduce(%a, %b), channel_id=1
  %ag = bf16[8,2]{1,0} all-gather(bf16[4,2]{1,0} %c), dimensions={0}
  %cp = (f32[4]{0}, f32[4]{0}, u32[], u32[]) collective-permute-start(f32[4]{0} %d)
}
"""
    found = collectives_in_hlo(text)
    assert [(c.op, c.result_bytes, c.entry) for c in found] == [
        ("all-reduce", 16, False),
        ("all-reduce", 28, True),
        ("all-gather", 32, True),
        ("collective-permute", 16, True),
    ]
    assert shape_bytes("(f32[3,2], s32[], pred[5])") == 24 + 4 + 5


# -- tensor parallelism: the IR lists the user's collectives too -------------------------
def tp_step_audit(dp, tp, sequence_parallel):
    from collections import Counter

    from models import GPT, gpt_batches

    from titanax import nn

    @tx.step_fn
    def gpt_step(state, batch):
        loss, grads = jax.value_and_grad(nn.gpt_loss)(state.params, batch["ids"], batch["labels"])
        return state.apply_gradients(grads=grads), {"loss": loss}

    engine = tx.Engine(
        mesh=tx.MeshSpec(axes=("data", "model"), shape=(dp, tp)),
        plan=tx.Plan(
            data_parallel=tx.DP(axis="data"),
            tensor_parallel=tx.TP(axis="model", rules=nn.GPT_TP_RULES, sequence_parallel=sequence_parallel),
        ),
        optimizer=tx.optim.adamw(1e-3),
    )
    state = engine.create_state(nn.init_gpt(jax.random.PRNGKey(0), **GPT))
    batch = gpt_batches(1, 8)[0]
    hlo = gpt_step.lower(state, batch).compile().as_text()
    ir = gpt_step.plan_ir(state, batch)
    hlo_bytes, ir_bytes = Counter(), Counter()
    for c in collectives_in_hlo(hlo):
        hlo_bytes[c.op] += c.result_bytes
    for c in ir.collectives():
        ir_bytes[c.op] += c.payload_bytes
    return hlo_bytes, ir_bytes, ir


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp", "tp+sp"])
def test_tp_step_collectives_are_exactly_the_ir_ones(sequence_parallel):
    hlo_bytes, ir_bytes, ir = tp_step_audit(2, 4, sequence_parallel)
    assert hlo_bytes == ir_bytes
    user = [c for c in ir.collectives() if c.origin == "user"]
    assert user and all(c.axes == ("model",) and c.group_size == 4 for c in user)
    assert any(c.operand == "cotangents" for c in user), "autodiff's backward reductions are listed"
    assert all("titanax/nn/layers.py" in c.name for c in user), "each names the source line that caused it"
    if sequence_parallel:
        assert ir_bytes["all-gather"] > 0 and ir_bytes["reduce-scatter"] > 0
    else:
        assert set(ir_bytes) == {"all-reduce"}


def test_hlo_reader_finds_group_sizes():
    text = """ENTRY %main {
  %a = f32[4]{0} all-reduce(f32[4]{0} %x), replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add
  %b = f32[4]{0} all-reduce(f32[4]{0} %x), replica_groups={{0},{1}}, to_apply=%add
  %c = f32[8]{0} all-gather(f32[4]{0} %x), replica_groups=[4,2]<=[8], dimensions={0}
  %d = f32[4]{0} collective-permute(f32[4]{0} %x), source_target_pairs={{0,1},{1,0}}
}"""
    found = collectives_in_hlo(text)
    assert [c.group_size for c in found] == [4, 1, 2, None]
    assert [c.crosses_devices for c in found] == [True, False, True, True]
