"""Format-1 state dicts (second moments on the 8-bit dynamic / 4-bit linear maps) load
into format 2 (squared maps)."""

import copy

import pytest
import torch

import tightfit
from tightfit.codecs import FORMAT_VERSION, get_codec
from tightfit.codecs.blockwise import block_absmax, normalize, pack_nibbles
from tightfit.codecs.maps import get_map


def as_format_1(sd: dict) -> dict:
    """``sd`` as tightfit format 1 wrote it: v codes on the 8-bit dynamic / 4-bit linear map."""
    old = copy.deepcopy(sd)
    old["tightfit"]["format"] = 1
    for state in old["state"].values():
        for value in state.values():
            if not isinstance(value, dict) or "codec" not in value:
                continue
            value["format"] = 1
            if value["codec"] in LEGACY_V and value["kind"] == "unsigned":
                codec = get_codec(value["codec"])
                current = codec.decode(tightfit.codecs.Encoded(codec.name, "unsigned", torch.Size(value["shape"]),
                                                               {"codes": value["codes"], "absmax": value["absmax"]}))
                flat = current.reshape(-1)
                absmax = block_absmax(flat, codec.block_size)
                codes = get_map(LEGACY_V[codec.name]).encode_reference(normalize(flat, absmax, codec.block_size))
                value["codes"] = pack_nibbles(codes) if codec.bits == 4 else codes
                value["absmax"] = absmax
    return old


LEGACY_V = {"8bit": "dynamic8_unsigned", "4bit": "linear4_unsigned"}


def trained(state="8bit"):
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(64, 80))
    opt = tightfit.AdamW([param], lr=1e-2, state=state)
    for _ in range(3):
        param.grad = torch.randn(64, 80) * torch.logspace(-4, 0, 80)
        opt.step()
    return param, opt


def test_the_current_format_is_2():
    assert FORMAT_VERSION == 2


@pytest.mark.parametrize("state", ["8bit", "4bit", "fp32"])
def test_a_format_1_dict_loads_and_continues(state):
    param, opt = trained(state)
    saved = as_format_1(opt.state_dict())
    twin = torch.nn.Parameter(param.detach().clone())
    loaded = tightfit.AdamW([twin], lr=1e-2, state=state)
    loaded.load_state_dict(saved)
    codec = get_codec(state)
    for name in ("exp_avg", "exp_avg_sq"):
        want = codec.decode(opt.state[param][name])
        got = codec.decode(loaded.state[twin][name])
        if state not in LEGACY_V or name == "exp_avg":
            assert torch.equal(got, want), name  # unchanged maps load bit for bit
        else:  # decoded on the old map, encoded on the new one: √v within the old map's rounding
            # (values below 3.25e-7 of a block's absmax were stored as that floor)
            # where the old map was precise (8-bit: above 1e-4 of the largest; 4-bit, k/16 of
            # a block's absmax: above 1/8 of the largest)
            seen = want >= (1e-4 if state == "8bit" else 0.125) * want.max()
            assert torch.allclose(got[seen].sqrt(), want[seen].sqrt(), rtol=0.25), name
    v = codec.decode(opt.state[param]["exp_avg_sq"])
    precise = v >= (1e-4 if state == "8bit" else 0.125) * v.max()  # where the old map was precise
    grad = torch.randn(64, 80)
    param.grad, twin.grad = grad, grad.clone()
    opt.step()
    loaded.step()
    assert torch.isfinite(twin).all()
    # a step of lr 1e-2 with √v within the old map's rounding (up to ~22 % of v here)
    assert torch.allclose(param[precise], twin[precise], atol=1e-3)


def test_an_unknown_format_is_refused_naming_the_readable_ones():
    param, opt = trained()
    saved = opt.state_dict()
    saved["tightfit"]["format"] = 7
    fresh = tightfit.AdamW([torch.nn.Parameter(param.detach().clone())], lr=1e-2, state="8bit")
    with pytest.raises(ValueError, match=r"format 7.*reads formats \(1, 2\)"):
        fresh.load_state_dict(saved)
