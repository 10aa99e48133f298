import pytest

from fake_streams import FakeStreams
from tightfit.placement import STREAM_LAYERS, paged


@pytest.fixture
def fake_streams(monkeypatch):
    """Page CPU tensors through a recording FakeStreams (one chunk per param, 3 slots)."""
    layer = FakeStreams(seed=0)
    monkeypatch.setitem(STREAM_LAYERS, "cpu", lambda device: layer)
    monkeypatch.setattr(paged, "CHUNK_BYTES", 1)
    monkeypatch.setattr(paged, "SLOTS", 3)
    return layer
