"""Muon (rules/muon.py, optimizers_ademamix_muon.py) against torch.optim.Muon, Newton–Schulz
properties, >2-D params, routing to AdamW in one optimizer, every codec and impl, paged,
names, state_dict, validation, and the update bound under hostile gradients."""

import copy
import io
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tightfit
import torch.distributed as dist
import torch.multiprocessing as mp
from optim_cases import TOLERANCES as TOL
from toy_problem import max_relative_difference, regression_batch, small_mlp, train
from distributed import workers
from test_update_bounds import N, PROPERTY, ROW, gradient_sequence, scenarios
from tightfit.codecs import Encoded, get_codec
from tightfit.placement import STREAM_LAYERS, paged
from tightfit.rules.muon import newton_schulz

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "placement"))
from fake_streams import FakeStreams  # noqa: E402

CODECS = ("fp32", "bf16", "8bit", "4bit")
SHAPES = [(16, 8), (8, 16), (12, 12)]  # tall (transposed inside Newton–Schulz), wide, square
# The default coefficients map [0, 1.2024] into itself (max of ax + bx³ + cx⁵ there, at
# x ≈ 0.5545): no singular value of the orthogonalized momentum exceeds it.
SIGMA_MAX = 1.2024

# Tolerances, with why.
MUON_TOL = {
    # Same ops in the same order as torch.optim.Muon (lerp, addmm with beta/alpha, add with
    # alpha): measured 0.0 (bit-identical) over 100 steps; the bar is the 1e-6 for
    # fp32 rules, leaving room for BLAS builds that block matmuls differently.
    "vs_torch": TOL["fp32_vs_external"],
    # fp32 Newton–Schulz vs torch's bf16 one: bf16 has 8 significant bits (ε = 2⁻⁸ ≈ 4e-3 per
    # rounding); measured 1.5e-3 relative on the params after 100 steps, 6.1e-4 after 20.
    "fp32_vs_torch_bf16": 1e-2,
    # FSDP2 on 2 ranks vs one process: the sharded norm and Gram matrices sum in another
    # order (a few ulp), carried through 5 Newton–Schulz iterations; measured 9.2e-7 (fp32)
    # and 6.2e-7 (8-bit) after 4 steps.
    "fsdp2": 1e-5,
}

PARITY_CASES = {
    "defaults": {"lr": 2e-2},
    "no_nesterov_match_rms_adamw": {"lr": 2e-2, "nesterov": False, "adjust_lr_fn": "match_rms_adamw"},
    "other_hyperparameters": {"lr": 5e-3, "momentum": 0.8, "weight_decay": 0.05, "ns_steps": 3, "eps": 1e-5,
                              "ns_coefficients": (2.0, -1.5, 0.5), "adjust_lr_fn": "original"},
}


def run_pair(ours, theirs, params_a, params_b, steps=100, torch_in_fp32=False, monkeypatch=None):
    grads = torch.Generator().manual_seed(3)
    for _ in range(steps):
        for a, b in zip(params_a, params_b):
            a.grad = torch.randn(a.shape, generator=grads)
            b.grad = a.grad.clone()
        ours.step()
        if torch_in_fp32:  # torch.optim.Muon's own code with its bf16 cast made an fp32 copy
            with monkeypatch.context() as m:
                m.setattr(torch.Tensor, "bfloat16", lambda self, *a, **k: self.clone())
                theirs.step()
        else:
            theirs.step()
    return max_relative_difference(params_a, params_b)


def twins(shapes=SHAPES):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen) for s in shapes]
    return [torch.nn.Parameter(p.clone()) for p in start], [torch.nn.Parameter(p.clone()) for p in start]


# bf16 matmuls are slow on CPUs: the bf16 comparisons run 20 steps, the fp32 one 100.
@pytest.mark.parametrize("case,impl", [(case, "reference") for case in PARITY_CASES] + [("defaults", "auto")])
def test_bf16_newton_schulz_equals_torch_muon(case, impl):
    ours, theirs = twins()
    opts = (tightfit.Muon(ours, ns_dtype="bf16", impl=impl, **PARITY_CASES[case]),
            torch.optim.Muon(theirs, **PARITY_CASES[case]))
    assert run_pair(*opts, ours, theirs, steps=20) <= MUON_TOL["vs_torch"]


