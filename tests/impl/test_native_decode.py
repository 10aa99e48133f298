"""The compiled 8-bit decode (csrc/quant_vbmi.h's byte planes, quant_avx512.h's Map256,
quant_avx2.h, quant_portable.h) at every instruction-set level this CPU runs: values[code] *
absmax bit for bit, for every code, block tail, start and absmax, on every 8-bit map."""

import ctypes

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tightfit.codecs import get_codec
from tightfit.codecs.maps import get_map
from tightfit.impl.native import build
from tightfit.impl.native.codec_passes import _state_struct

NATIVE_REASON = build.load_kernel()[1]
pytestmark = pytest.mark.skipif(NATIVE_REASON is not None, reason=str(NATIVE_REASON))

LEVELS = build.runnable_levels()
CODEC = get_codec("8bit")
BLOCK = CODEC.block_size


def _random_bits_map(seed: int) -> torch.Tensor:
    """256 finite floats of random bit patterns: every byte of every plane differs from map to map."""
    bits = torch.randint(-(2**31), 2**31 - 1, (256,), generator=torch.Generator().manual_seed(seed), dtype=torch.int64)
    values = bits.to(torch.int32).view(torch.float32)
    return torch.where(values.isfinite(), values, torch.zeros(()))


MAPS = {  # name -> the 256 values the codes index
    "dynamic8_signed": get_map("dynamic8_signed").values,
    "dynamic8_unsigned": get_map("dynamic8_unsigned").values,
    "dynamic8_squared": get_map("dynamic8_squared").values,
    "random bits, seed 0": _random_bits_map(0),
    "random bits, seed 1": _random_bits_map(1),
}


def _lib(level):
    lib, why = build.load_level(level)
    if lib is None:
        pytest.skip(why)
    return lib


def _decode(lib, values: torch.Tensor, codes: torch.Tensor, absmax: torch.Tensor, first_block: int = 0):
    """tf_decode of ``codes`` (any storage offset) on ``values``, starting at block ``first_block``."""
    enc = CODEC.zeros((codes.numel(),), "signed", "cpu")
    enc.buffers["codes"], enc.buffers["absmax"] = codes, absmax
    state = _state_struct(enc)
    state.values = values.data_ptr()  # the map under test instead of the codec's own
    state.data += first_block * BLOCK
    state.absmax += first_block * 4
    n = codes.numel() - first_block * BLOCK
    out = torch.full((n,), float("nan"))
    lib.tf_decode(ctypes.byref(state), n, out.data_ptr(), 1)
    return out


def _reference(values, codes, absmax, first_block: int = 0):
    scale = absmax.repeat_interleave(BLOCK)[: codes.numel()]
    return (values[codes.long()] * scale)[first_block * BLOCK:]


def _assert_bits_equal(out, ref):
    assert out.shape == ref.shape
    nan = ref.isnan()
    assert torch.equal(out.isnan(), nan)
    bad = (out.view(torch.int32) != ref.view(torch.int32)) & ~nan
    assert not bad.any(), f"{int(bad.sum())} elements differ, first at {int(bad.nonzero()[0])}"


SCALES = [1.0, 0.3, 7.77e-3, 3.3e-37, 1e-45, 1.1e30, 3.4e38, 0.0, float("inf"), float("nan")]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("map_name", list(MAPS))
def test_every_code_under_every_absmax_kind(level, map_name):
    """Each block holds all 256 codes (shuffled, so each code lands at every lane position
    across blocks); the blocks' absmax run from subnormal to inf and NaN."""
    g = torch.Generator().manual_seed(len(map_name))
    codes = torch.cat([torch.randperm(256, generator=g) for _ in SCALES]).to(torch.uint8)
    absmax = torch.tensor(SCALES)
    _assert_bits_equal(_decode(_lib(level), MAPS[map_name], codes, absmax), _reference(MAPS[map_name], codes, absmax))


@pytest.mark.parametrize("level", LEVELS)
def test_every_length_of_a_last_block(level):
    """1..300 codes: every tail of the 64-code and 16-lane steps, one block and a bit."""
    lib, values = _lib(level), MAPS["random bits, seed 0"]
    g = torch.Generator().manual_seed(1)
    for n in range(1, 301):
        codes = torch.randint(0, 256, (n,), generator=g, dtype=torch.uint8)
        absmax = torch.rand((n + BLOCK - 1) // BLOCK, generator=g) * 4
        _assert_bits_equal(_decode(lib, values, codes, absmax), _reference(values, codes, absmax))


@pytest.mark.parametrize("level", LEVELS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_length_from_any_block_start_at_any_address(level, data):
    """Random lengths across tiles (1024), decoding from a block boundary inside the tensor,
    the codes at any byte offset in memory (unaligned loads)."""
    map_name = data.draw(st.sampled_from(list(MAPS)))
    n = data.draw(st.integers(1, 3000))
    first_block = data.draw(st.integers(0, (n - 1) // BLOCK))
    offset = data.draw(st.integers(0, 63))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    codes = torch.randint(0, 256, (n + offset,), generator=g, dtype=torch.uint8)[offset:]
    absmax = torch.rand((n + BLOCK - 1) // BLOCK, generator=g) * 10.0 ** torch.randint(-30, 30, (1,), generator=g)
    values = MAPS[map_name]
    _assert_bits_equal(_decode(_lib(level), values, codes, absmax, first_block),
                       _reference(values, codes, absmax, first_block))
