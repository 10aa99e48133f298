"""LoRA adapters as peft builds them, for simulated and measured steps without importing peft.

``LoRALinear`` computes what ``peft.tuners.lora.Linear`` computes with ``lora_dropout=0``
(dropout is then an identity, as in peft): ``y = base(x) + lora_B(lora_A(x)) * (alpha / r)``,
the input cast to the adapter dtype and the sum cast to the base output's dtype.
``lora_A`` is r x in and ``lora_B`` out x r (no bias), so an adapter on a linear of shape
out x in adds r·(in + out) trainable parameters. The base linear is frozen.
"""

from __future__ import annotations

import torch
from torch import nn

# peft's "all-linear" set for Llama-style blocks; the planner's default targets.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.base_layer = base
        device = base.weight.device  # peft keeps adapters fp32 by default (autocast_adapter_dtype)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=device, dtype=dtype)
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = (alpha if alpha is not None else rank) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # as peft: the sum is cast back to the base layer's output dtype
        return (result + self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))) * self.scaling).to(result.dtype)


def apply_lora(model: nn.Module, rank: int, targets=DEFAULT_TARGETS, dtype: torch.dtype = torch.float32
               ) -> list[nn.Parameter]:
    """Freeze ``model``, wrap every linear whose name ends in a target; return the adapter params."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    adapters = []
    for name, linear in wrapped:
        parent_name, _, child = name.rpartition(".")
        lora = LoRALinear(linear, rank, dtype=dtype)
        setattr(model.get_submodule(parent_name), child, lora)
        adapters += [lora.lora_A.weight, lora.lora_B.weight]
    return adapters
