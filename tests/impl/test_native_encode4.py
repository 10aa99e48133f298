"""The compiled 4-bit encoders (csrc/quant_avx512.h and quant_avx2.h ``Mids16``: a binary
search over the midpoints held in registers; quant_portable.h: the scalar bucket table)
against the definition, torch.bucketize over the map's midpoints of x / block absmax.

Every 4-bit map, every instruction-set level this CPU runs, one block size (128): ties
exactly on midpoints (a power-of-two absmax makes y = midpoint exact) and their float
neighbours, every lane position of a vector, mixed scales, zeros after tiny values, one
huge element, negative inputs on maps without negative codes, Inf and NaN blocks, odd
lengths (the packed high nibble of a last odd element is code 0).
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tightfit.codecs.maps import get_map
from tightfit.impl.native import build
from tightfit.impl.native.jobs import TfState, map_tables

NATIVE_REASON = build.load_kernel()[1]
pytestmark = pytest.mark.skipif(NATIVE_REASON is not None, reason=str(NATIVE_REASON))
LEVELS = [level for level, (needs, _) in build.ISA_LEVELS.items() if all(f in build.cpu_flags() for f in needs)]
MAPS = ["dynamic4_signed", "dynamic4_squared", "linear4_unsigned"]  # linear: the format-1 second moment
BLOCK = 128


def _lib(level):
    lib, why = build.load_level(level)
    assert lib is not None, why
    return lib


def _native_codes(lib, qmap, x):
    """tf_encode of x on qmap as 4-bit state (hand-filled TfState); (codes unpacked, absmax)."""
    tables = map_tables(qmap)
    n = x.numel()
    packed = torch.full(((n + 1) // 2,), 0xAB, dtype=torch.uint8)  # not a valid pair: every byte is written
    absmax = torch.full(((n + BLOCK - 1) // BLOCK,), -1.0)
    st_ = TfState()
    st_.codec, st_.block = 3, BLOCK
    st_.data, st_.absmax = packed.data_ptr(), absmax.data_ptr()
    st_.values, st_.bucket_packed = tables.values.data_ptr(), tables.bucket_packed.data_ptr()
    st_.midpoints = tables.midpoints.data_ptr()
    st_.shift, st_.top, st_.n_buckets, st_.n_values = tables.shift, tables.top, tables.bucket_packed.numel(), 16
    lib.tf_encode(st_, n, x.data_ptr(), 1)
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)
    if n % 2:
        assert int(codes[-1]) == 0, "the high nibble after an odd last element must be code 0"
    return codes[:n], absmax


def _reference(qmap, x):
    blocks = torch.nn.functional.pad(x, (0, (-x.numel()) % BLOCK)).view(-1, BLOCK)
    absmax = blocks.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # a NaN absmax divides by 1, as blockwise.py
    return qmap.encode_reference((blocks / scale[:, None]).reshape(-1)[: x.numel()]), absmax


def _assert_reference(lib, qmap, x):
    codes, absmax = _native_codes(lib, qmap, x)
    ref_codes, ref_absmax = _reference(qmap, x)
    torch.testing.assert_close(absmax, ref_absmax, rtol=0, atol=0, equal_nan=True)
    bad = (codes != ref_codes).nonzero()
    assert bad.numel() == 0, (f"{qmap.name}: {bad.numel()} codes differ; first at {int(bad[0])}: "
                              f"x={float(x[bad[0]])!r} code {int(codes[bad[0]])} != {int(ref_codes[bad[0]])}")


def _blocks(rows):
    """Rows of at most BLOCK - 1 values, each after its block's absmax 1.0: y = x exactly."""
    rows = [torch.as_tensor(r, dtype=torch.float32) for r in rows]
    out = torch.zeros(len(rows), BLOCK)
    out[:, 0] = 1.0
    for i, r in enumerate(rows):
        out[i, 1:1 + r.numel()] = r
    return out.reshape(-1)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", MAPS)
