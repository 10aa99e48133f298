"""impl "native_codec" (rule in PyTorch, blockwise codec passes in C++) against the reference.

The codec passes must give the reference codec's codes, absmax and decoded values bit
for bit, so a step through native_codec equals a reference step exactly.
"""

import pytest
import torch

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
