"""The real CUDA path of paged placement: pinned host blocks, side streams, events."""

import copy

import pytest
import torch

import tightfit
from optim_cases import CODECS
from tightfit.codecs import Encoded
from tightfit.kernels import triton_available
from tightfit.placement import paged

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cuda_mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 512),
                               torch.nn.GELU(), torch.nn.Linear(512, 8)).cuda()


def train(model, opt, steps, seed=1):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(64, 256, device="cuda", generator=g)
    y = torch.randn(64, 8, device="cuda", generator=g)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def assert_same(model_a, opt_a, model_b, opt_b):
    torch.cuda.synchronize()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)
        for key, value in opt_a.state[pa].items():
            other = opt_b.state[pb][key]
            if isinstance(value, Encoded):
                for name, buf in value.buffers.items():
                    assert torch.equal(buf.cpu(), other.buffers[name].cpu()), (key, name)


@pytest.mark.parametrize("codec", CODECS)
def test_paged_equals_unpaged_on_cuda(codec, monkeypatch):
    monkeypatch.setattr(paged, "CHUNK_BYTES", 1)  # one param per chunk: the pipeline runs
    model = cuda_mlp()
    twin = copy.deepcopy(model)
    unpaged = tightfit.AdamW(model.parameters(), lr=1e-3, state=codec, min_quantized_numel=0)
    paged_opt = tightfit.AdamW(twin.parameters(), lr=1e-3, state=codec, min_quantized_numel=0, paged=True)
    train(model, unpaged, 5)
    train(twin, paged_opt, 5)
    report = paged_opt.memory_report()
    assert report.device_bytes == 0 and report.host_bytes == unpaged.state_nbytes()
    for state in paged_opt.state.values():
        for value in state.values():
            if isinstance(value, Encoded):
                assert all(b.device.type == "cpu" and b.is_pinned() for b in value.buffers.values())
    assert_same(model, unpaged, twin, paged_opt)


def test_paged_step_borrows_at_most_the_stream_buffers(monkeypatch):
    monkeypatch.setattr(paged, "CHUNK_BYTES", 1)
    params = [torch.nn.Parameter(torch.randn(1 << 20, device="cuda")) for _ in range(8)]
    for p in params:
        p.grad = torch.randn_like(p)
    unpaged = tightfit.AdamW([torch.nn.Parameter(params[0].detach().clone())], state="fp32")
    unpaged.param_groups[0]["params"][0].grad = params[0].grad.clone()
    unpaged.step()  # states exist; the next step's peak above them is the update's own workspace
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    unpaged.step()
    torch.cuda.synchronize()
    workspace = torch.cuda.max_memory_allocated() - base
    del unpaged

    opt = tightfit.AdamW(params, state="fp32", paged=True)
    opt.step()  # creates the states in pinned host memory
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    opt.step()
    torch.cuda.synchronize()
    report = opt.memory_report()
    assert report.stream_buffer_bytes == paged.SLOTS * 8 * (1 << 20)  # each slot: one param's fp32 m and v (8 MiB)
    assert torch.cuda.max_memory_allocated() - base <= report.stream_buffer_bytes + workspace
    assert torch.cuda.memory_allocated() == base  # the slots are given back
    assert report.device_bytes == 0 and report.host_bytes == 8 * 8 * (1 << 20)


def test_in_backward_paged_equals_normal_step_on_cuda():
    model = cuda_mlp()
    twin = copy.deepcopy(model)
    normal = tightfit.AdamW(model.parameters(), lr=1e-3, state="8bit", min_quantized_numel=0)
    inside = tightfit.AdamW(twin.parameters(), lr=1e-3, state="8bit", min_quantized_numel=0, paged=True)
    handle = tightfit.step_in_backward(twin, inside)
    x = torch.randn(64, 256, device="cuda")
    for _ in range(3):
        normal.zero_grad()
        model(x).square().mean().backward()
        normal.step()
        twin(x).square().mean().backward()
    handle.remove()
    assert inside.memory_report().paged_params == 6
    assert_same(model, normal, twin, inside)


@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_paged_triton_step_never_waits_for_the_device(monkeypatch):
    monkeypatch.setattr(paged, "CHUNK_BYTES", 1)
    model = cuda_mlp()
    opt = tightfit.AdamW(model.parameters(), state="8bit", min_quantized_numel=0, impl="triton", paged=True)
    train(model, opt, 1)  # creates and pins the states
    model(torch.randn(8, 256, device="cuda")).sum().backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_state_dict_of_paged_cuda_optimizer_round_trips():
    model = cuda_mlp()
    opt = tightfit.AdamW(model.parameters(), state="8bit", min_quantized_numel=0, paged=True)
    train(model, opt, 2)
    twin = copy.deepcopy(model)
    resumed = tightfit.AdamW(twin.parameters(), state="8bit", min_quantized_numel=0, paged=True)
    resumed.load_state_dict(opt.state_dict())
    assert resumed.memory_report() == opt.memory_report()
    train(model, opt, 2)
    train(twin, resumed, 2)
    assert_same(model, opt, twin, resumed)


def test_large_params_stream_in_pieces_within_the_slot_budget():
    """8-bit AdamW on a 128k x 1024 embedding-like param (~256 MiB of states): the slots
    stay at SLOTS x CHUNK_BYTES and the result equals the unpaged step."""
    big = torch.randn(128 * 1024, 1024, device="cuda") * 0.02
    grad = torch.randn_like(big) * 1e-3
    results = []
    for paged_flag in (False, True):
        p = torch.nn.Parameter(big.clone())
        opt = tightfit.AdamW([p], lr=1e-3, state="8bit", paged=paged_flag)
        for _ in range(2):
            p.grad = grad.clone()
            opt.step()
        torch.cuda.synchronize()
        results.append((p.detach().clone(), opt))
    assert torch.equal(results[0][0], results[1][0])
    report = results[1][1].memory_report()
    assert report.device_bytes == 0
    assert report.stream_buffer_bytes <= paged.SLOTS * (paged.CHUNK_BYTES + (1 << 20))
