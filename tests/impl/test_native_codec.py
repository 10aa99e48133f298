"""impl "native_codec" (rule in PyTorch, blockwise codec passes in C++) against the reference.

The codec passes must give the reference codec's codes, absmax and decoded values bit
for bit, so a step through native_codec equals a reference step exactly.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tightfit
from tightfit.codecs import Encoded, get_codec
from tightfit.impl import select_implementation
from tightfit.impl.native import build
from tightfit.impl.native.codec_passes import native_decode, native_store

NATIVE_REASON = build.load_kernel()[1]
pytestmark = pytest.mark.skipif(NATIVE_REASON is not None, reason=str(NATIVE_REASON))

# numels around block (256 / 128) and tile (1024) edges, odd for 4-bit packing
NUMELS = [1, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 5001]


def _values(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.logspace(-6, 2, n) ** 0.5
    x[: min(n, 300)] = 0.0  # a whole zero block: absmax 0 decodes to 0
    return x[torch.randperm(n, generator=g)] if n > 600 else x


@pytest.mark.parametrize("codec", ["8bit", "4bit"])
@pytest.mark.parametrize("kind", ["signed", "unsigned"])
@pytest.mark.parametrize("n", NUMELS)
def test_codec_passes_equal_reference_codec(codec, kind, n):
    c = get_codec(codec)
    x = _values(n, seed=n)
    if kind == "unsigned":
        x = x.abs()
    ref = c.encode(x, kind)
    enc = c.zeros(x.shape, kind, x.device)
    native_store(enc, x)
    for key in ref.buffers:
        assert torch.equal(enc.buffers[key], ref.buffers[key]), key
    assert torch.equal(native_decode(enc), c.decode(ref))


FACTORED = {  # name: factory over params (8-bit / 4-bit first moments go through the codec)
    "adafactor_momentum": lambda p, **k: tightfit.Adafactor(p, lr=1e-2, beta1=0.9, **k),
    "adafactor_hf": lambda p, **k: tightfit.Adafactor(p, lr=1e-3, convention="hf", beta1=0.9,
                                                      relative_step=False, **k),
    "came": lambda p, **k: tightfit.CAME(p, lr=1e-3, **k),
    "sophiag": lambda p, **k: tightfit.SophiaG(p, lr=1e-3, **k),
    "adamw": lambda p, **k: tightfit.AdamW(p, lr=1e-2, **k),
}


@pytest.mark.parametrize("codec", ["8bit", "4bit", "bf16"])
@pytest.mark.parametrize("rule", list(FACTORED))
def test_step_equals_reference_bit_for_bit(rule, codec):
    shapes = [(33, 70), (1000,), (3, 5, 40)]
    starts = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    out = {}
    for impl in ("native_codec", "reference"):
        params = [x.clone().requires_grad_() for x in starts]
        opt = FACTORED[rule](params, state=codec, min_quantized_numel=0, impl=impl)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
            if hasattr(opt, "update_hessian"):
                opt.update_hessian()
        out[impl] = (params, [opt.state[p] for p in params])
    for a, b in zip(out["native_codec"][0], out["reference"][0]):
        assert torch.equal(a, b)
    for sa, sb in zip(out["native_codec"][1], out["reference"][1]):
        for name, enc in sb.items():
            if isinstance(enc, Encoded):
                for key in enc.buffers:
                    assert torch.equal(sa[name].buffers[key], enc.buffers[key]), (name, key)


AUTO_PICKS = {  # case: (param, optimizer factory, what impl="auto" picks on CPU)
    "adamw": (lambda: torch.randn(64, 80), lambda p: tightfit.AdamW(p, state="8bit"), "native"),
    "came": (lambda: torch.randn(64, 80), lambda p: tightfit.CAME(p, lr=1e-3, state="8bit"), "native"),
    # the fused kernel needs contiguous tensors; the codec passes do not
    "adamw, transposed param": (lambda: torch.randn(80, 64).t(), lambda p: tightfit.AdamW(p, state="8bit"),
                                "native_codec"),
}


@pytest.mark.parametrize("case", list(AUTO_PICKS))
def test_auto_picks_fused_native_then_native_codec(case):
    make, factory, expected = AUTO_PICKS[case]
    p = torch.nn.Parameter(make())
    p.grad = torch.randn_like(p)
    opt = factory([p])
    state = opt.ensure_state(p, opt.param_groups[0])
    assert select_implementation("auto", opt.rule, [p], [state]).name == expected


# ---- every instruction-set level this CPU runs gives the reference's codes ------------
# The vector encoders multiply by 1/absmax and divide exactly only where the quotient
# could round to another code (csrc/quant.h); these cases aim at exactly those places:
# values on and around every midpoint, under scales that are and are not powers of two.
LEVELS = build.runnable_levels()


def _level_lib(level):
    lib, why = build.load_level(level)
    if lib is None:
        pytest.skip(why)
    return lib


def _encode_decode(lib, codec, kind, x):
    from tightfit.impl.native.codec_passes import _state_struct

    enc = get_codec(codec).zeros(x.shape, kind, x.device)
    lib.tf_encode(_state_struct(enc), x.numel(), x.data_ptr(), 1)
    out = torch.empty_like(x)
    lib.tf_decode(_state_struct(enc), x.numel(), out.data_ptr(), 1)
    return enc, out


def _assert_reference(lib, codec, kind, x):
    c = get_codec(codec)
    ref = c.encode(x, kind)
    enc, decoded = _encode_decode(lib, codec, kind, x)
    for key in ref.buffers:  # bit for bit (a NaN absmax equals a NaN)
        torch.testing.assert_close(enc.buffers[key], ref.buffers[key], rtol=0, atol=0, equal_nan=True, msg=key)
    torch.testing.assert_close(decoded, c.decode(ref), rtol=0, atol=0, equal_nan=True)


def _around_midpoints(codec, kind, scale, ulps=4):
    """Each midpoint times ``scale`` and its float neighbours, in blocks whose absmax is ``scale``."""
    c = get_codec(codec)
    mids = c.quant_map(kind).midpoints
    x = (mids.double() * scale).float()
    bits = x.view(torch.int32)
    near = torch.cat([(bits + d).view(torch.float32) for d in range(-ulps, ulps + 1)])
    near = near[near.abs() <= scale]
    block = c.block_size
    rows = (near.numel() + block - 2) // (block - 1)
    out = torch.zeros(rows, block)
    out[:, 0] = scale  # each block's absmax is exactly scale
    flat = torch.cat([near, near.new_zeros(rows * (block - 1) - near.numel())])
    out[:, 1:] = flat.view(rows, block - 1)
    return out.reshape(-1)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("codec, kind", [("8bit", "signed"), ("8bit", "unsigned"), ("4bit", "signed"),
                                         ("4bit", "unsigned")])
@pytest.mark.parametrize("scale", [1.0, 2.0**-20, 0.3, 7.77e-3, 1.1e30, 3.3e-37])
def test_codes_on_and_around_midpoints_equal_reference(level, codec, kind, scale):
    x = _around_midpoints(codec, kind, scale)
    _assert_reference(_level_lib(level), codec, kind, x)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("codec", ["8bit", "4bit"])
def test_extreme_blocks_equal_reference(level, codec):
    """Subnormal, huge, infinite, NaN and all-zero blocks take the exact path."""
    block = get_codec(codec).block_size
    with_inf, with_nan = torch.randn(block), torch.randn(block)
    with_inf[[3, 9]] = torch.tensor([float("inf"), -float("inf")])
    with_nan[5] = float("nan")
    parts = [torch.full((block,), 1e-45), torch.randn(block) * 1e-39, torch.randn(block) * 1e38, with_inf, with_nan,
             torch.zeros(block), torch.randn(block) * 1e-3, torch.randn(7)]
    _assert_reference(_level_lib(level), codec, "signed", torch.cat(parts))


@pytest.mark.parametrize("level", LEVELS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_blocks_of_mixed_scales_equal_reference(level, data):
    codec = data.draw(st.sampled_from(["8bit", "4bit"]))
    kind = data.draw(st.sampled_from(["signed", "unsigned"]))
    n = data.draw(st.integers(1, 3000))
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(torch.randn(n, generator=g) * 8)  # e^±24 within a block
    x = x * 10.0 ** torch.randint(-30, 30, (n // 128 + 1,), generator=g).repeat_interleave(128)[:n].float()
    if kind == "unsigned":
        x = x.abs()
    _assert_reference(_level_lib(level), codec, kind, x)
