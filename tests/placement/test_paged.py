"""Paged placement through the optimizer: bit-identical to unpaged for every rule x codec,
device budgets, memory reports, state_dict, updates inside backward, the CPU no-op."""

import copy
import warnings

import pytest
import torch

import tightfit
from compare import assert_same_state, weights_only_round_trip
from optim_cases import CODECS, matrix_case, rule_by_codec
from tightfit.codecs import Encoded
from tightfit.placement import paged, parse_size
from tightfit.state_bytes import state_bytes
from toy_problem import regression_batch, small_mlp, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: far faster on one thread on a shared CPU
STEPS = 4


def assert_same(model_a, opt_a, model_b, opt_b):
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
        assert_same_state(opt_a.state[pa], opt_b.state[pb])


def trained_pair(factory, codec):
    """(model, unpaged optimizer, twin model, paged optimizer) after STEPS identical steps."""
    model, twin = small_mlp(), small_mlp()
    unpaged = factory(model.parameters(), state=codec, min_quantized_numel=1000)
    paged_opt = factory(twin.parameters(), state=codec, min_quantized_numel=1000, paged=True)
    train(model, unpaged, STEPS)
    train(twin, paged_opt, STEPS)
    return model, unpaged, twin, paged_opt


# Every rule of the case table, the factored ones included (their small statistics are paged too).
@pytest.mark.parametrize("case, codec", rule_by_codec())
def test_paged_equals_unpaged_bit_for_bit(fake_streams, case, codec):
    model, unpaged, twin, paged_opt = trained_pair(case.make, codec)
    report = paged_opt.memory_report()
    assert report.device_bytes == 0 and report.host_bytes == unpaged.state_nbytes() > 0
    assert_same(model, unpaged, twin, paged_opt)


def fp32_adamw_bytes(numel):
    return 8 * numel


# small_mlp's params, state bytes under fp32 AdamW: 4->32, 64->512 (x2), 256->2048, 1536->12288, 4096->32768
@pytest.mark.parametrize("budget,on_device", [
    (True, []),
    (0, []),
    ("3103B", [4, 64, 64]),
    (3104, [4, 64, 64, 256]),
    ("3104B", [4, 64, 64, 256]),
    ("1MiB", [4, 64, 64, 256, 1536, 4096]),
])
def test_budget_keeps_the_smallest_states_on_device(fake_streams, budget, on_device):
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters(), paged=budget)
    train(model, opt, 2)
    resident = sorted(p.numel() for p in model.parameters()
                      if opt.placement_for(opt.param_groups[0]).location(p, opt.state[p]) == "device")
    assert resident == on_device
    report = opt.memory_report()
    total = sum(fp32_adamw_bytes(p.numel()) for p in model.parameters())
    assert report.device_bytes == sum(fp32_adamw_bytes(n) for n in on_device)
    assert report.host_bytes == total - report.device_bytes
    assert report.paged_params == 6 - len(on_device)


def test_budget_plan_does_not_depend_on_which_params_step_first(fake_streams):
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters(), paged=3104)
    big = max(model.parameters(), key=torch.Tensor.numel)
    big.grad = torch.ones_like(big)  # only the largest param steps: it is still paged
    opt.step()
    assert opt.memory_report().paged_params == 1 and opt.memory_report().device_bytes == 0


def test_memory_report_is_exact_per_location_and_codec(fake_streams):
    model = small_mlp()
    params = list(model.parameters())
    groups = [{"params": params[:2], "paged": True}, {"params": params[2:]}]
    opt = tightfit.AdamW(groups, state="8bit", min_quantized_numel=1000)
    train(model, opt, 1)
    report = opt.memory_report()
    expected = {p: state_bytes(tightfit.RULES["adamw"], "8bit", tuple(p.shape), min_quantized_numel=1000)
                for p in params}
    assert report.host_bytes == sum(expected[p] for p in params[:2])
    assert report.device_bytes == sum(expected[p] for p in params[2:])
    assert report.total_bytes == opt.state_nbytes()
    # params[0] (1536 elements) and params[2] (4096) are 8-bit; the rest are below min_quantized_numel
    assert [p.numel() >= 1000 for p in params] == [True, False, True, False, False, False]
    assert report.by_codec["8bit"] == {"host": expected[params[0]], "device": expected[params[2]]}
    assert report.by_codec["fp32"] == {"host": expected[params[1]], "device": sum(expected[p] for p in params[3:])}
    # one param per chunk (CHUNK_BYTES=1): the larger block fills each of the 2 slots used
    blocks = [sum(-(-b.numel() * b.element_size() // 16) * 16 for v in opt.state[p].values()
                  if isinstance(v, Encoded) for b in v.buffers.values()) for p in params[:2]]
    assert report.stream_buffer_bytes == 2 * max(blocks)
    assert report.as_dict()["total_bytes"] == report.total_bytes


def test_unpaged_report_is_all_device():
    model = small_mlp()
    opt = tightfit.Lion(model.parameters(), state="4bit", min_quantized_numel=0)
    train(model, opt, 1)
    report = opt.memory_report()
    assert (report.device_bytes, report.host_bytes, report.paged_params, report.stream_buffer_bytes) == \
        (opt.state_nbytes(), 0, 0, 0)
    assert report.by_codec == {"4bit": {"device": opt.state_nbytes(), "host": 0}}


@pytest.mark.parametrize("codec", CODECS)
def test_state_dict_round_trip_lands_in_host_memory(fake_streams, codec):
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters(), lr=1e-2, state=codec, min_quantized_numel=0, paged=True)
    train(model, opt, 3)
    twin = copy.deepcopy(model)
    resumed = tightfit.AdamW(twin.parameters(), lr=1e-2, state=codec, min_quantized_numel=0, paged=True)
    resumed.load_state_dict(weights_only_round_trip(opt.state_dict()))
    assert resumed.memory_report() == opt.memory_report()
    assert resumed.memory_report().device_bytes == 0
    assert_same(model, opt, twin, resumed)
    train(model, opt, 3)
    train(twin, resumed, 3)
    assert_same(model, opt, twin, resumed)


