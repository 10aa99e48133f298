"""Offload placement through the optimizer, on CPU tensors through FakeStreams (work deferred
per stream, queues drained in random legal orders): bit-identical to the unpaged step for
every rule x codec, with grad accumulation, clipping, bf16 params, state_dict, params changed
outside the optimizer; exact memory reports; refusals; the CPU no-op; hooks released."""

import copy
import gc
import warnings
import weakref

import pytest
import torch
from hypothesis import given, settings, strategies as st

import tightfit
from compare import assert_same_state, weights_only_round_trip
from fake_streams import FakeStreams
from optim_cases import matrix_case, rule_by_codec
from test_paged import assert_same
from tightfit.placement import STREAM_LAYERS, offload
from toy_problem import regression_batch, small_mlp, train

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 3


def use_fake_streams(monkeypatch, seed=0) -> FakeStreams:
    layer = FakeStreams(seed)
    monkeypatch.setitem(STREAM_LAYERS, "cpu", lambda device: layer)
    return layer


@pytest.fixture
def fake_streams(monkeypatch):
    return use_fake_streams(monkeypatch)


def loss_of(model, batch=None):
    x, y = batch or regression_batch()
    return torch.nn.functional.mse_loss(model(x).float(), y)


def twins(factory, codec="8bit", model_seed=0, **options):
    """(model, unpaged optimizer, twin model, offload optimizer)."""
    model, twin = small_mlp(model_seed), small_mlp(model_seed)
    return (model, factory(model.parameters(), state=codec, min_quantized_numel=1000, **options),
            twin, factory(twin.parameters(), state=codec, min_quantized_numel=1000, offload=True, **options))


def adamw(params, **options):
    return tightfit.AdamW(params, lr=1e-2, **options)


# Every rule of the matrix (AdamW, Adam, Lion, SGD, SophiaG, Adafactor, CAME, AdEMAMix, Muon) x codec.
@pytest.mark.parametrize("case, codec", rule_by_codec())
def test_offload_equals_unpaged_bit_for_bit(fake_streams, case, codec):
    model, unpaged, twin, offloaded = twins(case.make, codec)
    train(model, unpaged, STEPS)
    train(twin, offloaded, STEPS)
    assert offloaded.memory_report().offloaded_params == 6
    assert_same(model, unpaged, twin, offloaded)


# batch: STEP_BATCH_ELEMENTS; small_mlp's params (1536, 64, 4096, 64, 256, 4 elements) step
# one by one (1), in batches [1536] [64] [4096] [64] [256, 4] (300), or all together (default)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch", [1, 300, offload.STEP_BATCH_ELEMENTS])
@pytest.mark.parametrize("rule, codec", [("adamw", "8bit"), ("adamw", "4bit"), ("adafactor", "8bit")])
def test_random_legal_stream_orders_give_the_same_result(monkeypatch, seed, batch, rule, codec):
    use_fake_streams(monkeypatch, seed)
    monkeypatch.setattr(offload, "STEP_BATCH_ELEMENTS", batch)
    model, unpaged, twin, offloaded = twins(matrix_case(rule).make, codec, model_seed=seed)
    train(model, unpaged, STEPS)
    train(twin, offloaded, STEPS)
    assert_same(model, unpaged, twin, offloaded)


def test_grads_are_copied_during_backward(fake_streams):
    model = small_mlp()
    opt = adamw(model.parameters(), offload=True)
    train(model, opt, 1)  # the first step installs the hooks
    issued = len(fake_streams.issued)
    loss_of(model).backward()
    copies = [label for _, label in fake_streams.issued[issued:] if label == "grad_copy"]
    assert len(copies) == 6  # one per param, issued by the hooks before step()
    opt.step()
    assert [label for _, label in fake_streams.issued[issued:]].count("grad_copy") == 6  # none again in step()


def accumulate_and_step(model, opt, micro_batches, clip=None, layer=None):
    opt.zero_grad()
    for k in range(micro_batches):
        (loss_of(model, regression_batch(seed=10 + k)) / micro_batches).backward()
        if layer is not None:
            layer.drain()  # each micro-batch's grad copy runs before the next one accumulates
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


