"""The copy-in / update / copy-out pipeline, checked on the recording fake stream layer."""

import copy

import pytest
import torch

import tightfit
from toy_problem import regression_batch, small_mlp, train
from fake_streams import FakeStreams
from tightfit.placement import STREAM_LAYERS, paged

STEPS = 3


def paged_run(monkeypatch, slots, seed=0, chunk_bytes=1):
    """Train small_mlp with 8-bit AdamW paged through a fresh fake layer; returns (model, opt, layer)."""
    layer = FakeStreams(seed=seed)
    monkeypatch.setitem(STREAM_LAYERS, "cpu", lambda device: layer)
    monkeypatch.setattr(paged, "SLOTS", slots)
    monkeypatch.setattr(paged, "CHUNK_BYTES", chunk_bytes)
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters(), lr=1e-2, state="8bit", min_quantized_numel=0, paged=True)
    train(model, opt, STEPS)
    return model, opt, layer


def unpaged_run():
    model = small_mlp()
    opt = tightfit.AdamW(model.parameters(), lr=1e-2, state="8bit", min_quantized_numel=0)
    train(model, opt, STEPS)
    return model


N_CHUNKS = len(list(small_mlp().parameters()))  # CHUNK_BYTES=1: one param per chunk


@pytest.mark.parametrize("slots", [1, 2, 3, 4])
def test_at_most_k_chunks_in_device_slots(monkeypatch, slots):
    _, opt, layer = paged_run(monkeypatch, slots)
    assert opt.memory_report().paged_params == N_CHUNKS
    assert layer.max_live == min(slots, N_CHUNKS)
    assert layer.device_allocations == STEPS * min(slots, N_CHUNKS)


@pytest.mark.parametrize("slots", [2, 3])
def test_next_copy_in_is_issued_before_the_update_waits(monkeypatch, slots):
    _, _, layer = paged_run(monkeypatch, slots)
    for i in range(N_CHUNKS - 1):
        assert layer.first_issued(("copy_in", i + 1)) < layer.first_issued(("wait", ("update_waits", i)))


def test_single_slot_copies_in_only_after_the_previous_copy_out(monkeypatch):
    _, _, layer = paged_run(monkeypatch, 1)
    for i in range(1, N_CHUNKS):
        assert layer.first_issued(("wait", ("slot_free", i))) < layer.first_issued(("copy_in", i))
        outs, ins = layer.executed_at(("copy_out", i - 1)), layer.executed_at(("copy_in", i))
        assert len(outs) == len(ins) == STEPS and all(o < c for o, c in zip(outs, ins))


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_copy_out_runs_after_its_update(monkeypatch, slots):
    _, _, layer = paged_run(monkeypatch, slots)
    for i in range(N_CHUNKS):
        updates, outs = layer.executed_at(("update", i)), layer.executed_at(("copy_out", i))
        assert len(updates) == STEPS and len(outs) == STEPS
        assert all(out > update for update, out in zip(updates, outs))


def test_no_copy_in_for_a_new_step_before_the_last_copy_out(monkeypatch):
    _, _, layer = paged_run(monkeypatch, 2)
    outs = [i for i, (_, lab) in enumerate(layer.executed) if lab == ("copy_out", N_CHUNKS - 1)]
    ins = [i for i, (_, lab) in enumerate(layer.executed) if lab == ("copy_in", 0)]
    assert all(outs[s] < ins[s + 1] for s in range(STEPS - 1))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("slots,chunk_bytes", [(1, 1), (2, 1), (3, 1), (2, 8192)])
def test_bit_identical_to_unpaged_under_any_legal_interleaving(monkeypatch, slots, chunk_bytes, seed):
    model, opt, _ = paged_run(monkeypatch, slots, seed, chunk_bytes)
    assert opt.memory_report().device_bytes == 0 and opt.memory_report().host_bytes > 0
    for a, b in zip(model.parameters(), unpaged_run().parameters()):
        assert torch.equal(a, b)


def test_a_missing_event_wait_is_caught(monkeypatch):
    """The checks above can fail: drop the wait before each update and they do."""
    reference = [p.detach().clone() for p in unpaged_run().parameters()]
    real_wait = FakeStreams.wait

    def careless_wait(self, stream, event, label):
        if not (isinstance(label, tuple) and label[0] == "update_waits"):
            real_wait(self, stream, event, label)

    monkeypatch.setattr(FakeStreams, "wait", careless_wait)
    caught = 0
    for seed in range(6):
        model, _, _ = paged_run(monkeypatch, 2, seed)
        caught += not all(torch.equal(a, b) for a, b in zip(model.parameters(), reference))
    assert caught > 0


def test_in_flight_copies_finish_before_state_dict_reads_host_memory(monkeypatch):
    """state_dict synchronises the layer: nothing is left queued when the host reads."""
    model, opt, layer = paged_run(monkeypatch, 2)
    x, y = regression_batch()
    torch.nn.functional.mse_loss(model(x), y).backward()
    layer.finish = lambda: None  # leave this step's copies queued, as a GPU would
    opt.step()
    assert any(layer.queues.values())
    opt.state_dict()
    assert not any(layer.queues.values())
