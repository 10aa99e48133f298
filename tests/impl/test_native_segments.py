"""The arithmetic 8-bit encoder (impl/native/segments.py, csrc/quant_avx512.h SegmentTable)
against the definition, torch.bucketize over the map's midpoints.

Two layers: the Python emulation of the vector encoder (the tables' proof) on every
midpoint, its neighbours and random points; and the compiled encoder with and without
its segment tables, at every instruction-set level this CPU runs (levels without the
arithmetic encoder ignore the tables), on adversarial blocks (midpoints times the
block's absmax, mixed scales, zeros after tiny values, one huge element), both equal to
the reference codes.
"""

import ctypes

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tightfit.codecs.maps import QuantMap, get_map
from tightfit.impl.native import build, segments
from tightfit.impl.native.jobs import TfState, map_tables

NATIVE_REASON = build.load_kernel()[1]
LEVELS = build.runnable_levels()

# map: (has tables, kind)
MAPS = {
    "dynamic8_signed": (True, segments.LINEAR),
    "dynamic8_unsigned": (True, segments.LINEAR),
    "dynamic8_squared": (True, segments.SQUARED),
    "dynamic4_signed": (False, None),  # 4-bit maps keep the register binary search
    "dynamic4_squared": (False, None),
}
TABLED = [name for name, (has, _) in MAPS.items() if has]


@pytest.mark.parametrize("name", list(MAPS))
def test_which_maps_get_segment_tables(name):
    has, kind = MAPS[name]
    seg = segments.segments_of(get_map(name))
    assert (seg is not None) == has
    if has:
        assert seg.kind == kind


def _reference(qmap, y):
    return torch.bucketize(torch.from_numpy(y), qmap.midpoints).numpy()


def _floats(draw, qmap):
    """Midpoints and their float neighbours, random values and log-uniform magnitudes."""
    mids = qmap.midpoints.numpy()
    picks = np.array(draw(st.lists(st.integers(0, len(mids) - 1), min_size=1, max_size=64)))
    ulps = np.array(draw(st.lists(st.integers(-40, 40), min_size=len(picks), max_size=len(picks))))
    near = (mids[picks].view(np.int32) + ulps).view(np.float32)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    spread = np.sign(rng.uniform(-1, 1, 256)) * 10.0 ** rng.uniform(-20, 0, 256)
    y = np.concatenate([near, rng.uniform(-1, 1, 256), spread, [0.0, -0.0, 1.0, -1.0]]).astype(np.float32)
    return y[np.abs(y) <= 1]


@pytest.mark.parametrize("name", TABLED)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_emulated_encoder_equals_bucketize_where_it_does_not_defer(name, data):
    qmap = get_map(name)
    y = _floats(data.draw, qmap)
    codes, near = segments.encode(segments.segments_of(qmap), y)
    ref = _reference(qmap, y)
    assert np.array_equal(codes[~near], ref[~near])


@pytest.mark.parametrize("name", TABLED)
def test_every_midpoint_and_its_neighbours_is_coded_or_deferred(name):
    qmap = get_map(name)
    segments.check(segments.segments_of(qmap), qmap, samples=1000)  # raises on a wrong unflagged code


@pytest.mark.parametrize("name", TABLED)
def test_few_lanes_are_deferred_to_the_exact_path(name):
    """Speed, not correctness: a flagged lane costs a division and a gather."""
    qmap = get_map(name)
    rng = np.random.default_rng(1)
    g = rng.standard_normal((400, 256)).astype(np.float32)
    x = g * g if "unsigned" in name or "squared" in name else g
    y = (x / np.abs(x).max(axis=1, keepdims=True)).astype(np.float32).ravel()
    _, near = segments.encode(segments.segments_of(qmap), y)
    assert near.mean() < 0.01


def test_an_irregular_map_gets_no_tables():
    values = torch.sort(torch.rand(256, generator=torch.Generator().manual_seed(0)) * 2 - 1).values
    assert segments.segments_of(QuantMap("irregular", values)) is None