@pytest.mark.parametrize("micro_batches, clip", [(3, None), (1, 0.05), (3, 0.05)])
def test_accumulation_and_clipping_stay_exact(fake_streams, micro_batches, clip):
    model, unpaged, twin, offloaded = twins(adamw)
    for _ in range(STEPS):
        accumulate_and_step(model, unpaged, micro_batches, clip)
        accumulate_and_step(twin, offloaded, micro_batches, clip, fake_streams)
    assert_same(model, unpaged, twin, offloaded)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), script=st.lists(st.tuples(
    st.integers(0, 3),  # micro-batches before the step (0: step on the grads already there)
    st.sampled_from([None, 0.02, 10.0]),  # clip_grad_norm_ max norm
    st.booleans(),  # zero the grads first (set_to_none=False: zeroed in place)
    st.booleans(),  # scale a param outside the optimizer before the step
    st.booleans(),  # the grad copies started in backward run before the host edits the grads
), min_size=1, max_size=5))
def test_any_mix_of_accumulation_clipping_and_outside_edits_stays_exact(seed, script):
    layer = FakeStreams(seed)
    before = STREAM_LAYERS.get("cpu")
    STREAM_LAYERS["cpu"] = lambda device: layer
    try:
        model, unpaged, twin, offloaded = twins(adamw, codec="4bit")
        for m in (model, twin):
            loss_of(m).backward()
        for micro_batches, clip, zero, scale, copies_land in script:
            for m, opt in ((model, unpaged), (twin, offloaded)):
                if zero:
                    opt.zero_grad(set_to_none=False)
                for k in range(micro_batches):
                    loss_of(m, regression_batch(seed=k)).backward()
                if copies_land:
                    layer.drain()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
                if scale:
                    with torch.no_grad():
                        next(m.parameters()).mul_(0.5)
                opt.step()
        assert_same(model, unpaged, twin, offloaded)
    finally:
        STREAM_LAYERS.pop("cpu")
        if before is not None:
            STREAM_LAYERS["cpu"] = before


# steps per backward 2: step() twice on the same grads (the transfer buffer held new weights in between)
@pytest.mark.parametrize("codec, steps_per_backward", [("fp32", 1), ("8bit", 1), ("8bit", 2)])
def test_bf16_params_equal_an_fp32_master_reference_cast_to_bf16(fake_streams, codec, steps_per_backward):
    model = small_mlp().to(torch.bfloat16)
    twin = copy.deepcopy(model)
    masters = [p.detach().float().requires_grad_() for p in twin.parameters()]
    reference = adamw(masters, state=codec, min_quantized_numel=1000)
    offloaded = adamw(model.parameters(), state=codec, min_quantized_numel=1000, offload=True)
    batch = tuple(t.to(torch.bfloat16) for t in regression_batch())
    for _ in range(STEPS):
        offloaded.zero_grad()
        loss_of(model, batch).backward()
        twin.zero_grad()
        loss_of(twin, batch).backward()
        for _ in range(steps_per_backward):
            offloaded.step()
            for master, p in zip(masters, twin.parameters()):
                master.grad = p.grad.float()
            reference.step()
            with torch.no_grad():
                for master, p in zip(masters, twin.parameters()):
                    p.copy_(master)
    for p, q, master in zip(model.parameters(), twin.parameters(), masters):
        assert p.dtype == torch.bfloat16 and torch.equal(p, q)
        assert_same_state(offloaded.state[p], reference.state[master])
    assert not torch.equal(masters[0].to(torch.bfloat16).float(), masters[0])  # the master keeps more bits
    report = offloaded.memory_report()
    numel = sum(p.numel() for p in model.parameters())
    assert (report.offload_master_bytes, report.offload_grad_bytes) == (4 * numel, 2 * numel)


@pytest.mark.parametrize("codec", ["fp32", "4bit"])
def test_state_dict_round_trip(fake_streams, codec):
    model = small_mlp()
    opt = adamw(model.parameters(), state=codec, min_quantized_numel=0, offload=True)
    train(model, opt, 2)
    sd = weights_only_round_trip(opt.state_dict())
    assert sd["param_groups"][0]["offload"] is True
    assert all(t.device.type == "cpu" for s in sd["state"].values() for t in s.values() if torch.is_tensor(t))
    twin = copy.deepcopy(model)
    resumed = adamw(twin.parameters(), state=codec, min_quantized_numel=0, offload=True)
    resumed.load_state_dict(sd)
    unpaged = adamw(copy.deepcopy(model).parameters(), state=codec, min_quantized_numel=0)
    unpaged.load_state_dict(sd | {"param_groups": [{**sd["param_groups"][0], "offload": False}]})
    assert resumed.memory_report() == opt.memory_report()
    train(model, opt, 2)
    train(twin, resumed, 2)
    assert_same(model, opt, twin, resumed)
    assert resumed.memory_report().device_bytes == 0


