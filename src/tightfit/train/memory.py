"""Peak memory of a training run, measured the way the device allows — and named.

- CUDA: ``torch.cuda.max_memory_allocated`` (reset at run start): every live tensor.
- CPU: torch has no allocator counter, so two numbers, each labelled:
  ``tracked`` = parameters + gradients + optimizer state, summed exactly from the live
  tensors at their high point (right after ``optimizer.step()``; activations excluded;
  4-bit QLoRA weights count their packed codes, not bitsandbytes' separate absmax), and
  ``rss`` = the process resident set sampled after every step (psutil; process-wide, so
  in ``bench`` it includes what earlier runs in the same process left on the heap).
"""

from __future__ import annotations

import torch


def _rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def tracked_bytes(model: torch.nn.Module, optimizer_state: int) -> int:
    """Parameters (deduplicated, incl. frozen/quantized) + gradients + optimizer state."""
    seen, total = set(), optimizer_state
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.nbytes
        if getattr(tensor, "grad", None) is not None:
            total += tensor.grad.nbytes
    return total


class PeakMemory:
    """Running peaks for one run; ``kind`` names what ``peak_bytes`` measures."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.kind = "cuda_max_allocated" if self.cuda else "cpu_tracked_params_grads_state"
        self.peak_tracked = 0
        self.peak_rss = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device

    def sample(self, model: torch.nn.Module, optimizer_state: int) -> None:
        self.peak_tracked = max(self.peak_tracked, tracked_bytes(model, optimizer_state))
        rss = _rss_bytes()
        if rss is not None:
            self.peak_rss = max(self.peak_rss, rss)

    @property
    def peak_bytes(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        return self.peak_tracked