def test_a_tolerance_the_map_cannot_meet_refuses_the_tables(monkeypatch):
    qmap = get_map("dynamic8_signed")
    mids = qmap.midpoints.numpy()
    first = int((mids < 0).sum())
    assert segments._fit(segments.LINEAR, qmap, mids[first:], first) is not None
    monkeypatch.setattr(segments, "U_TOLERANCE", 2.0**-30)
    assert segments._fit(segments.LINEAR, qmap, mids[first:], first) is None


# ---- the compiled encoder, with and without segment tables -------------------------------
def _encode(lib, qmap, x, use_segments):
    """tf_encode of x (blocks of 256) on qmap, by a hand-filled TfState; (codes, absmax)."""
    tables = map_tables(qmap)
    n = x.numel()
    codes = torch.zeros(n, dtype=torch.uint8)
    absmax = torch.zeros((n + 255) // 256)
    st_ = TfState()
    st_.codec, st_.block = 2, 256
    st_.data, st_.absmax = codes.data_ptr(), absmax.data_ptr()
    st_.values, st_.bucket_packed = tables.values.data_ptr(), tables.bucket_packed.data_ptr()
    st_.midpoints = tables.midpoints.data_ptr()
    st_.shift, st_.top, st_.n_buckets, st_.n_values = tables.shift, tables.top, tables.bucket_packed.numel(), 256
    st_.segments = ctypes.addressof(tables.segments) if use_segments and tables.segments is not None else None
    lib.tf_encode(st_, n, x.data_ptr(), 1)
    return codes, absmax


def _reference_codes(qmap, x):
    blocks = torch.nn.functional.pad(x, (0, (-x.numel()) % 256)).view(-1, 256)
    absmax = blocks.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    return qmap.encode_reference((blocks / scale[:, None]).reshape(-1)[: x.numel()]), absmax


@st.composite
def adversarial_blocks(draw, qmap):
    """Blocks whose absmax is a drawn scale, holding midpoints * scale +- a few ulps, mixed
    scales, zeros after tiny values and, sometimes, one huge element."""
    mids = qmap.midpoints.double()
    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        scale = draw(st.sampled_from([1.0, 0.3, 7.77e-3, 2.0**-20, 1.1e30, 3.3e-30, 123.456]))
        picks = torch.tensor(draw(st.lists(st.integers(0, len(mids) - 1), min_size=8, max_size=200)))
        x = (mids[picks] * scale).float()
        x = (x.view(torch.int32) + torch.randint(-3, 4, x.shape,
                                                 generator=torch.Generator().manual_seed(len(blocks)))).view(torch.float32)
        x = torch.where(x.isfinite(), x, 0.0)  # a step below +-0 in the bit pattern is a NaN
        tiny = torch.tensor([scale * 1e-9, -scale * 3e-12, 0.0, 0.0, -0.0], dtype=torch.float32)
        block = torch.cat([torch.tensor([scale], dtype=torch.float32), x, tiny])
        if draw(st.booleans()):  # one huge element squeezes everything else toward 0
            block[draw(st.integers(0, len(block) - 1))] = scale * 1e6
        block = torch.nn.functional.pad(block, (0, (-block.numel()) % 256))[:256]
        blocks.append(block)
    x = torch.cat(blocks)
    if "squared" in qmap.name or "unsigned" in qmap.name:
        x = x.abs()
        if draw(st.booleans()):  # negative values (and -0) on a map without negative codes: code 0
            flip = torch.rand(x.shape, generator=torch.Generator().manual_seed(x.numel())) < 0.3
            x = torch.where(flip, -x, x)
    return x[: draw(st.integers(1, x.numel()))].contiguous()


@pytest.mark.skipif(NATIVE_REASON is not None, reason=str(NATIVE_REASON))
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", TABLED + ["irregular"])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_compiled_encoder_equals_reference_with_and_without_tables(level, name, data):
    qmap = get_map(name) if name != "irregular" else QuantMap(
        "irregular", torch.sort(torch.rand(256, generator=torch.Generator().manual_seed(0)) * 2 - 1).values)
    lib, why = build.load_level(level)
    assert lib is not None, why
    x = data.draw(adversarial_blocks(qmap))
    ref_codes, ref_absmax = _reference_codes(qmap, x)
    for use in (True, False):
        codes, absmax = _encode(lib, qmap, x, use)
        assert torch.equal(absmax, ref_absmax)
        assert torch.equal(codes, ref_codes), f"segments={use}"
