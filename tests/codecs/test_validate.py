"""codecs/validate.py: every buffer of an encoded state is checked against its codec."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import tightfit
from tightfit.codecs import CODECS, Encoded, get_codec
from tightfit.codecs.validate import buffer_layout, check_encoded

KINDS = {"fp32": ["signed", "unsigned", "small"], "bf16": ["signed", "unsigned"], "8bit": ["signed", "unsigned"],
         "4bit": ["signed", "unsigned"]}


@settings(max_examples=40, deadline=None)
@given(codec=st.sampled_from(sorted(CODECS)), shape=st.lists(st.integers(0, 300), min_size=0, max_size=3),
       data=st.data())
def test_what_a_codec_writes_passes_and_matches_its_layout(codec, shape, data):
    kind = data.draw(st.sampled_from(KINDS[codec]))
    x = torch.randn(shape) * 3
    enc = get_codec(codec).encode(x.abs() if kind == "unsigned" else x, kind)
    check_encoded("state", get_codec(codec), enc)
    layout = buffer_layout(get_codec(codec), enc.shape, kind)
    assert {k: (b.dtype, tuple(b.shape)) for k, b in enc.buffers.items()} == layout
    assert sum(math.prod(s) * torch.empty((), dtype=d).element_size() for d, s in layout.values()) \
        == get_codec(codec).nbytes(shape, kind)


def _encoded(codec, kind="signed", n=1000):
    return get_codec(codec).encode(torch.randn(n).abs() if kind == "unsigned" else torch.randn(n), kind)


def _with(enc, **buffers):
    return Encoded(enc.codec, enc.kind, enc.shape, {**enc.buffers, **buffers})


def _nan_at_0(t):
    t = t.clone()
    t[0] = math.nan
    return t


# (codec, kind, corruption, message)
BAD = [
    # codes and absmax split wrongly, same total bytes: the kernel would read past the codes
    ("8bit", "signed", lambda e: _with(e, codes=e.buffers["codes"][:-4], absmax=torch.cat([e.buffers["absmax"],
                                                                                        torch.ones(1)])),
     r"buffer 'codes' is uint8 of shape \(996,\); codec '8bit' stores uint8 of shape \(1000,\)"),
    ("4bit", "signed", lambda e: _with(e, codes=e.buffers["codes"][:-1]), r"'codes' is uint8 of shape \(499,\)"),
    ("8bit", "signed", lambda e: _with(e, codes=e.buffers["codes"].to(torch.int8)), r"'codes' is int8"),
    ("8bit", "signed", lambda e: _with(e, absmax=e.buffers["absmax"].double()), r"'absmax' is float64"),
    ("8bit", "signed", lambda e: _with(e, absmax=_nan_at_0(e.buffers["absmax"])), r"'absmax' holds NaN or Inf"),
    ("4bit", "unsigned", lambda e: _with(e, absmax=-e.buffers["absmax"]), r"'absmax' holds negative values"),
    ("8bit", "signed", lambda e: _with(e, extra=torch.zeros(1)), r"buffers \['absmax', 'codes', 'extra'\]"),
    ("8bit", "signed", lambda e: Encoded(e.codec, "small", e.shape, e.buffers), r"stores \['signed', 'unsigned'\]"),
    ("fp32", "signed", lambda e: _with(e, values=e.buffers["values"].reshape(10, 100)),
     r"'values' is float32 of shape \(10, 100\); codec 'fp32' stores float32 of shape \(1000,\)"),
    ("bf16", "signed", lambda e: _with(e, values=e.buffers["values"].float()), r"'values' is float32"),
    ("fp32", "unsigned", lambda e: _with(e, values=-e.buffers["values"] - 1), r"negative values"),
    ("fp32", "signed", lambda e: _with(e, values=_nan_at_0(e.buffers["values"])), r"NaN or Inf"),
    ("fp32", "signed", lambda e: _with(e, values=[1.0]), r"buffer 'values' is a list, expected a tensor"),
]


@pytest.mark.parametrize("codec, kind, corrupt, message", BAD)
def test_a_wrong_buffer_is_refused_naming_it(codec, kind, corrupt, message):
    enc = corrupt(_encoded(codec, kind))
    with pytest.raises(ValueError, match=message):
        check_encoded("state", get_codec(codec), enc)


def test_the_issue_example_same_bytes_split_wrongly_is_refused_on_load():
    p = torch.nn.Parameter(torch.randn(1000))
    opt = tightfit.AdamW([p], state="8bit", min_quantized_numel=0)
    p.grad = torch.randn(1000)
    opt.step()
    sd = opt.state_dict()
    state = sd["state"][0]["exp_avg"]
    state["codes"], state["absmax"] = state["codes"][:-4], torch.cat([state["absmax"], torch.ones(1)])
    fresh = tightfit.AdamW([p], state="8bit", min_quantized_numel=0)
    with pytest.raises(ValueError, match=r"'codes' is uint8 of shape \(996,\)"):
        fresh.load_state_dict(sd)
    assert len(fresh.state) == 0
