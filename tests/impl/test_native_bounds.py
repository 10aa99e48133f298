"""impl/native/bounds.py: a state whose buffers do not fit the parameter never reaches the
C kernel: the step raises ValueError, and param and states are left as they were."""

import copy

import pytest
import torch

import tightfit
from tightfit.codecs import Encoded
from tightfit.impl.native import build
from tightfit.impl.native.codec_passes import native_decode

NATIVE_REASON = build.load_kernel()[1]
pytestmark = pytest.mark.skipif(NATIVE_REASON is not None, reason=str(NATIVE_REASON))


def _cut_codes(enc):  # same total bytes, split wrongly between codes and absmax
    return Encoded(enc.codec, enc.kind, enc.shape, {"codes": enc.buffers["codes"][:-4].clone(),
                                                    "absmax": torch.cat([enc.buffers["absmax"], torch.ones(1)])})


def _short_values(enc):
    return Encoded(enc.codec, enc.kind, enc.shape, {"values": enc.buffers["values"].reshape(-1)[:-1].clone()})


def _other_shape(enc):  # a consistent state, but for a smaller parameter
    return Encoded(enc.codec, enc.kind, torch.Size([enc.shape[0] - 1, *enc.shape[1:]]),
                   {"codes": enc.buffers["codes"][:-256].clone(), "absmax": enc.buffers["absmax"][:-1].clone()})


# (optimizer factory, state name, corruption, message)
CASES = [
    (lambda p: tightfit.AdamW(p, state="8bit", impl="native", min_quantized_numel=0), "exp_avg_sq", _cut_codes, r"'codes' is uint8 of shape"),
    (lambda p: tightfit.Lion(p, state="8bit", impl="native", min_quantized_numel=0), "exp_avg", _other_shape, r"has shape \(3, 256\)"),
    (lambda p: tightfit.SGD(p, momentum=0.9, state="fp32", impl="native", min_quantized_numel=0), "momentum_buffer", _short_values,
     r"'values' is float32 of shape \(1023,\)"),
    (lambda p: tightfit.Adafactor(p, beta1=0.9, state="8bit", impl="native", min_quantized_numel=0),
     "exp_avg", _cut_codes, r"'codes' is uint8 of shape"),
]


@pytest.mark.parametrize("make, name, corrupt, message", CASES)
def test_a_state_that_does_not_fit_is_refused_before_the_kernel(make, name, corrupt, message):
    p = torch.nn.Parameter(torch.randn(4, 256))  # a matrix: Adafactor's native driver takes it
    opt = make([p])
    p.grad = torch.randn(4, 256)
    opt.step()
    opt.state[p][name] = corrupt(opt.state[p][name])
    before = p.detach().clone(), copy.deepcopy(opt.state[p])
    with pytest.raises(ValueError, match=message):
        opt.step()
    assert torch.equal(p, before[0])
    for key, value in before[1].items():
        if isinstance(value, Encoded):
            assert all(torch.equal(b, opt.state[p][key].buffers[k]) for k, b in value.buffers.items())


def test_native_decode_checks_the_layout_first():
    enc = tightfit.get_codec("4bit").encode(torch.randn(1000), "signed")
    with pytest.raises(ValueError, match=r"'codes' is uint8 of shape \(400,\)"):
        native_decode(Encoded(enc.codec, enc.kind, enc.shape, {**enc.buffers, "codes": enc.buffers["codes"][:400]}))
