"""AdEMAMix (rules/ademamix.py) against bitsandbytes' AdEMAMix, its schedulers and scalars,
every codec and impl, paged, names, state_dict, validation, and the update bound under
the gradients that broke quantized states before."""

import copy
import io
import math
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given

import tightfit
import torch.distributed as dist
import torch.multiprocessing as mp
from optim_cases import TOLERANCES as TOL, peer
from toy_problem import max_relative_difference, regression_batch, small_mlp, train
from distributed import workers
from test_update_bounds import N, PROPERTY, gradient_sequence, scenarios
from tightfit.codecs import Encoded, get_codec
from tightfit.placement import STREAM_LAYERS, paged
from tightfit.rules.adamw import adam_moment_bound
from tightfit.rules.ademamix import ADEMAMIX, ademamix_scalars, scheduled_alpha, scheduled_beta3

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "placement"))
from fake_streams import FakeStreams  # noqa: E402

CODECS = ("fp32", "bf16", "8bit", "4bit")
# The states are EMAs of gradients taken at params that already differ by up to ~1e-7
# (TOL["fp32_vs_external"] bounds the params): measured 1.9e-6 on the final bias's moments.
STATES_VS_BNB = 1e-5

# name: our options = bitsandbytes' options; lr raised so 100 steps move the weights (not so
# far that training turns chaotic: lr 1e-2 with alpha 8 oscillates, and rounding differences
# then grow to 2 % by step 120).
PARITY_CASES = {
    "defaults": {"lr": 1e-3},
    "warmups_inside_the_run": {"lr": 3e-3, "t_alpha": 40, "t_beta3": 70},
    "other_hyperparameters": {"lr": 2e-3, "betas": (0.8, 0.99, 0.999), "alpha": 8.0, "eps": 1e-6,
                              "weight_decay": 0.1, "t_alpha": 1000, "t_beta3": 5000},
}


@pytest.mark.parametrize("case,impl", [(case, "reference") for case in PARITY_CASES]
                         + [("warmups_inside_the_run", "auto")])
def test_fp32_equals_bitsandbytes_over_100_steps(case, impl):
    bnb_ademamix = peer("bitsandbytes", "optim").AdEMAMix
    model = small_mlp()
    twin = copy.deepcopy(model)
    ours = tightfit.AdEMAMix(model.parameters(), impl=impl, **PARITY_CASES[case])
    theirs = bnb_ademamix(twin.parameters(), optim_bits=32, **PARITY_CASES[case])
    for _ in range(100):
        train(model, ours, 1)
        train(twin, theirs, 1)
    assert max_relative_difference(model.parameters(), twin.parameters()) <= TOL["fp32_vs_external"]
    # the states too: bnb keeps (m₁, m₂) stacked in state1 and v in state2
    for p, q in zip(model.parameters(), twin.parameters()):
        mine = {k: get_codec(v.codec).decode(v) for k, v in ours.state[p].items() if isinstance(v, Encoded)}
        fast, slow = theirs.state[q]["state1"]
        for name, ref in (("exp_avg", fast), ("exp_avg_slow", slow), ("exp_avg_sq", theirs.state[q]["state2"])):
            assert max_relative_difference([mine[name]], [ref]) <= STATES_VS_BNB, name


# (t_alpha, t_beta3, step) -> (αₜ, β₃,ₜ) with α = 5, β₁ = 0.9, β₃ = 0.9999
SCHEDULES = [
    (None, None, 7, 5.0, 0.9999),
    (100, 100, 0, 0.0, 0.9),  # before the first step: the slow EMA starts at β₁
    (100, 100, 50, 2.5, math.exp(math.log(0.9) * math.log(0.9999) / (0.5 * math.log(0.9999) + 0.5 * math.log(0.9)))),
    (100, 100, 100, 5.0, 0.9999),
    (100, 100, 10_000, 5.0, 0.9999),  # held at α and β₃ after the warm-up
]


@pytest.mark.parametrize("t_alpha,t_beta3,step,alpha_t,beta3_t", SCHEDULES)
def test_schedulers(t_alpha, t_beta3, step, alpha_t, beta3_t):
    assert scheduled_alpha(5.0, t_alpha, step) == pytest.approx(alpha_t, rel=1e-15)
    assert scheduled_beta3(0.9, 0.9999, t_beta3, step) == pytest.approx(beta3_t, rel=1e-15)


