"""The native CPU implementation against the reference, rule x codec x param dtype.

Each case runs the same steps from identical starts through impl="native" and
impl="reference" and compares params, every decoded state and the raw codes.
"""

import pytest
import torch

import tightfit
from tightfit.codecs import Encoded, get_codec
from tightfit.impl import IMPLEMENTATIONS, select_implementation
from tightfit.impl.native import build
from tightfit.rules import get_rule

NATIVE_REASON = build.load_kernel()[1]
pytestmark = pytest.mark.skipif(NATIVE_REASON is not None, reason=str(NATIVE_REASON))

# Tolerances (max |native - reference| / max |reference|), with where each comes from.
TOL = {
    # Lion, SGD: same float32 operations in the same order, no FMA -> bit-identical.
    "exact": 0.0,
    # Adam family: torch's CPU sqrt (MKL VML) is not correctly rounded; the kernel's is
    # (IEEE vsqrtps), so the denominator differs by <= 1 ulp on ~0.6 % of elements
    # (measured 2026-11-22): <= 2^-23 relative of lr-sized updates per step.
    "adam_param": 1e-6,
    # bf16 / fp16 params: a 1-ulp float32 difference can flip the final rounding:
    # one bf16 ulp (2^-8 relative), one fp16 ulp (2^-11).
    "bf16_param": 2.0**-7,
    "fp16_param": 2.0**-10,
    # States of coupled-L2 Adam see g + wd*theta, so they inherit theta's 1-ulp
    # differences; a normalized value at a midpoint can round to the neighbour code.
    "state_inherits_param": 1e-5,
    "codes_max_step": 1,       # codes differ by at most one map step ...
    "codes_max_fraction": 0.01,  # ... on at most this fraction of elements
}

RULES = {  # name: (factory, param tolerance key for fp32 params, states exact?)
    "adamw": (lambda p, **k: tightfit.AdamW(p, **{"lr": 1e-2, "weight_decay": 0.1, **k}), "adam_param", True),
    "adamw_maximize": (lambda p, **k: tightfit.AdamW(p, lr=1e-2, betas=(0.8, 0.99), maximize=True, **k),
                       "adam_param", True),
    "adam_l2": (lambda p, **k: tightfit.Adam(p, lr=1e-2, weight_decay=0.1, **k), "adam_param", False),
    "adam_decoupled": (lambda p, **k: tightfit.Adam(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, **k),
                       "adam_param", True),
    "lion": (lambda p, **k: tightfit.Lion(p, lr=1e-3, weight_decay=0.1, **k), "exact", True),
    "sgd_plain": (lambda p, **k: tightfit.SGD(p, lr=1e-2, weight_decay=1e-2, **k), "exact", True),
    "sgd_momentum_dampening": (lambda p, **k: tightfit.SGD(p, lr=1e-2, momentum=0.9, dampening=0.3, **k),
                               "exact", True),
    "sgd_nesterov_maximize": (lambda p, **k: tightfit.SGD(p, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3,
                                                          maximize=True, **k), "exact", True),
    # Adafactor: means of g², RMS(θ), RMS(U) are summed in double by the kernel, in float32 by torch.
    "adafactor": (lambda p, **k: tightfit.Adafactor(p, lr=1e-2, weight_decay=0.1, **k), "adam_param", False),
    "adafactor_momentum_maximize": (lambda p, **k: tightfit.Adafactor(p, lr=1e-2, beta1=0.9, maximize=True, **k),
                                    "adam_param", False),
    "sophiag": (lambda p, **k: tightfit.SophiaG(p, lr=1e-2, rho=0.04, bs=10, weight_decay=0.1, **k), "exact", True),
    "sophiag_maximize": (lambda p, **k: tightfit.SophiaG(p, lr=1e-2, rho=0.04, bs=10, maximize=True, **k),
                         "exact", True),
}

# (rule, codec, param dtype, shapes): odd numels (not a multiple of 256 / 128), 0-dim, several params.
SHAPES = [(3, 1000), (), (2, 128), (257,)]
CASES = [(rule, codec, torch.float32, SHAPES) for rule in RULES for codec in ("fp32", "bf16", "8bit", "4bit")]
CASES += [(rule, codec, dtype, [(999,), (4, 33)]) for rule in ("adamw", "lion", "sgd_momentum_dampening",
                                                                 "adafactor_momentum_maximize")
          for codec in ("8bit", "4bit") for dtype in (torch.bfloat16, torch.float16)]
STEPS = 4


