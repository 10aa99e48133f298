"""``tightfit train`` states the plan's prediction before it starts and puts the measured
peak next to it at the end, for the settings that actually run (``step.running_finetune``).

What is compared is what the device lets us measure (train/memory.py): on a GPU the
plan's allocated peak against ``torch.cuda.max_memory_allocated``; on a CPU, where torch
has no allocator counter, the plan's parameters + gradients + optimizer state (weights,
adapters, masters, gradients at the step, state) against the same bytes summed from the
live tensors ("tracked").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TRACKED_COMPONENTS = ("weights", "LoRA adapters", "fp32 master weights", "gradients", "optimizer state")


@dataclass
class Prediction:
    bytes: int  # comparable with PeakMemory.peak_bytes on the same device
    kind: str  # what it predicts
    peak_allocated: int  # the plan's whole allocated peak (activations included)


def predict(config, model: torch.nn.Module, device: torch.device) -> tuple[Prediction | None, str]:
    """(prediction, one line saying it) for ``config`` running ``model`` (the loaded model,
    before LoRA) on ``device``; (None, why) when the planner cannot plan it."""
    from ..planner.api import fields_of, plan
    from ..planner.model_facts import facts_from_config
    from .step import running_finetune

    ran, _ = running_finetune(config, device)
    try:
        facts = facts_from_config(model.config.to_dict(), config.model, "the loaded model")
        result = plan(facts, device="cuda" if device.type == "cuda" else "cpu", advise=False, **fields_of(ran))
    except (ValueError, KeyError, AttributeError) as err:
        return None, f"plan: no prediction ({err})"
    if device.type == "cuda":
        prediction = Prediction(result.peak_allocated, "max_memory_allocated", result.peak_allocated)
        return prediction, (f"plan: peak {result.peak_allocated / 2**20:.1f} MiB allocated "
                            f"(at {result.peak_at}); measured as torch.cuda.max_memory_allocated")
    # sampled after the step: updates inside backward have freed every gradient by then
    parts = tuple(n for n in TRACKED_COMPONENTS if not (n == "gradients" and ran.in_backward and ran.grad_accum == 1))
    tracked = sum(c.device + c.host for c in result.components if c.name.startswith(parts))
    prediction = Prediction(tracked, "cpu_tracked_params_grads_state", result.peak_allocated)
    return prediction, (f"plan (CPU step): params + grads + optimizer state {tracked / 2**20:.2f} MiB "
                        f"(peak with activations {result.peak_allocated / 2**20:.2f} MiB; the CPU measures the "
                        "former)")


def compare(prediction: Prediction | None, measured: int) -> str:
    """One line: measured next to predicted."""
    if prediction is None or not prediction.bytes:
        return f"memory: measured peak {measured / 2**20:.2f} MiB (no prediction)"
    return (f"memory ({prediction.kind}): measured {measured / 2**20:.2f} MiB, predicted "
            f"{prediction.bytes / 2**20:.2f} MiB (measured / predicted = {measured / prediction.bytes:.3f})")