def test_beta3_warmup_rises_to_beta3():
    values = [scheduled_beta3(0.9, 0.9999, 300, t) for t in range(1, 400)]
    assert all(a <= b for a, b in zip(values, values[1:])) and values[-1] == 0.9999


SCALAR_ORDER = ["beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "beta3", "one_minus_beta3", "alpha",
                "decay_factor", "bias1", "bias2_sqrt", "eps", "lr", "fast_bound", "slow_bound"]


@pytest.mark.parametrize("lossy", [False, True])
@pytest.mark.parametrize("warmups", [{}, {"t_alpha": 50, "t_beta3": 70}])
def test_scalars_of_tensor_steps_equal_those_of_int_steps(lossy, warmups):
    """The Triton path passes a float64 tensor of steps (one per param): same values, same ABI order."""
    hyper = {**ADEMAMIX.defaults, **warmups}
    steps = [1, 5, 60, 100, 1_000_000]
    batch = ademamix_scalars(hyper, torch.tensor(steps, dtype=torch.float64), lossy)
    assert list(batch) == SCALAR_ORDER
    for i, step in enumerate(steps):
        single = ademamix_scalars(hyper, step, lossy)
        assert list(single) == SCALAR_ORDER
        for name, value in single.items():
            got = batch[name]
            got = float(got[i]) if isinstance(got, torch.Tensor) else got
            assert got == pytest.approx(value, rel=1e-12, abs=0), (step, name)
    if not lossy:
        assert batch["fast_bound"] == batch["slow_bound"] == math.inf


def test_slow_bound_is_held_finite_where_it_overflows():
    """γ = β₃²/β₂ > 1: κ of the slow EMA grows with t; past float32 it is held at float32's
    max, so a second moment stored as 0 still zeroes the moments (0·κ, not 0·inf = NaN)."""
    late = ademamix_scalars(ADEMAMIX.defaults, 10**7, True)
    assert late["slow_bound"] == torch.finfo(torch.float32).max and math.isfinite(late["fast_bound"])


def final_loss(codec):
    """Loss after 150 steps on the toy regression. Measured (2026-11-29) at lr 3e-3: fp32 2.8e-4,
    8-bit 2.2e-4, 4-bit 5.6e-4. At lr 1e-2 fp32 reaches 2.3e-5 and 4-bit stalls at 1.3e-3: the
    slow EMA moves by (1 − β₃)·(g − m₂) per step, far below a 4-bit level, so it barely moves."""
    model = small_mlp()
    opt = tightfit.AdEMAMix(model.parameters(), lr=3e-3, t_alpha=50, t_beta3=50, state=codec,
                            min_quantized_numel=0)
    return train(model, opt, 150)


@pytest.fixture(scope="module")
def fp32_loss():
    return final_loss("fp32")


@pytest.mark.parametrize("codec", ["bf16", "8bit", "4bit"])
def test_quantized_states_converge_close_to_fp32(codec, fp32_loss):
    x, y = regression_batch()
    start = torch.nn.functional.mse_loss(small_mlp()(x), y).item()
    quantized = final_loss(codec)
    assert fp32_loss < 0.05 * start and quantized < 0.5 * start
    assert quantized <= TOL[f"converge_{codec}"] * fp32_loss + 1e-3


def steps_of(codec, impl, steps=8):
    param = torch.nn.Parameter(torch.randn(48, 96, generator=torch.Generator().manual_seed(0)))
    opt = tightfit.AdEMAMix([param], lr=1e-2, t_alpha=4, t_beta3=6, state=codec, min_quantized_numel=0, impl=impl)
    grads = torch.Generator().manual_seed(1)
    for _ in range(steps):
        param.grad = torch.randn(param.shape, generator=grads)
        opt.step()
    return param.detach()


@pytest.mark.parametrize("codec", CODECS)
def test_auto_equals_reference_under_every_codec(codec):
    """impl="auto" takes a fast path where one exists for this rule and falls back to the reference."""
    ours, reference = steps_of(codec, "auto"), steps_of(codec, "reference")
    assert max_relative_difference([ours], [reference]) <= TOL["fp32_vs_external"]


