"""Paged params larger than a chunk stream in pieces (placement/pieces.py), on the fake layer.

small_mlp's largest params (64x64, 64x24) exceed a 1 KiB chunk under every codec, so
with MIN_CHUNK_BYTES lowered they are split into 256-element pieces.
"""

import pytest
import torch

import tightfit
from optim_cases import matrix_case, rule_by_codec
from tightfit.codecs import get_codec
from tightfit.placement import paged
from test_paged import STEPS, assert_same, trained_pair
from toy_problem import small_mlp, train

CHUNK = 1024


@pytest.fixture
def small_chunks(fake_streams, monkeypatch):
    monkeypatch.setattr(paged, "CHUNK_BYTES", CHUNK)
    monkeypatch.setattr(paged, "MIN_CHUNK_BYTES", CHUNK)
    return fake_streams


@pytest.mark.parametrize("case, codec", rule_by_codec(rules=lambda case: case.elementwise))
def test_pieces_equal_unpaged_bit_for_bit(small_chunks, case, codec):
    model, unpaged, twin, paged_opt = trained_pair(case.make, codec)
    assert_same(model, unpaged, twin, paged_opt)
    # pieces happened: more copy-ins per step than params, and slots stay near the chunk size
    copies = [label for _, label in small_chunks.executed if isinstance(label, tuple) and label[0] == "copy_in"]
    assert len(copies) > STEPS * len(list(twin.parameters()))
    assert paged_opt.memory_report().stream_buffer_bytes <= paged.SLOTS * 2 * CHUNK


def test_factored_rules_are_not_split(small_chunks):
    """Adafactor needs whole rows and columns: it streams whole params and still matches."""
    model, unpaged, twin, paged_opt = trained_pair(matrix_case("adafactor").make, "8bit")
    assert_same(model, unpaged, twin, paged_opt)
    assert paged_opt.memory_report().stream_buffer_bytes > paged.SLOTS * 2 * CHUNK


def test_a_nan_in_one_piece_skips_the_whole_param(small_chunks):
    model, twin = small_mlp(), small_mlp()
    unpaged = tightfit.AdamW(model.parameters(), lr=1e-2, state="8bit", min_quantized_numel=1000)
    paged_opt = tightfit.AdamW(twin.parameters(), lr=1e-2, state="8bit", min_quantized_numel=1000, paged=True)
    train(model, unpaged, 2)
    train(twin, paged_opt, 2)
    for m, opt in ((model, unpaged), (twin, paged_opt)):
        for p in m.parameters():
            p.grad = torch.ones_like(p)
        big = m[2].weight  # 64 x 64: several pieces
        big.grad.view(-1)[-1] = float("nan")  # only the last piece sees it
        opt.step()
    assert_same(model, unpaged, twin, paged_opt)
    state = paged_opt.state[twin[2].weight]
    assert state["nonfinite_skips"].item() == 1 and state["step"].item() == 2


@pytest.mark.parametrize("codec", ["fp32", "8bit", "4bit"])
def test_codec_slices_are_views_of_the_whole(codec):
    c = get_codec(codec)
    x = torch.randn(1000)
    enc = c.encode(x, "signed")
    whole = c.decode(enc)
    for lo, hi in [(0, 256), (256, 768), (768, 1000)]:
        part = c.slice(enc, lo, hi)
        assert torch.equal(c.decode(part), whole[lo:hi])
        for key, buf in part.buffers.items():
            assert buf.untyped_storage().data_ptr() == enc.buffers[key].untyped_storage().data_ptr()


def test_slice_start_must_be_block_aligned():
    enc = get_codec("8bit").encode(torch.randn(1000), "signed")
    with pytest.raises(ValueError, match="multiple of"):
        get_codec("8bit").slice(enc, 100, 356)
