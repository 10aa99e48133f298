"""bf16 params with stochastic rounding (``stochastic_rounding=True``) through the shell.

Every implementation draws the same counter-based random bits (kernels/rounding.py), so
their bf16 params must agree bit for bit; the rounding must be unbiased where
round-to-nearest loses small updates; a resumed run must draw what it would have drawn.
"""

import pytest
import torch

import tightfit
from optim_cases import MATRIX, case
from tightfit.impl import select_implementation

# (case of the table, state codec): every rule with a lossy codec, and fp32 states.
ROWS = {f"{c.id}_{codec}": (c, codec) for c in MATRIX for codec in ("fp32", "8bit")}
ROWS.update({"lion_decay_fp32": (case("lion_decay"), "fp32"), "came_4bit": (case("came"), "4bit")})
FACTORIES = {name: (lambda p, c=c, codec=codec, **k: c.make(p, state=codec, min_quantized_numel=0, **k))
             for name, (c, codec) in ROWS.items()}
SHAPES = [(40, 33), (300,), ()]


def _run(factory, impl, steps=3, seed=0, split_at=None):
    torch.manual_seed(0)
    params = [torch.randn(s).to(torch.bfloat16).requires_grad_() for s in SHAPES]
    grads = [[torch.randn(s).to(torch.bfloat16) for s in SHAPES] for _ in range(steps)]
    opt = factory(params, impl=impl, stochastic_rounding=True, rounding_seed=seed)
    for i, step_grads in enumerate(grads):
        if i == split_at:  # save, rebuild, load: a resumed run
            saved = opt.state_dict()
            opt = factory(params, impl=impl, stochastic_rounding=True, rounding_seed=seed)
            opt.load_state_dict(saved)
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return params


# row -> implementations that must equal the reference bit for bit: native_codec for every
# row; the Triton kernels for the elementwise rules (the factored kernels sum statistics in
# another order: tests/kernels/test_factored_step.py compares their rounding within an ulp).
IMPLS = {name: ["native_codec"] + (["triton"] if c.elementwise else []) for name, (c, _) in ROWS.items()}


@pytest.mark.parametrize("rule, impl", [(r, i) for r, impls in IMPLS.items() for i in impls])
def test_implementations_round_identically(rule, impl):
    ref = _run(FACTORIES[rule], "reference")
    other = _run(FACTORIES[rule], impl)
    for a, b in zip(other, ref):
        assert a.dtype == torch.bfloat16
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.mark.parametrize("rule", list(FACTORIES))
def test_resume_draws_the_same_bits(rule):
    whole = _run(FACTORIES[rule], "auto", steps=4)
    resumed = _run(FACTORIES[rule], "auto", steps=4, split_at=2)
    for a, b in zip(whole, resumed):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))


def test_seed_changes_the_bits():
    a = _run(FACTORIES["sgd_fp32"], "auto", seed=0)
    b = _run(FACTORIES["sgd_fp32"], "auto", seed=1)
    assert not torch.equal(a[0], b[0])


@pytest.mark.parametrize("stochastic", [False, True])
def test_small_updates_survive_only_with_stochastic_rounding(stochastic):
    """lr * grad = 1e-4 is far below half a bf16 ulp at 1.0 (2^-8): round-to-nearest never
    moves the param; stochastic rounding moves it by 1e-4 per step on average."""
    p = torch.ones(8192, dtype=torch.bfloat16, requires_grad=True)
    opt = tightfit.SGD([p], lr=1e-4, stochastic_rounding=stochastic)
    for _ in range(50):
        p.grad = torch.ones_like(p)
        opt.step()
    mean = p.float().mean().item()
    if stochastic:
        assert mean == pytest.approx(1 - 50 * 1e-4, abs=5e-4)  # 8192 draws: std of the mean ~6e-5 per step
    else:
        assert mean == 1.0


def test_fp32_params_ignore_the_flag():
    torch.manual_seed(0)
    start, grad = torch.randn(500), torch.randn(500)
    out = []
    for stochastic in (False, True):
        p = start.clone().requires_grad_()
        p.grad = grad.clone()
        tightfit.AdamW([p], lr=1e-2, stochastic_rounding=stochastic).step()
        out.append(p)
    assert torch.equal(out[0], out[1])


def test_fused_native_refuses_and_auto_falls_back():
    p = torch.randn(4096, dtype=torch.bfloat16, requires_grad=True)
    p.grad = torch.randn_like(p)
    opt = tightfit.AdamW([p], state="8bit", stochastic_rounding=True)
    state = opt.ensure_state(p, opt.param_groups[0])
    rounding = opt.rounding_for(opt.param_groups[0], [p])
    assert select_implementation("auto", opt.rule, [p], [state], rounding).name == "native_codec"
    with pytest.raises(ValueError, match="stochastic rounding"):
        select_implementation("native", opt.rule, [p], [state], rounding)


@pytest.mark.parametrize("options, word", [
    ({"stochastic_rounding": "yes"}, "stochastic_rounding"),
    ({"stochastic_rounding": True, "rounding_seed": -1}, "rounding_seed"),
    ({"stochastic_rounding": True, "rounding_seed": 2**32}, "rounding_seed"),
    ({"stochastic_rounding": True, "rounding_seed": 1.5}, "rounding_seed"),
])
def test_bad_options_raise(options, word):
    with pytest.raises(ValueError, match=word):
        tightfit.AdamW([torch.zeros(3, requires_grad=True)], **options)