@pytest.mark.parametrize("case", PARITY_CASES)
def test_fp32_newton_schulz_equals_torch_muon_computing_in_fp32(case, monkeypatch):
    ours, theirs = twins()
    opts = tightfit.Muon(ours, **PARITY_CASES[case]), torch.optim.Muon(theirs, **PARITY_CASES[case])
    assert run_pair(*opts, ours, theirs, torch_in_fp32=True, monkeypatch=monkeypatch) <= MUON_TOL["vs_torch"]


def test_fp32_newton_schulz_is_within_bf16_rounding_of_torch_muon():
    ours, theirs = twins()
    opts = tightfit.Muon(ours, lr=2e-2), torch.optim.Muon(theirs, lr=2e-2)
    assert 0 < run_pair(*opts, ours, theirs, steps=20) <= MUON_TOL["fp32_vs_torch_bf16"]


@pytest.mark.parametrize("nd_params,shape,as_2d", [
    ("stacked", (3, 8, 16), [(8, 16)] * 3),        # stacked experts: each matrix alone
    ("auto", (2, 16, 8), [(16, 8)] * 2),            # 3-D under "auto": stacked
    ("flatten", (6, 4, 3), [(6, 12)]),              # one matrix (d₀, rest)
    ("auto", (8, 3, 2, 2), [(8, 12)]),              # conv filter (out, in, kh, kw): flattened
    ("stacked", (2, 2, 4, 6), [(4, 6)] * 4),        # any leading dims index the batch
])
def test_more_than_two_dims_equal_the_matrices_they_stand_for(nd_params, shape, as_2d):
    gen = torch.Generator().manual_seed(0)
    whole = torch.nn.Parameter(torch.randn(shape, generator=gen))
    pieces = [torch.nn.Parameter(m.clone()) for m in whole.detach().reshape(len(as_2d), *as_2d[0])]
    opt_whole = tightfit.Muon([whole], lr=2e-2, nd_params=nd_params)
    opt_pieces = tightfit.Muon(pieces, lr=2e-2)
    for _ in range(10):
        whole.grad = torch.randn(shape, generator=gen)
        for piece, g in zip(pieces, whole.grad.reshape(len(as_2d), *as_2d[0])):
            piece.grad = g.clone()
        opt_whole.step()
        opt_pieces.step()
    assert max_relative_difference([whole.detach().reshape(len(as_2d), *as_2d[0])],
                                   [torch.stack([p.detach() for p in pieces])]) <= MUON_TOL["vs_torch"]


# scales up to 1e13: the rule skips gradients with an element at or above 2^47 (grad_limit)
@given(rows=st.integers(1, 24), cols=st.integers(1, 24), scale=st.integers(-30, 13), seed=st.integers(0, 2**16))
@PROPERTY
def test_newton_schulz_bounds_every_singular_value(rows, cols, scale, seed):
    """Any matrix, any scale: singular values of the result stay in [0, SIGMA_MAX]. Where
    every singular value of M/‖M‖_F starts at 0.1 or more (and ‖M‖_F ≥ ε, so it is not
    divided by ε instead), 5 steps land them in the iteration's band [0.68, 1.14]."""
    m = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 10.0**scale
    out = newton_schulz(m, (3.4445, -4.775, 2.0315), 5, 1e-7, torch.float32)
    sigma = torch.linalg.svdvals(out.double())
    assert out.shape == m.shape and torch.isfinite(out).all()
    assert float(sigma.max()) <= SIGMA_MAX * (1 + 1e-4)
    start = torch.linalg.svdvals(m.double()) / m.double().norm()
    if float(m.norm()) >= 1e-7 and float(start.min()) >= 0.1:
        assert float(sigma.min()) >= 0.68 * (1 - 1e-4)


def test_zero_momentum_steps_nothing():
    param = torch.nn.Parameter(torch.ones(4, 6))
    opt = tightfit.Muon([param], weight_decay=0.0)
    param.grad = torch.zeros(4, 6)
    opt.step()
    assert torch.equal(param.detach(), torch.ones(4, 6))


class TinyLM(torch.nn.Module):
    """Embedding, two hidden matrices with biases, a norm and an untied head."""

    def __init__(self, tie=False):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 8)
        self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 11, bias=False)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, tokens):
        h = self.embed(tokens)
        return self.head(self.norm(h + self.down(self.up(h).relu())))


