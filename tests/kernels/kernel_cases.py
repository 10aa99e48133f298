"""Shared data for the kernel tests: optimizers per rule, shapes, tolerances, comparisons."""

import torch

import tightfit
from tightfit.codecs import get_codec
from tightfit.codecs.blockwise import unpack_nibbles

# Tolerances, with where each comes from.
TOL = {
    # fp32 params/states: the kernels combine hyperparameters in float64 and round once,
    # like the reference's Python floats, but compute beta**t by binary exponentiation
    # (Python's pow differs by an ulp of float64), so step sizes may differ in the last
    # float32 bit; measured max 2.3e-10 absolute on 3 AdamW steps.
    "fp32_relative": 1e-6,
    # bf16 params/states: the same last-bit slack can flip a round-to-nearest: one bf16 ulp.
    "bf16_relative": 2.0**-7,
    # fp16 params: likewise one fp16 ulp (11 significant bits).
    "fp16_relative": 2.0**-10,
    # Quantized codes: nearest-code search; a normalized value within float32 rounding of a
    # midpoint may land one code over (ties). Codes differ by at most one step, and rarely.
    "code_steps": 1,
    "code_mismatch_fraction": 0.01,
    # Factored rules (Adafactor, CAME): row/column statistics, RMS(θ) and RMS(U) are
    # summed in another order (tiles, then atomic adds) than torch's mean and norm, so
    # statistics, step sizes and updates agree to float32 summation error, not bit for bit.
    "factored_relative": 1e-5,
    # ... and with quantized first moments a code that flipped over a tie (above) moves the
    # next steps' updates of its element by up to about a code step: such elements (at most
    # code_mismatch_fraction of them) may differ by this fraction of the largest change.
    "factored_code_flip_relative": 2e-2,
    # absmax: max |state| of a block, the same float32 state up to the fp32 slack above.
    "absmax_relative": 1e-6,
}

# rule name -> factory(params, **options); hyperparameters chosen so every term matters
# (weight decay, momentum, dampening, nesterov, maximize).
RULE_FACTORIES = {
    "adamw": lambda p, **k: tightfit.AdamW(p, lr=1e-2, weight_decay=0.1, **k),
    "adam": lambda p, **k: tightfit.Adam(p, lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2, maximize=True, **k),
    "lion": lambda p, **k: tightfit.Lion(p, lr=1e-3, weight_decay=0.5, **k),
    "sgd": lambda p, **k: tightfit.SGD(p, lr=3e-2, momentum=0.9, dampening=0.2, weight_decay=1e-3, **k),
    "sgd_nesterov": lambda p, **k: tightfit.SGD(p, lr=3e-2, momentum=0.9, nesterov=True, **k),
    "sgd_plain": lambda p, **k: tightfit.SGD(p, lr=3e-2, weight_decay=1e-2, **k),
    # rho * bs small enough that some coordinates are not clipped once h is refreshed
    "sophiag": lambda p, **k: tightfit.SophiaG(p, lr=1e-2, rho=0.04, bs=10, weight_decay=0.1, **k),
    "sophiag_maximize": lambda p, **k: tightfit.SophiaG(p, lr=1e-2, rho=0.04, bs=10, maximize=True, **k),
    # Factored rules, each convention with every term switched on somewhere.
    "adafactor": lambda p, **k: tightfit.Adafactor(p, lr=1e-2, weight_decay=0.1, **k),
    "adafactor_momentum": lambda p, **k: tightfit.Adafactor(p, lr=1e-2, beta1=0.9, maximize=True, **k),
    "adafactor_hf": lambda p, **k: tightfit.Adafactor(p, convention="hf", **k),
    "adafactor_hf_fixed_lr": lambda p, **k: tightfit.Adafactor(p, lr=1e-3, convention="hf", relative_step=False,
                                                               scale_parameter=False, beta1=0.9, weight_decay=0.1,
                                                               **k),
    "adafactor_hf_warmup": lambda p, **k: tightfit.Adafactor(p, convention="hf", warmup_init=True, beta1=0.5, **k),
    "came": lambda p, **k: tightfit.CAME(p, lr=1e-3, weight_decay=0.1, **k),
}

# Odd numel spanning two programs and a partial 4-bit/8-bit block, a small vector, a 0-dim param.
SHAPES = [(37, 29), (300,), ()]


def make_params(shapes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype) for shape in shapes]


def twin_optimizers(rule, params, **options):
    """(triton optimizer, reference optimizer) over identical copies of ``params``."""
    fast = [p.clone().requires_grad_() for p in params]
    slow = [p.clone().requires_grad_() for p in params]
    return (RULE_FACTORIES[rule](fast, impl="triton", **options),
            RULE_FACTORIES[rule](slow, impl="reference", **options))


def set_grads(opt_a, opt_b, seed, nonfinite_index=None):
    g = torch.Generator().manual_seed(seed)
    for a, b in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
        grad = torch.randn(a.shape, generator=g).to(a.dtype)
        a.grad, b.grad = grad.clone(), grad.clone()
    if nonfinite_index is not None:
        for opt in (opt_a, opt_b):
            opt.param_groups[0]["params"][nonfinite_index].grad.view(-1)[0] = float("nan")


def relative_error(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) if a.numel() else 0.0


def raw_codes(enc):
    """Every stored code, the 4-bit padding nibble of an odd numel included."""
    codes = enc.buffers["codes"]
    return (unpack_nibbles(codes, 2 * codes.numel()) if enc.codec == "4bit" else codes).long()


def assert_states_match(state_fast, state_slow, float_tol, loose=()):
    """States equal within the tolerance table; ``loose`` states (computed from a quantized
    first moment, e.g. CAME's residual statistics) get TOL["factored_code_flip_relative"]."""
    assert torch.equal(state_fast["step"], state_slow["step"])
    assert torch.equal(state_fast["nonfinite_skips"], state_slow["nonfinite_skips"])
    for name, enc in state_slow.items():
        if not hasattr(enc, "buffers"):
            continue
        fast = state_fast[name]
        assert fast.codec == enc.codec
        if "codes" in enc.buffers:
            steps = (raw_codes(fast) - raw_codes(enc)).abs()
            assert int(steps.max()) <= TOL["code_steps"], name
            assert float((steps > 0).float().mean()) <= TOL["code_mismatch_fraction"], name
            assert relative_error(fast.buffers["absmax"], enc.buffers["absmax"]) <= TOL["absmax_relative"], name
        else:
            codec = get_codec(enc.codec)
            # bf16 states: inputs within float_tol may still round one bf16 ulp apart.
            tol = max(float_tol, TOL["bf16_relative"]) if enc.codec == "bf16" else float_tol
            tol = TOL["factored_code_flip_relative"] if name in loose else tol
            assert relative_error(codec.decode(fast), codec.decode(enc)) <= tol, name


def step_without_syncs(opt, check: bool) -> None:
    """opt.step(); with ``check``, any host synchronisation inside it raises (CUDA only)."""
    if check:
        torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
