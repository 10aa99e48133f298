"""CAME (rules/came.py) against came_pytorch.CAME, codecs for the first moment, bytes,
state_dict, edge cases."""

import pytest
import torch

import tightfit
from optim_cases import TOLERANCES as TOL
from optim_cases import peer
from factored_cases import assert_round_trip_continues_identically, loss_of, make_params, max_rel_err, run

# Tolerances: optim_cases.TOLERANCES, with what this file measured.

STEPS = 50


CASES = {
    "readme": {"lr": 2e-4, "weight_decay": 1e-2},
    "large_lr": {"lr": 1e-2},
    "betas_eps_clip": {"lr": 3e-3, "betas": (0.9, 0.95, 0.995), "eps": (1e-20, 1e-12), "clip_threshold": 0.5},
}


@pytest.mark.parametrize("case", CASES)
def test_matches_came_pytorch(case):
    ours_params, ref_params = make_params(), make_params()
    ours = run(tightfit.CAME(ours_params, **CASES[case]), ours_params, STEPS)
    ref = run(peer("came_pytorch", "CAME")(ref_params, **CASES[case]), ref_params, STEPS)
    assert max_rel_err(ours, ref) <= TOL["factored_vs_external"]


# param shape -> expected state shapes (fp32 codec)
STATE_LAYOUT = [
    ((4096, 1024), {"exp_avg": (4096, 1024), "exp_avg_sq_row": (4096,), "exp_avg_sq_col": (1024,),
                    "exp_avg_res_row": (4096,), "exp_avg_res_col": (1024,)}),
    ((2, 3, 4), {"exp_avg": (2, 3, 4), "exp_avg_sq_row": (2, 3), "exp_avg_sq_col": (2, 4),
                 "exp_avg_res_row": (2, 3), "exp_avg_res_col": (2, 4)}),
    ((7,), {"exp_avg": (7,), "exp_avg_sq": (7,)}),
    ((), {"exp_avg": (), "exp_avg_sq": ()}),
]


@pytest.mark.parametrize("shape,expected", STATE_LAYOUT)
def test_state_layout_and_exact_bytes(shape, expected):
    param = torch.empty(shape, device="meta")  # layout only: no memory
    opt = tightfit.CAME([param], lr=1e-3)
    state = opt.ensure_state(param, opt.param_groups[0])
    assert {k: tuple(v.shape) for k, v in state.items() if isinstance(v, tightfit.codecs.Encoded)} == expected
    assert opt.state_nbytes() == sum(4 * int(torch.Size(s).numel()) for s in expected.values())


# codec -> bytes of exp_avg for a 64x96 param (6144 elements: quantized)
MOMENT_BYTES = {"fp32": 6144 * 4, "bf16": 6144 * 2, "8bit": 6144 + 4 * 24, "4bit": 6144 // 2 + 4 * 48}


@pytest.mark.parametrize("codec", MOMENT_BYTES)
def test_first_moment_goes_through_codec(codec):
    param = torch.randn(64, 96, requires_grad=True)
    opt = tightfit.create_optimizer(f"came_{ {'fp32': '32bit'}.get(codec, codec)}", [param], lr=1e-3)
    param.grad = torch.randn(64, 96)
    opt.step()
    assert opt.state[param]["exp_avg"].codec == codec
    assert opt.state[param]["exp_avg_res_row"].codec == "fp32"
    assert opt.state_nbytes() == MOMENT_BYTES[codec] + 2 * 4 * (64 + 96)


def train_regression(codec, steps=150):
    g = torch.Generator().manual_seed(3)
    true_w = torch.randn(64, 96, generator=g)
    x = torch.randn(256, 96, generator=g)
    y = x @ true_w.T + 0.01 * torch.randn(256, 64, generator=g)
    param = torch.zeros(64, 96, requires_grad=True)
    opt = tightfit.CAME([param], lr=0.05, state=codec)
    for _ in range(steps):
        opt.zero_grad()
        ((x @ param.T - y) ** 2).mean().backward()
        opt.step()
    with torch.no_grad():
        return float(((x @ param.T - y) ** 2).mean()), float((y ** 2).mean())


def test_8bit_first_moment_converges_like_fp32():
    fp32_loss, start = train_regression("fp32")
    q_loss, _ = train_regression("8bit")
    assert fp32_loss < 0.05 * start
    assert q_loss <= TOL["converge_8bit"] * fp32_loss


@pytest.mark.parametrize("codec", ["fp32", "8bit"])
def test_state_dict_round_trip_bit_exact(codec):
    assert_round_trip_continues_identically(
        lambda params: tightfit.CAME(params, lr=1e-2, weight_decay=1e-2, state=codec, min_quantized_numel=8))


def test_none_grad_and_nonfinite_grad():
    params = make_params()
    opt = tightfit.CAME(params, lr=1e-2)
    run(opt, params, 2)
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    loss_of(params, 2).backward()
    params[1].grad = None
    params[3].grad = torch.tensor(float("inf"))
    opt.step()
    assert torch.equal(params[1], before[1]) and torch.equal(params[3], before[3])
    assert not torch.equal(params[0], before[0])
    assert opt.skipped_steps == 1
    assert int(opt.state[params[3]]["step"]) == 2


def test_vector_has_no_confidence_term():
    """1-D: the step is lr·m exactly (m after its first update = (1-β₁)·clipped update)."""
    param = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = tightfit.CAME([param], lr=0.1)
    param.grad = torch.tensor([0.5, 0.5, -0.5])
    opt.step()
    m = opt.state[param]["exp_avg"].buffers["values"]
    assert torch.allclose(param.detach(), torch.tensor([1.0, -2.0, 3.0]) - 0.1 * m)
    # |g| equal everywhere -> clipped update is ±1, so m = 0.1·sign(g)
    assert torch.allclose(m, torch.tensor([0.1, 0.1, -0.1]))


BAD_OPTIONS = [
    ({}, "lr"),
    ({"lr": None}, "lr"),
    ({"lr": -1.0}, "lr"),
    ({"lr": 1e-3, "betas": (0.9, 0.999)}, "betas"),
    ({"lr": 1e-3, "betas": (0.9, 0.999, 1.0)}, "betas"),
    ({"lr": 1e-3, "eps": (1e-30, -1.0)}, "eps"),
    ({"lr": 1e-3, "clip_threshold": 0.0}, "clip_threshold"),
    ({"lr": 1e-3, "weight_decay": -0.1}, "weight_decay"),
]


@pytest.mark.parametrize("options,words", BAD_OPTIONS)
def test_bad_options_raise(options, words):
    with pytest.raises(ValueError, match=words):
        tightfit.CAME(make_params(), **options)