class HeadFirst(TinyLM):
    """The head registered before the hidden layers: found through get_output_embeddings."""

    def __init__(self):
        super().__init__()
        self.extra = torch.nn.Linear(8, 8)

    def get_output_embeddings(self):
        return self.head


def shapes_by_rule(opt):
    return {g["rule"]: sorted(tuple(p.shape) for p in g["params"]) for g in opt.param_groups}


@pytest.mark.parametrize("make,expected", [
    (lambda m: m, {"muon": [(8, 16), (16, 8)], "adamw": [(8,), (8,), (8,), (11, 8), (11, 8), (16,)]}),
    (lambda m: m.parameters(), {"muon": [(8, 16), (11, 8), (11, 8), (16, 8)], "adamw": [(8,), (8,), (8,), (16,)]}),
    (lambda m: m.named_parameters(), {"muon": [(8, 16), (11, 8), (11, 8), (16, 8)],
                                      "adamw": [(8,), (8,), (8,), (16,)]}),
])
def test_routing(make, expected):
    assert shapes_by_rule(tightfit.Muon(make(TinyLM()))) == expected


def test_routing_finds_a_tied_head_and_get_output_embeddings():
    assert shapes_by_rule(tightfit.Muon(TinyLM(tie=True)))["muon"] == [(8, 16), (16, 8)]
    assert shapes_by_rule(tightfit.Muon(HeadFirst()))["muon"] == [(8, 8), (8, 16), (16, 8)]


def test_routed_optimizer_equals_torch_muon_plus_torch_adamw():
    model = TinyLM()
    twin = copy.deepcopy(model)
    ours = tightfit.Muon(model, lr=2e-2, ns_dtype="bf16", adamw={"lr": 3e-3, "betas": (0.9, 0.95)})
    hidden = [twin.up.weight, twin.down.weight]
    rest = [p for p in twin.parameters() if all(p is not h for h in hidden)]
    theirs = [torch.optim.Muon(hidden, lr=2e-2), torch.optim.AdamW(rest, lr=3e-3, betas=(0.9, 0.95))]
    tokens = torch.randint(0, 11, (32,), generator=torch.Generator().manual_seed(0))
    for _ in range(30):
        for m, opts in ((model, [ours]), (twin, theirs)):
            for opt in opts:
                opt.zero_grad()
            torch.nn.functional.cross_entropy(m(tokens[:-1]), tokens[1:]).backward()
            for opt in opts:
                opt.step()
    assert max_relative_difference(model.parameters(), twin.parameters()) <= MUON_TOL["vs_torch"]
    assert ours.param_groups[1]["weight_decay"] == 1e-2  # AdamW's default, not Muon's 0.1


def test_explicit_groups_keep_their_rules():
    model = TinyLM()
    opt = tightfit.Muon([{"params": [model.up.weight, model.down.weight], "lr": 0.05},
                         {"params": [model.embed.weight, model.head.weight], "rule": "lion"},
                         {"params": [p for p in model.parameters() if p.ndim == 1], "rule": "adamw"}],
                        adamw={"lr": 3e-4})
    assert [(g["rule"], g["lr"]) for g in opt.param_groups] == [("muon", 0.05), ("lion", 1e-4), ("adamw", 3e-4)]


@pytest.mark.parametrize("build", [
    lambda bias: tightfit.Muon([{"params": [bias]}]),
    lambda bias: tightfit.TightfitOptimizer([bias], rule="muon"),
    lambda bias: tightfit.AdamW([{"params": [bias], "rule": "muon"}]),
])
def test_one_dim_params_in_a_muon_group_are_refused_at_construction(build):
    with pytest.raises(ValueError, match=r"shape \(5,\).*another rule"):
        build(torch.nn.Parameter(torch.zeros(5)))


def final_loss(codec, impl="auto"):
    """Loss after 150 steps of Muon (hidden) + AdamW (rest), both in ``codec``. Measured
    (2026-11-29): fp32 7.6e-4, bf16 1.4e-3, 8-bit 6.5e-4, 4-bit 2.0e-3 (4-bit momentum alone,
    AdamW in fp32: 2.1e-3). Muon's steps keep their size (no lr decay here), so the last loss
    is a noisy floor: the bars hold through the shared absolute slack of 1e-3."""
    model = small_mlp()
    opt = tightfit.Muon(model, lr=2e-2, adamw={"lr": 1e-2}, state=codec, min_quantized_numel=0, impl=impl)
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


