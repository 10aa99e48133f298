"""Adafactor (rules/adafactor.py): torch and hf conventions against torch.optim.Adafactor and
transformers.Adafactor, codecs for the first moment, bytes, state_dict, edge cases."""

import copy

import pytest
import torch
import transformers

import tightfit
from optim_cases import TOLERANCES as TOL
from factored_cases import assert_round_trip_continues_identically, loss_of, make_params, max_rel_err, run
from tightfit.rules.adafactor import adafactor_hf_update, adafactor_update

# Tolerances: optim_cases.TOLERANCES, with what this file measured.

STEPS = 50


TORCH_CASES = {
    "defaults": {},
    "relative_step_wins_decay": {"lr": 0.5, "weight_decay": 0.01},
    "eps1_d_decay_maximize": {"eps": (1e-8, 1e-3), "d": 2.0, "beta2_decay": -0.5, "maximize": True},
}

HF_CASES = {
    "defaults": {},
    "external_lr": {"lr": 1e-2, "relative_step": False, "scale_parameter": False},
    "momentum_weight_decay": {"beta1": 0.9, "weight_decay": 0.01},
    "warmup_init_momentum": {"warmup_init": True, "beta1": 0.5},
    "external_lr_scaled_clip": {"lr": 1e-2, "relative_step": False, "clip_threshold": 0.5, "decay_rate": -0.5},
}


@pytest.mark.parametrize("case", TORCH_CASES)
def test_torch_convention_matches_torch_optim(case):
    ours_params, ref_params = make_params(), make_params()
    ours = run(tightfit.Adafactor(ours_params, **TORCH_CASES[case]), ours_params, STEPS)
    ref = run(torch.optim.Adafactor(ref_params, **TORCH_CASES[case]), ref_params, STEPS)
    assert max_rel_err(ours, ref) <= TOL["factored_vs_external"]


@pytest.mark.parametrize("case", HF_CASES)
def test_hf_convention_matches_transformers(case):
    ours_params, ref_params = make_params(), make_params()
    ours = run(tightfit.Adafactor(ours_params, convention="hf", **HF_CASES[case]), ours_params, STEPS)
    ref = run(transformers.Adafactor(ref_params, **HF_CASES[case]), ref_params, STEPS)
    assert max_rel_err(ours, ref) <= TOL["factored_vs_external"]


def test_conventions_differ():
    """The switch is real: decay is lr·λ (torch) vs αₜ·λ with αₜ RMS-scaled (hf).

    (With default options both conventions agree to ~1e-7: same 1e-2 relative step.)"""
    a_params, b_params = make_params(), make_params()
    a = run(tightfit.Adafactor(a_params, weight_decay=0.5), a_params, 3)
    b = run(tightfit.Adafactor(b_params, convention="hf", weight_decay=0.5), b_params, 3)
    assert max_rel_err(a, b) > 1e-3


# (convention, options, param shape, expected state names -> shapes)
STATE_LAYOUT = [
    ("torch", {}, (4096, 4096), {"row_var": (4096, 1), "col_var": (1, 4096)}),
    ("torch", {}, (2, 3, 4), {"row_var": (2, 3, 1), "col_var": (2, 1, 4)}),
    ("torch", {"beta1": 0.9}, (7,), {"exp_avg": (7,), "variance": (7,)}),
    ("torch", {}, (), {"variance": ()}),
    ("hf", {}, (4096, 4096), {"exp_avg_sq_row": (4096,), "exp_avg_sq_col": (4096,)}),
    ("hf", {"beta1": 0.9}, (2, 3, 4), {"exp_avg": (2, 3, 4), "exp_avg_sq_row": (2, 3), "exp_avg_sq_col": (2, 4)}),
    ("hf", {}, (), {"exp_avg_sq": ()}),
]


