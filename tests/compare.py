"""Comparing an implementation's params and states with the reference's, within TOLERANCES."""

import io

import torch

from optim_cases import TOLERANCES as TOL
from tightfit.codecs import get_codec
from tightfit.codecs.blockwise import unpack_nibbles


def relative_error(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) if a.numel() else 0.0


def raw_codes(enc):
    """Every stored code, the 4-bit padding nibble of an odd numel included."""
    codes = enc.buffers["codes"]
    return (unpack_nibbles(codes, 2 * codes.numel()) if enc.codec == "4bit" else codes).long()


def assert_states_match(state_fast, state_slow, float_tol, loose=()):
    """States equal within the tolerance table; ``loose`` states (computed from a quantized
    first moment, e.g. CAME's residual statistics) get TOL["factored_code_flip_relative"]."""
    assert torch.equal(state_fast["step"], state_slow["step"])
    assert torch.equal(state_fast["nonfinite_skips"], state_slow["nonfinite_skips"])
    for name, enc in state_slow.items():
        if not hasattr(enc, "buffers"):
            continue
        fast = state_fast[name]
        assert fast.codec == enc.codec
        if "codes" in enc.buffers:
            steps = (raw_codes(fast) - raw_codes(enc)).abs()
            assert int(steps.max()) <= TOL["code_steps"], name
            assert float((steps > 0).float().mean()) <= TOL["code_mismatch_fraction"], name
            assert relative_error(fast.buffers["absmax"], enc.buffers["absmax"]) <= TOL["fp32_relative"], name
        else:
            codec = get_codec(enc.codec)
            # bf16 states: inputs within float_tol may still round one bf16 ulp apart.
            tol = max(float_tol, TOL["bf16_relative"]) if enc.codec == "bf16" else float_tol
            tol = TOL["factored_code_flip_relative"] if name in loose else tol
            assert relative_error(codec.decode(fast), codec.decode(enc)) <= tol, name


def assert_update_close(fast, slow, start, quantized):
    """|fast − slow| within TOL["factored_relative"] of the largest change plus two ulps
    of the param's dtype: the change is what the rule computes, the ulps are the rounding
    of adding it (relative-step Adafactor moves params by ~1e-6 of their size). With a
    quantized first moment a few elements (code flips over ties) get the looser bound."""
    assert fast.dtype == slow.dtype
    ulp = torch.finfo(slow.dtype).eps
    fast, slow, start = fast.detach().float(), slow.detach().float(), start.float()
    if not slow.numel():
        return
    change = (slow - start).abs().max()
    error = (fast - slow).abs()
    outside = error > TOL["factored_relative"] * change + 2 * ulp * slow.abs()
    if quantized:
        assert float(outside.float().mean()) <= TOL["code_mismatch_fraction"]
        assert float(error.max()) <= TOL["factored_code_flip_relative"] * float(change)
    else:
        assert not bool(outside.any()), float(error.max() / change)


def assert_same_state(sa, sb):
    """One param's states equal bit for bit: the same names, codecs and buffers."""
    assert sa.keys() == sb.keys()
    for name, value in sb.items():
        if hasattr(value, "buffers"):
            assert sa[name].codec == value.codec
            for key, buf in value.buffers.items():
                assert torch.equal(sa[name].buffers[key], buf), (name, key)
        else:
            assert torch.equal(sa[name], value), name


def assert_bit_identical(params_a, states_a, params_b, states_b):
    for a, b in zip(params_a, params_b):
        assert a.dtype == b.dtype and torch.equal(a, b)
    for sa, sb in zip(states_a, states_b):
        assert_same_state(sa, sb)


def weights_only_round_trip(sd: dict) -> dict:
    """``sd`` through torch.save and torch.load(weights_only=True), as a resumed run reads it."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)
