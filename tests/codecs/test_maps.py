import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tightfit.codecs.maps import get_map

MAP_NAMES = ["dynamic8_signed", "dynamic8_unsigned", "dynamic4_signed", "linear4_unsigned"]

# name: (size, min value, max value, count of negatives, count of zeros) -- as bitsandbytes' create_dynamic_map
# builds the dynamic maps (Dettmers 2015) and Li et al. 2023 the 4-bit ones
MAP_FACTS = {
    "dynamic8_signed": (256, -0.99297, 1.0, 127, 1),
    "dynamic8_unsigned": (256, 0.0, 1.0, 0, 1),
    "dynamic4_signed": (16, -0.8875, 1.0, 7, 1),
    "linear4_unsigned": (16, 0.0625, 1.0, 0, 0),
}


@pytest.mark.parametrize("name", MAP_NAMES)
def test_map_shape_and_range(name):
    size, lo, hi, negatives, zeros = MAP_FACTS[name]
    values = get_map(name).values
    assert len(values) == size
    assert values[0].item() == pytest.approx(lo, abs=1e-5)
    assert values[-1].item() == hi
    assert int((values < 0).sum()) == negatives
    assert int((values == 0).sum()) == zeros


def test_dynamic8_signed_points_per_decade():
    # Positives per decade 1e-7 .. 1e-1 are 1, 2, 4, ..., 64 (+1.0 on top).
    pos = get_map("dynamic8_signed").values
    pos = pos[pos > 0]
    counts = [int(((pos >= 10.0 ** (e - 7)) & (pos < 10.0 ** (e - 6))).sum()) for e in range(7)]
    assert counts == [1, 2, 4, 8, 16, 32, 64]
    assert pos.min().item() == pytest.approx(5.5e-7, rel=1e-3)


def test_dynamic4_signed_values():
    expected = [0.0055, 0.0325, 0.0775, 0.2125, 0.4375, 0.6625, 0.8875]
    v = get_map("dynamic4_signed").values
    assert v[v > 0][:-1].tolist() == pytest.approx(expected, rel=1e-5)
    assert v[v < 0].tolist() == pytest.approx([-x for x in reversed(expected)], rel=1e-5)


@pytest.mark.parametrize("name", MAP_NAMES)
def test_reference_code_is_the_nearest_value(name):
    qmap = get_map(name)
    x = torch.rand(2000) * 2 - 1
    if "unsigned" in name:
        x = x.abs()
    codes = qmap.encode_reference(x).long()
    chosen = (qmap.values[codes] - x).abs()
    best = (qmap.values[None, :] - x[:, None]).abs().min(dim=1).values
    assert torch.equal(chosen, best)


@pytest.mark.parametrize("name", MAP_NAMES)
def test_fast_encoder_equals_reference_on_special_points(name):
    qmap = get_map(name)
    x = torch.cat([qmap.values, qmap.midpoints, torch.nextafter(qmap.midpoints, torch.tensor(2.0)),
                   torch.nextafter(qmap.midpoints, torch.tensor(-2.0)),
                   torch.tensor([0.0, -0.0, 1.0, 1e-30, -1e-30, 1e-45])]).clamp(-1, 1)
    assert torch.equal(qmap.encode_fast(x), qmap.encode_reference(x))


@pytest.mark.parametrize("name", MAP_NAMES)
@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.floats(-1.0, 1.0, width=32), min_size=1, max_size=200))
def test_fast_encoder_equals_reference_everywhere(name, values):
    qmap = get_map(name)
    x = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(qmap.encode_fast(x), qmap.encode_reference(x))


def test_unknown_map_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown quantization map 'nf5'"):
        get_map("nf5")


def test_a_map_first_built_under_fake_tensors_is_real():
    """The planner simulates steps under FakeTensorMode; the cached maps must stay real."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    from tightfit.codecs.maps import get_map

    get_map.cache_clear()
    with FakeTensorMode():
        qmap = get_map("dynamic8_squared")
    assert not isinstance(qmap.values, FakeTensor) and not isinstance(qmap.midpoints, FakeTensor)
    assert float(qmap.values[-1]) == 1.0