@pytest.mark.parametrize("convention,options,shape,expected", STATE_LAYOUT)
def test_state_layout_and_exact_bytes(convention, options, shape, expected):
    # meta device: a 4096x4096 layout costs nothing; the shell creates states lazily
    param = torch.empty(shape, device="meta")
    opt = tightfit.Adafactor([param], convention=convention, **options)
    state = opt.ensure_state(param, opt.param_groups[0])
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, tightfit.codecs.Encoded)}
    assert shapes == expected
    numel = lambda s: int(torch.Size(s).numel())
    assert opt.state_nbytes() == sum(4 * numel(s) for s in expected.values())


def test_4096_square_without_momentum_keeps_two_vectors():
    param = torch.empty(4096, 4096, device="meta")
    opt = tightfit.Adafactor([param], state="8bit")  # nothing to quantize: only small states
    opt.ensure_state(param, opt.param_groups[0])
    assert opt.state_nbytes() == 2 * 4096 * 4


# codec of the first moment -> bytes it keeps for a 64x96 param (6144 elements, quantized)
MOMENT_BYTES = {"fp32": 6144 * 4, "bf16": 6144 * 2, "8bit": 6144 + 4 * 24, "4bit": 6144 // 2 + 4 * 48}


@pytest.mark.parametrize("codec", MOMENT_BYTES)
def test_first_moment_goes_through_codec(codec):
    param = torch.randn(64, 96, requires_grad=True)
    opt = tightfit.Adafactor([param], convention="hf", beta1=0.9, state=codec)
    param.grad = torch.randn(64, 96)
    opt.step()
    assert opt.state[param]["exp_avg"].codec == codec
    assert opt.state[param]["exp_avg_sq_row"].codec == "fp32"
    assert opt.state_nbytes() == MOMENT_BYTES[codec] + 4 * (64 + 96)


def regression_loss(params, x, y):
    return ((x @ params[0].T - y) ** 2).mean()


def train_regression(name, steps=150, **kw):
    g = torch.Generator().manual_seed(3)
    true_w = torch.randn(64, 96, generator=g)
    x = torch.randn(256, 96, generator=g)
    y = x @ true_w.T + 0.01 * torch.randn(256, 64, generator=g)
    params = [torch.zeros(64, 96, requires_grad=True)]
    opt = tightfit.create_optimizer(name, params, **kw)
    for _ in range(steps):
        opt.zero_grad()
        regression_loss(params, x, y).backward()
        opt.step()
    with torch.no_grad():
        return float(regression_loss(params, x, y)), float((y ** 2).mean())


@pytest.mark.parametrize("prefix,kw", [
    ("adafactor", {"lr": 0.3}),
    ("adafactor_hf", {"lr": 0.02, "relative_step": False, "scale_parameter": False}),
])
def test_8bit_first_moment_converges_like_fp32(prefix, kw):
    fp32_loss, start = train_regression(f"{prefix}_32bit", **kw)
    q_loss, _ = train_regression(f"{prefix}_8bit", **kw)
    assert fp32_loss < 0.05 * start  # the problem is actually being solved
    assert q_loss <= TOL["converge_8bit"] * fp32_loss


@pytest.mark.parametrize("convention,options", [
    ("torch", {"lr": 0.5, "weight_decay": 0.01}),
    ("hf", {"beta1": 0.9, "state": "8bit", "min_quantized_numel": 8}),
])
def test_state_dict_round_trip_bit_exact(convention, options):
    assert_round_trip_continues_identically(
        lambda params: tightfit.Adafactor(params, convention=convention, **options))


def test_none_grad_param_untouched_and_stateless():
    params = make_params()
    opt = tightfit.Adafactor(params, convention="hf")
    frozen = params[1].detach().clone()
    opt.zero_grad()
    loss_of(params, 0).backward()
    params[1].grad = None
    opt.step()
    assert torch.equal(params[1], frozen)
    assert params[1] not in opt.state


@pytest.mark.parametrize("convention", ["torch", "hf"])
def test_nonfinite_grad_skips_param_only(convention):
    params = make_params()
    opt = tightfit.Adafactor(params, convention=convention)
    run(opt, params, 2)
    before = [p.detach().clone() for p in params]
    states_before = copy.deepcopy({i: opt.state[p] for i, p in enumerate(params)})
    opt.zero_grad()
    loss_of(params, 2).backward()
    params[2].grad[0, 0, 0] = float("nan")
    opt.step()
    assert torch.equal(params[2], before[2])
    saved = states_before[2]
    for key, value in opt.state[params[2]].items():
        if isinstance(value, tightfit.codecs.Encoded):
            assert torch.equal(value.buffers["values"], saved[key].buffers["values"])
    assert not torch.equal(params[0], before[0])  # the others still stepped
    assert opt.skipped_steps == 1


def test_factoring_3d_equals_per_slice_2d():
    """>2-D: the last two dims are factored independently for each leading index."""
    g = torch.Generator().manual_seed(5)
    param, grad = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    hyper = dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, beta1=None,
                 maximize=False)
    state = {"row_var": torch.zeros(3, 4, 1), "col_var": torch.zeros(3, 1, 5)}
    _, whole = adafactor_update(param, grad, state, step=1, **hyper)
    for i in range(3):
        _, part = adafactor_update(param[i], grad[i], {"row_var": torch.zeros(4, 1), "col_var": torch.zeros(1, 5)},
                                   step=1, **hyper)
        assert torch.allclose(whole["row_var"][i], part["row_var"])
        assert torch.allclose(whole["col_var"][i], part["col_var"])