def test_loading_a_checkpoint_rereads_the_master_from_the_params(fake_streams):
    # Resume: the model checkpoint changes the params in place; the master must follow them.
    model, unpaged, twin, offloaded = twins(adamw)
    checkpoint, optim_sd = small_mlp(seed=5), None
    train(checkpoint, adamw(checkpoint.parameters(), state="8bit", min_quantized_numel=1000), 2)
    train(model, unpaged, 2)
    train(twin, offloaded, 2)
    optim_sd = unpaged.state_dict()
    for m, opt in ((model, unpaged), (twin, offloaded)):
        m.load_state_dict(checkpoint.state_dict())
        opt.load_state_dict(copy.deepcopy(optim_sd) | {"param_groups": [
            {**optim_sd["param_groups"][0], "offload": opt is offloaded}]})
        train(m, opt, 2)
    assert_same(model, unpaged, twin, offloaded)


def test_params_changed_outside_the_optimizer_are_reread(fake_streams):
    model, unpaged, twin, offloaded = twins(adamw)
    train(model, unpaged, 2)
    train(twin, offloaded, 2)
    for m in (model, twin):
        with torch.no_grad():
            m[0].weight.mul_(0.5)  # in place: a new _version
        m[2].weight.data = m[2].weight.data * 2  # new storage
    train(model, unpaged, 2)
    train(twin, offloaded, 2)
    assert_same(model, unpaged, twin, offloaded)


def test_memory_report_is_exact(fake_streams):
    model = small_mlp()
    opt = adamw(model.parameters(), state="8bit", min_quantized_numel=1000, offload=True)
    train(model, opt, 1)
    report = opt.memory_report()
    numel = sum(p.numel() for p in model.parameters())
    assert report.device_bytes == 0 and report.paged_params == 0 and report.stream_buffer_bytes == 0
    assert (report.offloaded_params, report.offload_master_bytes, report.offload_grad_bytes) == \
        (6, 4 * numel, 4 * numel)
    assert report.host_bytes == opt.state_nbytes() + 8 * numel
    assert sum(v["host"] for v in report.by_codec.values()) == opt.state_nbytes()


def test_steps_with_update_hessian_and_in_backward_updates(fake_streams):
    model, unpaged, twin, offloaded = twins(matrix_case("sophiag").make)
    for m, opt in ((model, unpaged), (twin, offloaded)):
        train(m, opt, 2)
        loss_of(m).backward()
        opt.update_hessian()
        train(m, opt, 1)
    assert_same(model, unpaged, twin, offloaded)
    model, unpaged, twin, offloaded = twins(adamw)
    handle = tightfit.step_in_backward(twin, offloaded)
    for _ in range(STEPS):
        train(model, unpaged, 1)
        loss_of(twin).backward()
    handle.remove()
    assert_same(model, unpaged, twin, offloaded)


def test_turning_offload_on_and_off_keeps_the_run_exact(fake_streams):
    model, unpaged, twin, offloaded = twins(adamw)
    group = offloaded.param_groups[0]
    for on in (True, False, True):
        group["offload"] = on
        train(model, unpaged, 2)
        train(twin, offloaded, 2)
        report = offloaded.memory_report()
        assert report.offloaded_params == (6 if on else 0)
        assert (report.device_bytes == 0) == on
    group["state"] = "4bit"  # a new codec rebuilds the placement; the masters carry over
    unpaged.param_groups[0]["state"] = "4bit"
    train(model, unpaged, 2)
    train(twin, offloaded, 2)
    assert_same(model, unpaged, twin, offloaded)


def test_hooks_are_released_with_the_placement_and_the_optimizer(fake_streams):
    model = small_mlp()
    param = next(model.parameters())
    opt = adamw(model.parameters(), offload=True)
    train(model, opt, 1)
    assert len(param._post_accumulate_grad_hooks) == 1
    opt.load_state_dict(opt.state_dict())  # drops the placement: its hooks go, new ones come at the next step
    train(model, opt, 1)
    assert len(param._post_accumulate_grad_hooks) == 1
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None  # the hooks did not keep it alive
    assert not param._post_accumulate_grad_hooks
    loss_of(model).backward()  # and backward still works