def steps_of(codec, impl, steps=6):
    model = small_mlp()
    opt = tightfit.Muon(model, lr=2e-2, state=codec, min_quantized_numel=0, impl=impl)
    train(model, opt, steps)
    return list(model.parameters())


@pytest.mark.parametrize("codec", CODECS)
def test_auto_equals_reference_under_every_codec(codec):
    """impl="auto" takes a fast path where one exists for the group's rule and falls back to
    the reference (Muon's group: always the reference)."""
    assert max_relative_difference(steps_of(codec, "auto"), steps_of(codec, "reference")) <= TOL["fp32_vs_external"]


# codec -> bytes of Muon's momentum for a 64x96 param (6144 elements: quantized)
STATE_BYTES = {"fp32": 6144 * 4, "bf16": 6144 * 2, "8bit": 6144 + 4 * 24, "4bit": 6144 // 2 + 4 * 48}
SUFFIX = {"fp32": "32bit", "bf16": "bf16", "8bit": "8bit", "4bit": "4bit"}


@pytest.mark.parametrize("codec", CODECS)
def test_momentum_goes_through_the_codec_with_exact_bytes(codec):
    param = torch.randn(64, 96, requires_grad=True)
    opt = tightfit.create_optimizer(f"muon_{SUFFIX[codec]}", [param])
    param.grad = torch.randn(64, 96)
    opt.step()
    kinds = {name: (v.codec, v.kind) for name, v in opt.state[param].items() if isinstance(v, Encoded)}
    assert kinds == {"momentum_buffer": (codec, "signed")} and opt.state_nbytes() == STATE_BYTES[codec]


NAMES = {"muon": ("fp32", False), "muon_32bit": ("fp32", False), "muon_8bit": ("8bit", False),
         "muon_4bit": ("4bit", False), "paged_muon": ("fp32", True), "paged_muon_8bit": ("8bit", True),
         "paged_muon_4bit": ("4bit", True)}


@pytest.mark.parametrize("name", NAMES)
def test_names(name):
    opt = tightfit.create_optimizer(name, TinyLM())
    assert isinstance(opt, tightfit.Muon) and {g["rule"] for g in opt.param_groups} == {"muon", "adamw"}
    assert all((g["state"], g["paged"]) == NAMES[name] for g in opt.param_groups)


@pytest.fixture
def fake_streams(monkeypatch):
    """Page CPU tensors through tests/placement's recording FakeStreams (a chunk per param)."""
    monkeypatch.setitem(STREAM_LAYERS, "cpu", lambda device: FakeStreams(seed=0))
    monkeypatch.setattr(paged, "CHUNK_BYTES", 1)
    monkeypatch.setattr(paged, "SLOTS", 3)


@pytest.mark.parametrize("codec", CODECS)
def test_paged_equals_unpaged_bit_for_bit(fake_streams, codec):
    model, twin = small_mlp(), small_mlp()
    unpaged = tightfit.Muon(model, lr=2e-2, state=codec, min_quantized_numel=1000)
    paged_opt = tightfit.Muon(twin, lr=2e-2, state=codec, min_quantized_numel=1000, paged=True)
    train(model, unpaged, 4)
    train(twin, paged_opt, 4)
    assert paged_opt.memory_report().host_bytes == unpaged.state_nbytes() > 0
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


@pytest.mark.parametrize("codec", ["fp32", "8bit"])
def test_state_dict_round_trip_resumes_bit_exact(codec):
    kw = dict(lr=2e-2, adamw={"lr": 1e-2}, state=codec, min_quantized_numel=64)
    model = small_mlp()
    opt = tightfit.Muon(model, **kw)
    train(model, opt, 5)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    resumed = copy.deepcopy(model)
    resumed_opt = tightfit.Muon(resumed, **kw)
    buf.seek(0)
    resumed_opt.load_state_dict(torch.load(buf, weights_only=True))
    train(model, opt, 6)
    train(resumed, resumed_opt, 6)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))