def test_unpaged_state_dict_loads_into_a_paged_optimizer(fake_streams):
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters(), state="8bit", min_quantized_numel=0)
    train(model, opt, 2)
    sd = opt.state_dict()
    twin = copy.deepcopy(model)
    resumed = tightfit.AdamW(twin.parameters(), state="8bit", min_quantized_numel=0, paged=True)
    sd["param_groups"][0]["paged"] = True  # the saved group says unpaged; ask for paging
    resumed.load_state_dict(sd)
    assert resumed.memory_report().host_bytes == opt.state_nbytes()
    train(model, opt, 2)
    train(twin, resumed, 2)
    assert_same(model, opt, twin, resumed)


@pytest.mark.parametrize("codec", CODECS)
def test_step_in_backward_with_paging_equals_normal_step(fake_streams, codec):
    model = small_mlp()
    twin = copy.deepcopy(model)
    normal = tightfit.AdamW(model.parameters(), lr=1e-2, state=codec, min_quantized_numel=0)
    inside = tightfit.AdamW(twin.parameters(), lr=1e-2, state=codec, min_quantized_numel=0, paged=True)
    handle = tightfit.step_in_backward(twin, inside)
    x, y = regression_batch()
    for _ in range(3):
        normal.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        normal.step()
        torch.nn.functional.mse_loss(twin(x), y).backward()
    handle.remove()
    assert inside.memory_report().paged_params == 6
    assert_same(model, normal, twin, inside)


def test_turning_paging_off_moves_states_back_to_the_device(fake_streams):
    model, twin = small_mlp(), small_mlp()
    unpaged = tightfit.AdamW(model.parameters(), state="8bit", min_quantized_numel=0)
    opt = tightfit.AdamW(twin.parameters(), state="8bit", min_quantized_numel=0, paged=True)
    train(model, unpaged, 2)
    train(twin, opt, 2)
    opt.param_groups[0]["paged"] = False
    train(model, unpaged, 2)
    train(twin, opt, 2)
    assert opt.memory_report().host_bytes == 0
    assert_same(model, unpaged, twin, opt)


def test_sophia_hessian_refresh_streams_paged_states(fake_streams):
    model, twin = small_mlp(), small_mlp()
    opts = [tightfit.SophiaG(m.parameters(), state="8bit", min_quantized_numel=0, paged=p)
            for m, p in ((model, False), (twin, True))]
    for m, opt in zip((model, twin), opts):
        train(m, opt, 2)
        opt.update_hessian()
        train(m, opt, 1)
    assert opts[1].memory_report().paged_params == 6
    assert_same(model, opts[0], twin, opts[1])


