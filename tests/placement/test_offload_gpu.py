"""The real CUDA path of the offload placement: hooks copying grads on a side stream during
backward, the CPU step, weights copied back on another stream, events and host waits.

The reference steps the same rule on the host without any overlap: after backward every
grad is copied to an fp32 host master with a blocking copy, an unpaged optimizer steps the
masters (the same CPU kernels), and the masters are copied back. Any missing wait in the
overlapped path shows as different numbers."""

import copy

import pytest
import torch

import tightfit
from tightfit.codecs import Encoded

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
STEPS = 5


def cuda_mlp(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 1024),
                               torch.nn.GELU(), torch.nn.Linear(1024, 8)).to("cuda", dtype)


def batches(dtype, n, seed=1):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [(torch.randn(64, 256, device="cuda", generator=g).to(dtype),
             torch.randn(64, 8, device="cuda", generator=g).to(dtype)) for _ in range(n)]


class HostReference:
    """An unpaged optimizer over fp32 host masters, stepped after backward with blocking copies."""

    def __init__(self, model, **options):
        self.params = list(model.parameters())
        self.masters = [p.detach().float().cpu().requires_grad_() for p in self.params]
        self.opt = tightfit.AdamW(self.masters, lr=1e-3, **options)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        for master, p in zip(self.masters, self.params):
            master.grad = p.grad.float().cpu()
        self.opt.step()
        for master, p in zip(self.masters, self.params):
            p.copy_(master)


def run(model, opt, dtype, micro_batches=1, clip=None):
    data = batches(dtype, STEPS * micro_batches)
    for step in range(STEPS):
        opt.zero_grad()
        for x, y in data[step * micro_batches:(step + 1) * micro_batches]:
            torch.nn.functional.mse_loss(model(x).float(), y.float()).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("codec", ["fp32", "8bit", "4bit"])
@pytest.mark.parametrize("micro_batches, clip", [(1, None), (3, 0.1)])
def test_offload_on_cuda_equals_the_unoverlapped_host_step(dtype, codec, micro_batches, clip):
    model = cuda_mlp(dtype)
    twin = copy.deepcopy(model)
    offloaded = tightfit.AdamW(model.parameters(), lr=1e-3, state=codec, min_quantized_numel=0, offload=True)
    reference = HostReference(twin, state=codec, min_quantized_numel=0)
    run(model, offloaded, dtype, micro_batches, clip)
    run(twin, reference, dtype, micro_batches, clip)
    for p, q, master in zip(model.parameters(), twin.parameters(), reference.masters):
        assert torch.equal(p, q)
        for key, value in offloaded.state[p].items():
            if isinstance(value, Encoded):
                assert value.device.type == "cpu"
                for name, buf in value.buffers.items():
                    assert torch.equal(buf, reference.opt.state[master][key].buffers[name]), (key, name)
    report = offloaded.memory_report()
    numel = sum(p.numel() for p in model.parameters())
    assert report.device_bytes == 0 and report.offloaded_params == 6
    assert report.offload_master_bytes == 4 * numel
    assert report.offload_grad_bytes == numel * (4 if dtype == torch.float32 else 2)
    record = offloaded.placement_for(offloaded.param_groups[0])._records[next(model.parameters())]
    assert record.master.is_pinned() and record.transfer.is_pinned()
