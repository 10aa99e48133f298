import math

import pytest
import torch

from tightfit.codecs import CODECS, get_codec
from tightfit.codecs.blockwise import BlockwiseCodec

SHAPES = [(), (1,), (7,), (255,), (256,), (257,), (33, 17), (4, 5, 129)]
KINDS = ["signed", "unsigned"]


def sample(shape, kind):
    x = torch.randn(shape) * torch.logspace(-6, 0, 1).item()
    x = x * torch.exp(torch.randn(shape) * 2)  # spread magnitudes like real moments
    return x.abs() if kind == "unsigned" else x


def worst_relative_error(codec, kind):
    """Largest |decode(encode(x)) - x| / block absmax the codec's map allows.

    fp32: exact. bf16: half an ulp of 8 significant bits. Blockwise: the largest distance
    from a point of the normalized range to its nearest map value (half the widest gap,
    or the distance from the range's end to the outermost value).
    """
    if codec.name == "fp32":
        return 0.0
    if codec.name == "bf16":
        return 2.0**-8
    values = codec.quant_map(kind).values
    low_end = -1.0 if kind == "signed" else 0.0
    gaps = (values[1:] - values[:-1]) / 2
    return max(gaps.max().item(), values[0].item() - low_end, 1.0 - values[-1].item()) * (1 + 1e-6)


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_within_resolution(name, kind, shape):
    codec = get_codec(name)
    x = sample(shape, kind)
    enc = codec.encode(x, kind)
    y = codec.decode(enc)
    assert y.shape == x.shape and y.dtype == torch.float32
    if isinstance(codec, BlockwiseCodec):
        flat_err = (y - x).abs().reshape(-1)
        pad = (-flat_err.numel()) % codec.block_size
        err_blocks = torch.nn.functional.pad(flat_err, (0, pad)).view(-1, codec.block_size).amax(1)
        bound = enc.buffers["absmax"] * worst_relative_error(codec, kind)
        assert bool((err_blocks <= bound).all())
    else:
        assert bool(((y - x).abs() <= x.abs() * worst_relative_error(codec, kind)).all())


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_nbytes_is_exact(name, kind, shape):
    codec = get_codec(name)
    enc = codec.encode(sample(shape, kind), kind)
    assert enc.nbytes == codec.nbytes(shape, kind)


@pytest.mark.parametrize("name,expected", [
    # codes + one fp32 absmax per block (8-bit: block 256; 4-bit: block 128, two codes a byte)
    ("8bit", 16_777_216 + 4 * 65_536),
    ("4bit", 8_388_608 + 4 * 131_072),
    ("bf16", 2 * 16_777_216),
    ("fp32", 4 * 16_777_216),
])
def test_nbytes_of_a_4096_square(name, expected):
    assert get_codec(name).nbytes((4096, 4096)) == expected


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("kind", KINDS)
def test_zeros_decode_to_zero_and_store_reuses_buffers(name, kind):
    codec = get_codec(name)
    enc = codec.zeros(torch.Size([300]), kind, torch.device("cpu"))
    assert torch.equal(codec.decode(enc), torch.zeros(300))
    buffers = {k: v.data_ptr() for k, v in enc.buffers.items()}
    x = sample((300,), kind)
    codec.store(enc, x)
    assert {k: v.data_ptr() for k, v in enc.buffers.items()} == buffers
    assert torch.equal(codec.decode(enc), codec.decode(codec.encode(x, kind)))


@pytest.mark.parametrize("name,bits,block", [("8bit", 8, 256), ("4bit", 4, 128)])
def test_blockwise_layout(name, bits, block):
    codec = get_codec(name)
    enc = codec.encode(torch.randn(1000), "signed")
    assert enc.buffers["codes"].dtype == torch.uint8
    assert enc.buffers["codes"].numel() == math.ceil(1000 * bits / 8)
    assert enc.buffers["absmax"].numel() == math.ceil(1000 / block)


def test_second_moment_4bit_never_decodes_to_zero_when_block_nonzero():
    # The zero-point problem: a v rounded to 0 makes 1/sqrt(v) explode (arXiv 2309.01507).
    codec = get_codec("4bit")
    x = torch.full((128,), 1e-9)
    x[0] = 1.0
    assert bool((codec.decode(codec.encode(x, "unsigned")) > 0).all())


def test_unknown_codec_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown state codec '3bit'.*'4bit'"):
        get_codec("3bit")


def test_quantized_codec_refuses_small_states():
    with pytest.raises(ValueError, match="small"):
        get_codec("8bit").encode(torch.randn(10), "small")