def _run_pair(rule, codec, dtype, shapes, steps=STEPS, lr_tensor=False, nan_at=None):
    """(native params, native states, reference params, reference states) after ``steps``."""
    factory = RULES[rule][0]
    starts = [torch.randn(s).to(dtype) for s in shapes]
    grads = [[torch.randn(s).to(dtype) for s in shapes] for _ in range(steps)]
    if nan_at is not None:  # (step, param index): a NaN in that gradient
        grads[nan_at[0]][nan_at[1]].view(-1)[0] = float("nan")
    out = []
    for impl in ("native", "reference"):
        params = [x.clone().requires_grad_() for x in starts]
        lr = {"lr": torch.tensor(1e-2)} if lr_tensor and impl == "native" else {}
        opt = factory(params, state=codec, min_quantized_numel=0, impl=impl, **lr)
        for i, step_grads in enumerate(grads):
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            if hasattr(opt, "update_hessian") and i > 0:  # SophiaG: a refreshed h, then the step
                opt.update_hessian()
            opt.step()
        out += [params, [opt.state[p] for p in params]]
    return out


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item() if a.numel() else 0.0


def _compare_states(nat_states, ref_states, states_exact):
    for ns, rs in zip(nat_states, ref_states):
        assert ns["step"].item() == rs["step"].item()
        assert ns["nonfinite_skips"].item() == rs["nonfinite_skips"].item()
        for name, enc in rs.items():
            if not isinstance(enc, Encoded):
                continue
            nenc = ns[name]
            codec = get_codec(enc.codec)
            tol = TOL["exact"] if states_exact else TOL["state_inherits_param"]
            assert _rel(codec.decode(nenc), codec.decode(enc)) <= tol, name
            if "codes" in enc.buffers:
                a, b = nenc.buffers["codes"], enc.buffers["codes"]
                if codec.bits == 4:  # compare codes, not packed bytes
                    a, b = torch.stack([a & 15, a >> 4]), torch.stack([b & 15, b >> 4])
                step = (a.int() - b.int()).abs()
                bound = 0 if states_exact else TOL["codes_max_step"]
                assert int(step.max()) <= bound, name
                assert (step > 0).float().mean().item() <= (0 if states_exact else TOL["codes_max_fraction"])


@pytest.mark.parametrize("rule, codec, dtype, shapes", CASES,
                         ids=[f"{r}-{c}-{str(d)[6:]}" for r, c, d, _ in CASES])
def test_native_matches_reference(rule, codec, dtype, shapes):
    nat_p, nat_s, ref_p, ref_s = _run_pair(rule, codec, dtype, shapes)
    _, fp32_tol, states_exact = RULES[rule]
    tol = {torch.float32: TOL[fp32_tol], torch.bfloat16: TOL["bf16_param"], torch.float16: TOL["fp16_param"]}[dtype]
    for a, b in zip(nat_p, ref_p):
        assert a.dtype == b.dtype == dtype
        assert _rel(a, b) <= tol
    _compare_states(nat_s, ref_s, states_exact and dtype == torch.float32)


@pytest.mark.parametrize("rule, codec", [("adamw", "8bit"), ("lion", "4bit"), ("sgd_momentum_dampening", "bf16")])
def test_nonfinite_grad_skips_only_that_param(rule, codec):
    nat_p, nat_s, ref_p, ref_s = _run_pair(rule, codec, torch.float32, [(300,), (40,)], steps=3, nan_at=(1, 0))
    assert [s["nonfinite_skips"].item() for s in nat_s] == [1, 0]
    assert [s["step"].item() for s in nat_s] == [2, 3]
    for a, b in zip(nat_p, ref_p):
        assert _rel(a, b) <= TOL[RULES[rule][1]]
    _compare_states(nat_s, ref_s, True)


def test_tensor_lr_matches_float_lr():
    """native with lr as a 0-d tensor == reference with the same lr as a float."""
    nat_p, nat_s, ref_p, ref_s = _run_pair("adamw", "8bit", torch.float32, [(600,)], lr_tensor=True)
    assert _rel(nat_p[0], ref_p[0]) <= TOL["adam_param"]
    _compare_states(nat_s, ref_s, True)


