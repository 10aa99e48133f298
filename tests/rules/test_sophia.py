"""SophiaG (rules/sophia.py) against a readable reference of Liuhong99/Sophia sophia.py,
including GNB Hessian refreshes; codecs, bytes, state_dict, edge cases."""

import io

import pytest
import torch
import torch.nn.functional as F

import tightfit
from optim_cases import TOLERANCES as TOL
from sophia_reference import ReferenceSophiaG
from tightfit.rules.sophia import sophiag_hessian_update

# Tolerances: optim_cases.TOLERANCES, with what this file measured.

STEPS, HESSIAN_EVERY = 50, 3


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 6, generator=g)
    return x, (x[:, :5].argmax(dim=1) + (x[:, 5] > 1).long()) % 5


def train(model, opt, steps, start=0, sample_seed=7):
    """Steps with a GNB Hessian refresh every HESSIAN_EVERY steps (labels from the model's logits)."""
    sampler = torch.Generator().manual_seed(sample_seed + start)
    snapshots = []
    for step in range(start, start + steps):
        x, y = batch(step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if step % HESSIAN_EVERY == HESSIAN_EVERY - 1:
            opt.zero_grad()
            logits = model(x)
            sampled = torch.multinomial(logits.softmax(-1).detach(), 1, generator=sampler).squeeze(1)
            F.cross_entropy(logits, sampled).backward()
            opt.update_hessian()
        snapshots.append([p.detach().clone() for p in model.parameters()])
    opt.zero_grad()
    return snapshots


def max_rel_err(ours, theirs):
    return max(float((a - b).norm() / b.norm().clamp(min=1e-30)) for sa, sb in zip(ours, theirs)
               for a, b in zip(sa, sb))


CASES = {
    "defaults_small_bs": {"lr": 1e-4, "betas": (0.965, 0.99), "rho": 0.04, "weight_decay": 1e-1, "bs": 32},
    "large_lr": {"lr": 1e-2, "betas": (0.9, 0.95), "rho": 0.05, "weight_decay": 0.2, "bs": 32},
}


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_with_hessian_refresh(case):
    model_a, model_b = make_model(), make_model()
    ours = train(model_a, tightfit.SophiaG(model_a.parameters(), **CASES[case]), STEPS)
    ref_opt = ReferenceSophiaG(model_b.parameters(), **CASES[case])
    ref = train(model_b, ref_opt, STEPS)
    assert max_rel_err(ours, ref) <= TOL["fp32_vs_external"]
    # the run exercises both branches of the clip: some coordinates clipped, some not
    m, h = ref_opt.exp_avg[0], ref_opt.hessian[0]
    unclipped = (m.abs() < CASES[case]["rho"] * CASES[case]["bs"] * h).float().mean()
    assert 0.0 < float(unclipped) < 1.0


def test_before_first_refresh_step_is_lr_sign_m():
    """h = 0: every coordinate clips, θ ← θ(1 − ηλ) − η·sign(m)."""
    param = torch.tensor([1.0, -1.0, 0.5], requires_grad=True)
    opt = tightfit.SophiaG([param], lr=0.1, weight_decay=0.0)
    param.grad = torch.tensor([1e-6, -3.0, 0.2])
    opt.step()
    assert torch.allclose(param.detach(), torch.tensor([0.9, -0.9, 0.4]))


def test_hessian_refresh_is_ema_of_grad_squared_and_does_not_step():
    param = torch.zeros(4, requires_grad=True)
    opt = tightfit.SophiaG([param], betas=(0.9, 0.5))
    param.grad = torch.tensor([1.0, 2.0, -3.0, 0.0])
    opt.update_hessian()
    opt.update_hessian()
    expected = sophiag_hessian_update(sophiag_hessian_update(torch.zeros(4), param.grad, beta2=0.5),
                                      param.grad, beta2=0.5)
    assert torch.equal(opt.state[param]["hessian"].buffers["values"], expected)
    assert torch.allclose(expected, torch.tensor([0.75, 3.0, 6.75, 0.0]))
    assert int(opt.state[param]["step"]) == 0 and torch.equal(param.detach(), torch.zeros(4))


# codec -> bytes of exp_avg + hessian for a 64x96 param (6144 elements: quantized)
STATE_BYTES = {"fp32": 2 * 6144 * 4, "bf16": 2 * 6144 * 2, "8bit": 2 * (6144 + 4 * 24), "4bit": 2 * (6144 // 2 + 4 * 48)}
SUFFIX = {"fp32": "32bit", "bf16": "bf16", "8bit": "8bit", "4bit": "4bit"}


@pytest.mark.parametrize("codec", STATE_BYTES)
def test_states_go_through_codec_with_exact_bytes(codec):
    param = torch.randn(64, 96, requires_grad=True)
    opt = tightfit.create_optimizer(f"sophiag_{SUFFIX[codec]}", [param])
    param.grad = torch.randn(64, 96)
    opt.update_hessian()
    opt.step()
    state = opt.state[param]
    assert (state["exp_avg"].codec, state["hessian"].codec) == (codec, codec)
    assert (state["exp_avg"].kind, state["hessian"].kind) == ("signed", "unsigned")
    assert opt.state_nbytes() == STATE_BYTES[codec]


def final_loss(codec):
    model = make_model(1)
    opt = tightfit.SophiaG(model.parameters(), lr=3e-2, rho=0.05, weight_decay=0.0, bs=32, state=codec,
                           min_quantized_numel=64)
    train(model, opt, 120)
    with torch.no_grad():
        return sum(float(F.cross_entropy(model(x), y)) for x, y in map(batch, range(200, 210))) / 10


def test_8bit_converges_like_fp32():
    fp32, q8 = final_loss("fp32"), final_loss("8bit")
    assert fp32 < 0.8 * 1.609  # well below chance (ln 5)
    assert q8 <= TOL["converge_8bit"] * fp32


@pytest.mark.parametrize("codec", ["fp32", "8bit"])
def test_state_dict_round_trip_bit_exact(codec):
    model_a = make_model()
    kw = dict(lr=1e-2, bs=32, state=codec, min_quantized_numel=64)
    opt_a = tightfit.SophiaG(model_a.parameters(), **kw)
    train(model_a, opt_a, 5)
    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)
    model_b = make_model(1)
    model_b.load_state_dict(model_a.state_dict())
    opt_b = tightfit.SophiaG(model_b.parameters(), **kw)
    buf.seek(0)
    opt_b.load_state_dict(torch.load(buf, weights_only=True))
    a, b = train(model_a, opt_a, 6, start=5), train(model_b, opt_b, 6, start=5)
    for sa, sb in zip(a, b):
        assert all(torch.equal(x, y) for x, y in zip(sa, sb))


def test_edge_cases_scalar_none_and_nonfinite_grads():
    scalar, vector, frozen = torch.tensor(2.0, requires_grad=True), torch.ones(3, requires_grad=True), torch.ones(2)
    frozen.requires_grad_()
    opt = tightfit.SophiaG([scalar, vector, frozen], lr=0.1, weight_decay=0.0)
    scalar.grad, vector.grad = torch.tensor(0.5), torch.tensor([1.0, float("nan"), 1.0])
    opt.update_hessian()  # non-finite: h untouched, counted
    assert opt.skipped_steps == 1
    assert torch.equal(opt.state[vector]["hessian"].buffers["values"], torch.zeros(3))
    opt.step()
    # m = 0.035·0.5, h = 0.01·0.5², default ρ·bs = 0.04·5120: unclipped ratio m/(ρ·bs·h)
    assert torch.allclose(scalar.detach(), torch.tensor(2.0 - 0.1 * (0.035 * 0.5) / (0.04 * 5120 * 0.01 * 0.25)))
    assert torch.equal(vector.detach(), torch.ones(3)) and opt.skipped_steps == 2
    assert frozen not in opt.state and torch.equal(frozen.detach(), torch.ones(2))


BAD_OPTIONS = [
    ({"lr": -1.0}, "lr"),
    ({"betas": (0.965, 1.0)}, "betas"),
    ({"rho": -0.1}, "rho"),
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"bs": 0}, "bs"),
]


@pytest.mark.parametrize("options,words", BAD_OPTIONS)
def test_bad_options_raise(options, words):
    with pytest.raises(ValueError, match=words):
        tightfit.SophiaG(make_model().parameters(), **options)