@pytest.mark.parametrize("options, match", [
    ({"paged": True}, r"offload=True with paged=True"),
    ({"paged": "4GiB"}, r"offload=True with paged='4GiB'"),
    ({"stochastic_rounding": True}, r"offload=True with stochastic_rounding=True"),
])
def test_offload_with_paging_or_stochastic_rounding_is_refused(options, match):
    with pytest.raises(ValueError, match=match):
        tightfit.AdamW(small_mlp().parameters(), offload=True, **options)


@pytest.mark.parametrize("value", ["yes", 1, None, "True"])
def test_bad_offload_values_raise_naming_the_value(value):
    with pytest.raises(ValueError, match=r"invalid offload: .*allowed: True or False"):
        tightfit.AdamW(small_mlp().parameters(), offload=value)


def test_offloading_cpu_params_warns_once_and_changes_nothing():
    model, unpaged, twin, offloaded = twins(adamw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(twin, offloaded, 3)
    assert len([w for w in caught if "offload=True has no effect for parameters on cpu" in str(w.message)]) == 1
    train(model, unpaged, 3)
    assert_same(model, unpaged, twin, offloaded)
    report = offloaded.memory_report()
    assert report.host_bytes == 0 and report.offloaded_params == 0


@pytest.mark.parametrize("name, rule, codec", [
    ("offload_adamw_8bit", "adamw", "8bit"), ("offload_adamw_32bit", "adamw", "fp32"),
    ("offload_lion_4bit", "lion", "4bit"), ("offload_adafactor", "adafactor", "fp32"),
    ("offload_muon_8bit", "muon", "8bit"),
])
def test_offload_names_build_offloaded_optimizers(name, rule, codec):
    opt = tightfit.create_optimizer(name, small_mlp().parameters(), lr=1e-3)
    assert opt.param_groups[0]["offload"] is True and opt.param_groups[0]["paged"] is False
    assert opt.rule.name == rule and opt.param_groups[0]["state"] == codec
    assert "offload_paged_adamw_8bit" not in tightfit.OPTIMIZER_NAMES
    assert "paged_offload_adamw_8bit" not in tightfit.OPTIMIZER_NAMES


TINY_LLAMA = dict(model_type="llama", hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True, max_position_embeddings=512)


@pytest.mark.parametrize("precision, optim", [("fp32", "offload_adamw_8bit"), ("bf16", "offload_adamw_4bit"),
                                              ("fp32", "offload_adafactor")])
def test_plan_counts_the_bytes_memory_report_reports(fake_streams, precision, optim):
    # The planner's offload rows (a GPU plan: offload is a no-op on a CPU) against a real
    # optimizer on the same tiny Llama, stepped once through the fake stream layer.
    from tightfit.planner.api import plan
    from tightfit.planner.model_facts import facts_from_config
    from tightfit.planner.simulate import build_model
    config = TINY_LLAMA
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    model = build_model(config, dtype)
    opt = tightfit.create_optimizer(optim, model.parameters(), lr=1e-3)
    tokens = torch.randint(0, config["vocab_size"], (1, 16))
    model(input_ids=tokens, labels=tokens).loss.backward()
    opt.step()
    report = opt.memory_report()
    rows = {c.name: c for c in plan(facts_from_config(config, "tiny", "test"), optim=optim, seq=16,
                                    precision=precision, advise=False).components}
    assert rows["optimizer state"].device == report.device_bytes == 0
    assert rows["optimizer state"].host == opt.state_nbytes() > 0
    assert rows["offload: fp32 master weights"].host == report.offload_master_bytes
    assert rows["offload: gradient buffers"].host == report.offload_grad_bytes
    assert "fp32 master weights" not in rows  # no device masters: the host master replaces them
    assert sum(rows[name].host for name in ("optimizer state", "offload: fp32 master weights",
                                            "offload: gradient buffers")) == report.host_bytes


def test_train_runs_offloaded_and_resumes_exactly(tmp_path, fake_streams, micro_config):
    # tightfit train end to end with the offload engaged (FakeStreams stand for a GPU): the same
    # losses as the unoffloaded optimizer, and a resumed run re-reads its masters from the
    # loaded weights, so it reproduces the uninterrupted one.
    from tightfit.train.loop import train as train_run

    config = micro_config(optim="offload_adamw_8bit", grad_accum=2, clip=0.5)
    whole = train_run(config.replace(out=str(tmp_path / "whole")))
    plain = train_run(config.replace(optim="adamw_8bit", out=str(tmp_path / "plain")))
    assert whole.train_loss == plain.train_loss and whole.final_eval_loss == plain.final_eval_loss
    cut = tmp_path / "cut"
    train_run(config.replace(out=str(cut), max_steps=5))
    resumed = train_run(config.replace(out=str(cut), resume=True))
    assert resumed.train_loss == whole.train_loss


def test_host_buffers_of_params_stepping_together_share_one_pinned_block(fake_streams):
    model = small_mlp()
    params = list(model.parameters())
    opt = adamw(params, offload=True)
    params[0].requires_grad_(False)  # no grad at the first step: its buffers come later, on their own
    train(model, opt, 1)
    placement = opt.placement_for(opt.param_groups[0])
    blocks = {r.master.untyped_storage().data_ptr() for r in placement._records.values()}
    assert len(placement._records) == 5 and len(blocks) == 1
    assert len(fake_streams._host_blocks) == 1
    params[0].requires_grad_(True)
    train(model, opt, 1)
    assert len(placement._records) == 6 and len(fake_streams._host_blocks) == 2
    report = opt.memory_report()
    numel = sum(p.numel() for p in params)
    assert (report.offloaded_params, report.offload_master_bytes, report.offload_grad_bytes) == \
        (6, 4 * numel, 4 * numel)


@pytest.mark.parametrize("unscale_first, clip", [(False, None), (True, None), (True, 0.05)])
def test_grad_scaler_gives_the_unoffloaded_result(fake_streams, unscale_first, clip):
    # GradScaler unscales in place without a new _version: the copies made during backward
    # hold scaled grads, so offload takes the scale over (grad_scaler.py). A NaN in the last
    # step's grads: GradScaler skips it on both.
    model, unpaged, twin, offloaded = twins(adamw)
    assert offloaded._step_supports_amp_scaling and not unpaged._step_supports_amp_scaling
    for m, opt in ((model, unpaged), (twin, offloaded)):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
        for nan in (False, False, True):
            opt.zero_grad()
            scaler.scale(loss_of(m)).backward()
            fake_streams.drain()  # the grad copies run now, as on a GPU, before the host edits the grads
            if nan:
                with torch.no_grad():
                    m[0].bias.grad[0] = float("nan")
            if unscale_first:
                scaler.unscale_(opt)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
            scaler.step(opt)
            scaler.update()
    assert int(unpaged.state[next(model.parameters())]["step"]) == 2  # the overflowing step was skipped
    assert_same(model, unpaged, twin, offloaded)


def test_a_multi_process_run_copies_the_grads_in_step_only(fake_streams, monkeypatch):
    # DDP reduces grads in place after the hooks (here: halved through .data, no new _version):
    # a copy made in backward would miss it.
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    model, unpaged, twin, offloaded = twins(adamw)
    for step in range(3):
        for m, opt in ((model, unpaged), (twin, offloaded)):
            opt.zero_grad()
            issued = len(fake_streams.issued)
            loss_of(m).backward()
            fake_streams.drain()
            assert "grad_copy" not in [label for _, label in fake_streams.issued[issued:]]
            for p in m.parameters():
                p.grad.data.mul_(0.5)  # the all-reduce average
            opt.step()
    assert_same(model, unpaged, twin, offloaded)


@pytest.mark.parametrize("sizes, limit, batches", [
    ([5, 5, 5], 10, [[5, 5], [5]]),
    ([20, 1, 1], 10, [[20], [1, 1]]),
    ([1, 20, 1], 10, [[1], [20], [1]]),
    ([], 10, []),
])
def test_step_batches_group_consecutive_params_up_to_the_limit(monkeypatch, sizes, limit, batches):
    monkeypatch.setattr(offload, "STEP_BATCH_ELEMENTS", limit)
    members = [(torch.empty(n), None) for n in sizes]
    assert [[p.numel() for p, _ in b] for b in offload.step_batches(members)] == batches