def test_every_midpoint_and_its_neighbours_in_every_lane(level, name):
    """y exactly on each midpoint (a tie: the lower code), 1-3 ulps either side, ±0, ±1 and the
    map's values, each placed at every position of a 16-lane vector."""
    qmap = get_map(name)
    mids = qmap.midpoints.numpy()
    near = np.concatenate([(mids.view(np.int32) + d).view(np.float32) for d in range(-3, 4)])
    y = np.concatenate([near, -near, qmap.values.numpy(), -qmap.values.numpy(), [0.0, -0.0, 1.0, -1.0]])
    y = y[np.isfinite(y) & (np.abs(y) <= 1)].astype(np.float32)
    chunks = [np.resize(y[i:i + BLOCK - 1], BLOCK - 1) for i in range(0, len(y), BLOCK - 1)]
    rows = [np.roll(chunk, shift) for chunk in chunks for shift in range(16)]
    _assert_reference(_lib(level), qmap, _blocks(rows))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("scale", [1.0, 2.0**-20, 0.3, 7.77e-3, 1.1e30, 3.3e-37, 1e-42])
def test_midpoints_times_a_scale_equal_reference(level, name, scale):
    """Midpoints * scale ± ulps in blocks whose absmax is scale: powers of two give exact ties,
    other scales quotients that round onto and around the midpoints; 1e-42 is subnormal."""
    qmap = get_map(name)
    x = (qmap.midpoints.double() * scale).float()
    near = torch.cat([(x.view(torch.int32) + d).view(torch.float32) for d in range(-4, 5)])
    near = near[near.isfinite() & (near.abs() <= scale)]
    near = torch.cat([near, -near])
    rows = (near.numel() + BLOCK - 2) // (BLOCK - 1)
    out = torch.zeros(rows, BLOCK)
    out[:, 0] = scale
    out[:, 1:] = torch.cat([near, near.new_zeros(rows * (BLOCK - 1) - near.numel())]).view(rows, BLOCK - 1)
    _assert_reference(_lib(level), qmap, out.reshape(-1))


SPECIAL_BLOCKS = {  # name: values repeated over one block, followed by a block and a tail of normal values
    "all zero": [0.0],
    "-0 and +0": [-0.0, 0.0],
    "one inf": [0.5, float("inf"), -0.25],
    "-inf": [-float("inf"), 1e-3],
    "one nan": [0.5, float("nan"), -0.25],
    "subnormal only": [1e-45, -3e-45, 1e-40],
    "huge": [3e38, -1e38, 1.0],
}


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("block", list(SPECIAL_BLOCKS))
def test_special_blocks_equal_reference(level, name, block):
    values = torch.tensor(SPECIAL_BLOCKS[block], dtype=torch.float32)
    x = torch.cat([values.repeat(BLOCK // values.numel() + 1)[:BLOCK], torch.randn(BLOCK + 5)])
    _assert_reference(_lib(level), get_map(name), x)


@st.composite
def realistic_blocks(draw, qmap):
    """Blocks of gradient-like values under drawn scales: midpoints * scale ± a few ulps,
    log-normal magnitudes, zeros after tiny values, sometimes one huge element; on the
    maps without negative codes, sometimes negative values and -0; any length."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        scale = draw(st.sampled_from([1.0, 0.5, 0.3, 7.77e-3, 2.0**-20, 1.1e30, 3.3e-30, 123.456]))
        mids = qmap.midpoints.double()[torch.randint(0, 15, (40,), generator=gen)]
        on_mids = (mids * scale).float()
        on_mids = (on_mids.view(torch.int32) + torch.randint(-3, 4, (40,), generator=gen)).view(torch.float32)
        on_mids = torch.where(on_mids.isfinite(), on_mids, 0.0)
        spread = torch.randn(60, generator=gen) * torch.exp(torch.randn(60, generator=gen) * 6) * scale
        tiny = torch.tensor([scale * 1e-9, -scale * 3e-12, 0.0, 0.0, -0.0], dtype=torch.float32)
        block = torch.cat([torch.tensor([scale], dtype=torch.float32), on_mids, spread, tiny])[:BLOCK]
        block = block[torch.randperm(block.numel(), generator=gen)]
        if draw(st.booleans()):  # one huge element squeezes everything else toward 0
            block[draw(st.integers(0, block.numel() - 1))] = scale * 1e6
        blocks.append(torch.nn.functional.pad(block, (0, BLOCK - block.numel())))
    x = torch.cat(blocks)
    if qmap.name != "dynamic4_signed":
        x = x.abs()
        if draw(st.booleans()):  # negatives (and -0) on a map without negative codes: code 0
            x = torch.where(torch.rand(x.shape, generator=gen) < 0.3, -x, x)
    return x[: draw(st.integers(1, x.numel()))].contiguous()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", MAPS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_realistic_blocks_equal_reference(level, name, data):
    qmap = get_map(name)
    _assert_reference(_lib(level), qmap, data.draw(realistic_blocks(qmap)))