@pytest.mark.parametrize("codecs", [("8bit", "4bit"), ("4bit", "fp32"), ("bf16", "8bit")])
def test_mixed_codecs_per_state(codecs):
    """m and v in different codecs go through the same kernel (driven at the impl level)."""
    rule, hyper = get_rule("adamw"), {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                                      "maximize": False}
    start, grads = torch.randn(777), [torch.randn(777) for _ in range(3)]
    results = {}
    for impl in ("native", "reference"):
        p = start.clone().requires_grad_()
        state = {"step": torch.zeros(()), "nonfinite_skips": torch.zeros((), dtype=torch.int64),
                 "exp_avg": get_codec(codecs[0]).zeros(p.shape, "signed", p.device),
                 "exp_avg_sq": get_codec(codecs[1]).zeros(p.shape, "unsigned", p.device)}
        for g in grads:
            p.grad = g.clone()
            with torch.no_grad():
                IMPLEMENTATIONS[impl].step_group(rule, hyper, [p], [state])
        results[impl] = (p, state)
    assert _rel(results["native"][0], results["reference"][0]) <= TOL["adam_param"]
    _compare_states([results["native"][1]], [results["reference"][1]], True)


UNAVAILABLE = {  # what makes native refuse, and a word its reason must contain
    "non-contiguous param": (lambda: torch.randn(64, 32).t(), "contiguous"),
}  # float64 params never get here: the optimizer refuses them (tests/test_optimizer.py)


@pytest.mark.parametrize("case", list(UNAVAILABLE))
def test_unavailable_falls_back_or_raises(case):
    make, word = UNAVAILABLE[case]
    p = make().requires_grad_()
    p.grad = torch.randn_like(p)
    opt = tightfit.AdamW([p], state="8bit")
    state = opt.ensure_state(p, opt.param_groups[0])
    reason = IMPLEMENTATIONS["native"].unavailable_reason(opt.rule, [p], [state])
    assert reason is not None and word in reason
    # the rule then runs in PyTorch with native codec passes (they take any param layout)
    assert select_implementation("auto", opt.rule, [p], [state]).name == "native_codec"
    with pytest.raises(ValueError, match="native"):
        select_implementation("native", opt.rule, [p], [state])


BUILD_FAILURES = {  # how the build can fail, and what the reason must say
    "no compiler": ({"COMPILERS": ("no-such-compiler++",)}, "no C++ compiler"),
    "compile error": ({"SOURCE_DIR": "broken"}, "failed"),
}


@pytest.mark.parametrize("case", list(BUILD_FAILURES))
def test_build_failure_is_a_reason_not_a_crash(case, monkeypatch, tmp_path):
    patch, words = BUILD_FAILURES[case]
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("TIGHTFIT_CACHE", str(tmp_path))
    if "SOURCE_DIR" in patch:
        bad = tmp_path / "csrc"
        (bad / "rules").mkdir(parents=True)
        (bad / "step.cpp").write_text("this is not C++;\n")
        monkeypatch.setattr(build, "SOURCE_DIR", bad)
    else:
        monkeypatch.setattr(build, "COMPILERS", patch["COMPILERS"])
        monkeypatch.setattr(build.shutil, "which", lambda name: None)
    build.load_level.cache_clear()
    try:
        lib, reason = build.load_kernel()
        assert lib is None and words in reason
    finally:
        monkeypatch.undo()
        build.load_level.cache_clear()
    assert build.load_kernel()[0] is not None  # the real kernel comes back (from the cache)


@pytest.mark.parametrize("bad_at", [None, 0, 150_000, 299_999])
def test_one_call_for_all_params_scans_every_chunk_and_is_thread_count_independent(bad_at):
    """tf_step_many: the scan and the tiles of every param in one index space; a NaN in a late
    scan chunk of the middle param skips that param only, and 1 or 2 threads agree bit for bit."""
    shapes = [(1000,), (300_000,), (3, 77)]  # enough work for the second thread (step.cpp)
    starts = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) for s in shapes]
    if bad_at is not None:
        grads[1][bad_at] = float("inf")
    out = []
    threads = torch.get_num_threads()
    for n in (1, 2):
        torch.set_num_threads(n)
        try:
            params = [x.clone().requires_grad_() for x in starts]
            opt = tightfit.AdamW(params, lr=1e-2, state="8bit", min_quantized_numel=0, impl="native")
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
            out.append((params, [opt.state[p] for p in params]))
        finally:
            torch.set_num_threads(threads)
    (p1, s1), (p2, s2) = out
    assert [s["nonfinite_skips"].item() for s in s1] == [0, int(bad_at is not None), 0]
    assert torch.equal(p1[1], starts[1]) == (bad_at is not None)
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)
    for a, b in zip(s1, s2):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(a[key].buffers["codes"], b[key].buffers["codes"])