# codec -> bytes of three states for a 64x96 param (6144 elements: quantized)
STATE_BYTES = {"fp32": 3 * 6144 * 4, "bf16": 3 * 6144 * 2, "8bit": 3 * (6144 + 4 * 24),
               "4bit": 3 * (6144 // 2 + 4 * 48)}
SUFFIX = {"fp32": "32bit", "bf16": "bf16", "8bit": "8bit", "4bit": "4bit"}


@pytest.mark.parametrize("codec", CODECS)
def test_three_states_go_through_the_codec_with_exact_bytes(codec):
    param = torch.randn(64, 96, requires_grad=True)
    opt = tightfit.create_optimizer(f"ademamix_{SUFFIX[codec]}", [param])
    param.grad = torch.randn(64, 96)
    opt.step()
    kinds = {name: (v.codec, v.kind) for name, v in opt.state[param].items() if isinstance(v, Encoded)}
    assert kinds == {"exp_avg": (codec, "signed"), "exp_avg_slow": (codec, "signed"),
                     "exp_avg_sq": (codec, "unsigned")}
    assert opt.state_nbytes() == STATE_BYTES[codec]


# name -> (state, paged); HF Trainer's names are ademamix, ademamix_8bit, paged_ademamix_{32,8}bit
NAMES = {"ademamix": ("fp32", False), "ademamix_32bit": ("fp32", False), "ademamix_8bit": ("8bit", False),
         "ademamix_4bit": ("4bit", False), "paged_ademamix_32bit": ("fp32", True),
         "paged_ademamix_8bit": ("8bit", True), "paged_ademamix_4bit": ("4bit", True)}


@pytest.mark.parametrize("name", NAMES)
def test_names(name):
    opt = tightfit.create_optimizer(name, [torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, tightfit.AdEMAMix)
    assert (opt.param_groups[0]["state"], opt.param_groups[0]["paged"]) == NAMES[name]


@pytest.fixture
def fake_streams(monkeypatch):
    """Page CPU tensors through tests/placement's recording FakeStreams (a chunk per param)."""
    monkeypatch.setitem(STREAM_LAYERS, "cpu", lambda device: FakeStreams(seed=0))
    monkeypatch.setattr(paged, "CHUNK_BYTES", 1)
    monkeypatch.setattr(paged, "SLOTS", 3)


@pytest.mark.parametrize("codec", CODECS)
def test_paged_equals_unpaged_bit_for_bit(fake_streams, codec):
    model, twin = small_mlp(), small_mlp()
    unpaged = tightfit.AdEMAMix(model.parameters(), lr=1e-2, state=codec, min_quantized_numel=1000)
    paged_opt = tightfit.AdEMAMix(twin.parameters(), lr=1e-2, state=codec, min_quantized_numel=1000, paged=True)
    train(model, unpaged, 4)
    train(twin, paged_opt, 4)
    assert paged_opt.memory_report().host_bytes == unpaged.state_nbytes() > 0
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


@pytest.mark.parametrize("codec", ["fp32", "8bit"])
def test_state_dict_round_trip_resumes_bit_exact(codec):
    kw = dict(lr=1e-2, t_alpha=20, t_beta3=20, state=codec, min_quantized_numel=64)
    model = small_mlp()
    opt = tightfit.AdEMAMix(model.parameters(), **kw)
    train(model, opt, 5)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    resumed = copy.deepcopy(model)
    resumed_opt = tightfit.AdEMAMix(resumed.parameters(), **kw)
    buf.seek(0)
    resumed_opt.load_state_dict(torch.load(buf, weights_only=True))
    train(model, opt, 6)
    train(resumed, resumed_opt, 6)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))


BAD_OPTIONS = [
    ({"lr": -1.0}, "lr"),
    ({"betas": (0.9, 0.999)}, "a tuple of 3"),
    ({"betas": (0.9, 0.999, 1.0)}, r"betas\[2\]"),
    ({"alpha": -1.0}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"t_alpha": 0}, "t_alpha"),
    ({"t_alpha": -5}, "t_alpha"),
    ({"t_beta3": "long"}, "t_beta3"),
    ({"t_beta3": 100, "betas": (0.0, 0.999, 0.9999)}, "betas"),  # log(0) in the warm-up
    ({"eps": -1e-8}, "eps"),
    ({"weight_decay": -0.1}, "weight_decay"),
]