BAD_OPTIONS = [
    ({"lr": -1.0}, "lr"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"momentum": 1.0}, "momentum"),
    ({"nesterov": 1}, "nesterov"),
    ({"ns_coefficients": (3.4, -4.7)}, "ns_coefficients"),
    ({"ns_coefficients": (3.4, "b", 2.0)}, r"ns_coefficients\[1\]"),
    ({"eps": 0.0}, "eps"),
    ({"ns_steps": 100}, "ns_steps"),
    ({"ns_steps": 2.5}, "ns_steps"),
    ({"adjust_lr_fn": "sqrt"}, "adjust_lr_fn"),
    ({"ns_dtype": "fp16"}, "ns_dtype"),
    ({"nd_params": "batch"}, "nd_params"),
    ({"adamw": [("lr", 1e-3)]}, "adamw"),
    ({"adamw": {"momentum": 0.9}}, "momentum"),  # not an AdamW hyperparameter
    ({"adamw": {"betas": (0.9, 1.5)}}, "betas"),
]


@pytest.mark.parametrize("options,words", BAD_OPTIONS)
def test_bad_options_raise_naming_the_value(options, words):
    with pytest.raises(ValueError, match=words):
        tightfit.Muon(TinyLM(), **options)


@pytest.mark.parametrize("codec", CODECS)
@PROPERTY
@given(s=scenarios())
def test_no_update_exceeds_the_orthogonalized_bound(codec, s):
    """Every gradient pattern of test_update_bounds: finite params and states, unusable
    gradients skip and count, and |Δθ| ≤ η′·SIGMA_MAX (an entry of a matrix is at most its
    largest singular value), whatever the codec did to the momentum."""
    lr, shape = 1e-2, (N // ROW, ROW)
    step_bound = lr * SIGMA_MAX * (1 + 1e-4)  # wide: η′ = η·√max(1, rows/cols) = η
    param = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    opt = tightfit.Muon([param], lr=lr, weight_decay=0.0, state=codec, min_quantized_numel=1)
    for grad in gradient_sequence(s):
        before, skips = param.detach().clone(), opt.skipped_steps
        param.grad = grad.view(shape)
        opt.step()
        if not bool(grad.abs().max() < opt.rule.grad_limit):
            assert opt.skipped_steps == skips + 1 and torch.equal(param.detach(), before)
            continue
        assert opt.skipped_steps == skips and torch.isfinite(param).all()
        momentum = opt.state[param]["momentum_buffer"]
        assert torch.isfinite(get_codec(momentum.codec).decode(momentum)).all()
        allowed = step_bound + 2**-23 * torch.maximum(before.abs(), param.detach().abs())
        assert float(((param.detach() - before).abs() - allowed).max()) <= 0


def fsdp2_muon(model, codec):
    return tightfit.Muon(model, lr=2e-2, adamw={"lr": 1e-2}, state=codec, min_quantized_numel=512)


@workers.rank_main
def train_on_ranks(rank, world, out_dir, codecs):
    for codec in codecs:
        model = workers.fsdp_model()
        workers.train(model, fsdp2_muon(model, codec), workers.batches(), rank, world)
        params = workers.full_params(model)
        if rank == 0:
            torch.save(params, os.path.join(out_dir, f"{codec}.pt"))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_fsdp2_two_ranks_equal_one_process(tmp_path):
    """The tutorial pattern (fully_shard per layer, gloo, CPU): Muon's matrices are sharded by
    rows; the rule's torch ops run on DTensors, so the orthogonalization sees whole matrices."""
    codecs = ("fp32", "8bit")
    rendezvous = tempfile.mktemp(prefix="tightfit-rdzv-")  # gloo's FileStore creates it
    try:
        mp.spawn(train_on_ranks, args=(2, rendezvous, str(tmp_path), codecs), nprocs=2, join=True)
    finally:
        if os.path.exists(rendezvous):
            os.unlink(rendezvous)
    for codec in codecs:
        model = workers.model_factory()
        workers.train(model, fsdp2_muon(model, codec), workers.batches(), emulate_world=2)
        ranks = torch.load(tmp_path / f"{codec}.pt")
        assert max_relative_difference(ranks, list(model.parameters())) <= MUON_TOL["fsdp2"], codec