def test_rule_is_pure():
    g = torch.Generator().manual_seed(6)
    param, grad = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    state = {"exp_avg": torch.randn(4, 5, generator=g), "exp_avg_sq_row": torch.rand(4, generator=g),
             "exp_avg_sq_col": torch.rand(5, generator=g)}
    before = {k: v.clone() for k, v in state.items()}
    param_before = param.clone()
    adafactor_hf_update(param, grad, state, step=3, lr=None, eps=(1e-30, 1e-3), clip_threshold=1.0,
                        decay_rate=-0.8, beta1=0.9, weight_decay=0.1, scale_parameter=True,
                        relative_step=True, warmup_init=False)
    assert torch.equal(param, param_before)
    assert all(torch.equal(state[k], before[k]) for k in state)


BAD_OPTIONS = [
    ("hf", {"lr": 1e-3}, ValueError, "relative_step"),
    ("hf", {"relative_step": False}, ValueError, "lr=None"),
    ("hf", {"warmup_init": True, "relative_step": False, "lr": 1e-3}, ValueError, "warmup_init"),
    ("hf", {"beta1": 1.0}, ValueError, "beta1"),
    ("hf", {"eps": (1e-30,)}, ValueError, "eps"),
    ("hf", {"clip_threshold": 0.0}, ValueError, "clip_threshold"),
    ("hf", {"d": 1.0}, TypeError, "allowed"),
    ("torch", {"d": 0.5}, ValueError, "d"),
    ("torch", {"beta2_decay": 0.2}, ValueError, "beta2_decay"),
    ("torch", {"lr": -1.0}, ValueError, "lr"),
    ("torch", {"eps": (-1.0, 1e-3)}, ValueError, "eps"),
    ("torch", {"relative_step": True}, TypeError, "allowed"),
    ("jax", {}, ValueError, "convention"),
]


@pytest.mark.parametrize("convention,options,error,words", BAD_OPTIONS)
def test_bad_options_raise(convention, options, error, words):
    with pytest.raises(error, match=words):
        tightfit.Adafactor(make_params(), convention=convention, **options)


NAMES = {
    "adafactor": ("adafactor", None, "fp32"),
    "adafactor_hf": ("adafactor_hf", None, "fp32"),
    "adafactor_8bit": ("adafactor", 0.9, "8bit"),
    "adafactor_hf_4bit": ("adafactor_hf", 0.9, "4bit"),
}


@pytest.mark.parametrize("name", NAMES)
def test_registered_names(name):
    rule, beta1, codec = NAMES[name]
    opt = tightfit.create_optimizer(name, make_params())
    assert (opt.rule.name, opt.param_groups[0]["beta1"], opt.param_groups[0]["state"]) == (rule, beta1, codec)