def test_paging_cpu_tensors_warns_once_per_optimizer_and_changes_nothing():
    model, twin, other = small_mlp(), small_mlp(), small_mlp()
    unpaged = tightfit.AdamW(model.parameters(), state="8bit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = tightfit.AdamW(twin.parameters(), state="8bit", paged=True)
        train(twin, opt, 3)
        first = [w for w in caught if "no effect for parameters on cpu" in str(w.message)]
        train(other, tightfit.AdamW(other.parameters(), paged="1GiB"), 1)  # a second optimizer warns again
    assert len(first) == 1
    assert len([w for w in caught if "no effect for parameters on cpu" in str(w.message)]) == 2
    assert opt.memory_report().host_bytes == 0
    train(model, unpaged, 3)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("value", [None, "lots", "4XB", "GiB", "-1GiB", -1, 1.5, [1], "true"])
def test_bad_paged_values_raise_naming_the_value(value):
    with pytest.raises(ValueError, match=r"invalid paged=.*allowed: False, True, a byte count"):
        tightfit.AdamW(small_mlp().parameters(), paged=value)


def test_bad_paged_value_in_an_added_group_raises():
    model = small_mlp()
    params = list(model.parameters())
    opt = tightfit.AdamW(params[:2])
    with pytest.raises(ValueError, match=r"invalid paged='4 gigs'"):
        opt.add_param_group({"params": params[2:], "paged": "4 gigs"})


@pytest.mark.parametrize("text,nbytes", [
    ("512MiB", 512 * 2**20), ("4GiB", 4 * 2**30), ("1.5GB", 1_500_000_000), ("64kib", 65536),
    ("2 TB", 2 * 10**12), ("100B", 100), (0, 0), (12345, 12345),
])
def test_sizes_parse(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("name,rule,codec", [
    ("paged_adamw_32bit", "adamw", "fp32"), ("paged_adamw_8bit", "adamw", "8bit"),
    ("paged_adamw_4bit", "adamw", "4bit"), ("paged_adamw_bf16", "adamw", "bf16"),
    ("paged_lion_8bit", "lion", "8bit"), ("paged_lion_32bit", "lion", "fp32"),
    ("paged_adafactor_8bit", "adafactor", "8bit"), ("paged_came_8bit", "came", "8bit"),
    ("paged_sophiag_4bit", "sophiag", "4bit"),
])
def test_paged_names_build_paged_optimizers(name, rule, codec):
    opt = tightfit.create_optimizer(name, small_mlp().parameters(), lr=1e-3)
    assert opt.param_groups[0]["paged"] is True
    assert opt.rule.name == rule and opt.param_groups[0]["state"] == codec
    assert f"paged_paged_{name[6:]}" not in tightfit.OPTIMIZER_NAMES


def test_small_chunk_target_groups_params_per_chunk(fake_streams, monkeypatch):
    monkeypatch.setattr(paged, "CHUNK_BYTES", 1 << 20)  # everything fits one chunk
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters(), paged=True)
    train(model, opt, 1)
    assert fake_streams.device_allocations == 1
    assert opt.memory_report().stream_buffer_bytes == opt.state_nbytes()  # fp32 buffers are 16-byte multiples


def test_a_deep_copied_paged_optimizer_keeps_paging(fake_streams):
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters(), state="8bit", min_quantized_numel=0, paged=True)
    train(model, opt, 2)
    twin, clone = copy.deepcopy((model, opt))  # one memo: the clone steps the twin's params
    train(model, opt, 2)
    train(twin, clone, 2)
    assert clone.memory_report().paged_params == 6
    assert_same(model, opt, twin, clone)


@pytest.mark.parametrize("paged_bytes, chunk", [(0, 1 << 20), (16 << 20, 1 << 20), (160 << 20, 10 << 20),
                                                (4 << 30, 16 << 20)])
def test_chunk_size_scales_with_the_paged_total(paged_bytes, chunk):
    """Small paged totals get small chunks, so the slots cost a fraction of the state."""
    assert paged.chunk_bytes_for(paged_bytes) == chunk


def test_slots_of_a_small_paged_state_cost_a_fraction_of_it():
    sizes = [1 << 20] * 80  # 80 MiB of states in 1 MiB params (LoRA adapters)
    assert paged.paged_slot_bytes(sizes) <= sum(sizes) // 4


@pytest.mark.skipif(not tightfit.kernels.triton_available(), reason="triton is not installed")
@pytest.mark.parametrize("rule,codec", [("came", "8bit"), ("adafactor", "4bit"), ("adamw", "8bit")])
def test_paged_triton_steps_equal_unpaged_triton_steps(fake_streams, rule, codec):
    # The kernels read the states where the placement put them (device slots here).
    def factory(params, **options):
        return matrix_case(rule).make(params, impl="triton", **options)
    model, unpaged, twin, paged_opt = trained_pair(factory, codec)
    assert_same(model, unpaged, twin, paged_opt)


def test_a_budget_is_shared_by_the_groups_that_ask_for_it(fake_streams):
    # Two groups (decay / no-decay, as HF Trainer builds them) with the constructor's budget:
    # one pool, the same residents as a single group; a group with its own budget plans alone.
    model = small_mlp()
    params = list(model.parameters())
    matrices, vectors = [p for p in params if p.dim() > 1], [p for p in params if p.dim() == 1]
    single = tightfit.AdamW(params, paged="2100B")
    split = tightfit.AdamW([{"params": matrices}, {"params": vectors, "weight_decay": 0.0}], paged="2100B")
    own = tightfit.AdamW([{"params": matrices}, {"params": vectors, "paged": 2 ** 20}], paged="2100B")

    def resident(opt):
        return sorted(p.numel() for g in opt.param_groups for p in g["params"]
                      if not opt.placement_for(g).pages(p))
    # fp32 AdamW: 8 bytes per element; 32 + 512 + 512 = 1056 B fit 2100 B, the 2048 B of the
    # 256-element matrix would not.
    assert resident(split) == resident(single) == [4, 64, 64]
    # Vectors in their own 1 MiB; the matrices alone in 2100 B: the 256-element one fits.
    assert resident(own) == [4, 64, 64, 256]