@pytest.mark.parametrize("options,words", BAD_OPTIONS)
def test_bad_options_raise_naming_the_value(options, words):
    with pytest.raises(ValueError, match=words):
        tightfit.AdEMAMix([torch.nn.Parameter(torch.zeros(3))], **options)


def _bound(lr, betas, alpha):
    """fp32 AdEMAMix's per-step |Δθ| (no decay): η·(κ₁/(1−β₁ᵗ) + α·κ₃)·√(1−β₂ᵗ), each κ
    Cauchy–Schwarz over an exact EMA (adamw's adam_moment_bound at that EMA's rate)."""
    beta1, beta2, beta3 = betas
    return lambda t: lr * (adam_moment_bound(beta1, beta2, t) / (1 - beta1**t)
                           + alpha * adam_moment_bound(beta3, beta2, t)) * math.sqrt(1 - beta2**t)


@pytest.mark.parametrize("impl", ["reference", "auto"])
@pytest.mark.parametrize("codec", CODECS)
@PROPERTY
@given(s=scenarios())
def test_no_update_exceeds_the_fp32_bound(codec, impl, s):
    """Every gradient pattern of test_update_bounds: finite params and states, unusable
    gradients skip and count, and |Δθ| within fp32's bound. Without the lossy-state guard
    (measured 2026-11-29) 8/4-bit states break it in most examples, by up to ~20 %."""
    lr, betas, alpha = 1e-3, (0.9, 0.999, 0.9999), 5.0
    bound = _bound(lr, betas, alpha)
    param = torch.nn.Parameter(torch.randn(N, generator=torch.Generator().manual_seed(1)))
    opt = tightfit.AdEMAMix([param], lr=lr, betas=betas, alpha=alpha, weight_decay=0.0, state=codec,
                            min_quantized_numel=1, impl=impl)
    for grad in gradient_sequence(s):
        before, skips = param.detach().clone(), opt.skipped_steps
        param.grad = grad
        opt.step()
        if not bool(grad.abs().max() < opt.rule.grad_limit):
            assert opt.skipped_steps == skips + 1 and torch.equal(param.detach(), before)
            continue
        assert opt.skipped_steps == skips and torch.isfinite(param).all()
        for name, value in opt.state[param].items():
            if isinstance(value, Encoded):
                assert torch.isfinite(get_codec(value.codec).decode(value)).all(), name
        t = int(opt.state[param]["step"])
        allowed = bound(t) * (1 + 1e-5) + 2**-23 * torch.maximum(before.abs(), param.detach().abs())
        excess = (param.detach() - before).abs() - allowed
        assert float(excess.max()) <= 0, f"step {t}: moved beyond fp32's bound {bound(t):.3e}"


def fsdp2_ademamix(params, codec):
    return tightfit.AdEMAMix(params, lr=1e-2, t_alpha=3, t_beta3=3, state=codec, min_quantized_numel=512)


@workers.rank_main
def train_on_ranks(rank, world, out_dir, codecs):
    for codec in codecs:
        model = workers.fsdp_model()
        workers.train(model, fsdp2_ademamix(model.parameters(), codec), workers.batches(), rank, world)
        params = workers.full_params(model)
        if rank == 0:
            torch.save(params, os.path.join(out_dir, f"{codec}.pt"))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_fsdp2_two_ranks_equal_one_process(tmp_path):
    """The tutorial pattern (fully_shard per layer, gloo, CPU): an elementwise rule on local
    shards whose 8/4-bit blocks are whole: the same codes and math (measured 0.0 difference)."""
    codecs = ("fp32", "4bit")
    rendezvous = tempfile.mktemp(prefix="tightfit-rdzv-")  # gloo's FileStore creates it
    try:
        mp.spawn(train_on_ranks, args=(2, rendezvous, str(tmp_path), codecs), nprocs=2, join=True)
    finally:
        if os.path.exists(rendezvous):
            os.unlink(rendezvous)
    for codec in codecs:
        model = workers.model_factory()
        workers.train(model, fsdp2_ademamix(model.parameters(), codec), workers.batches(), emulate_world=2)
        ranks = torch.load(tmp_path / f"{codec}.pt")
        assert max_relative_difference(ranks, list(model.parameters())) <= TOL["fp32_vs_external"], codec
