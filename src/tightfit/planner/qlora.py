"""QLoRA base weights for measured steps: bitsandbytes NF4 + double quantization.

``quantize_nf4(model)`` replaces every LoRA-target linear by ``bitsandbytes.nn.Linear4bit``
(nf4, block 64, ``compress_statistics=True``, compute dtype = the model's dtype), as
``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True)`` does, and returns the quantization-state tensors so the
tracker can count them. bitsandbytes 4-bit runs on CPU (>= 0.50) but not on fake tensors,
so QLoRA steps are measured, not simulated.
"""

from __future__ import annotations

import torch
from torch import nn

from .lora import DEFAULT_TARGETS


def quantize_nf4(model: nn.Module, targets=DEFAULT_TARGETS) -> list[torch.Tensor]:
    import bitsandbytes as bnb

    states = []
    for name, module in list(model.named_modules()):
        if not (isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets):
            continue
        quantized = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                      compute_dtype=module.weight.dtype, compress_statistics=True, quant_type="nf4")
        quantized.weight = bnb.nn.Params4bit(module.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                             compress_statistics=True, blocksize=64)
        if module.bias is not None:
            quantized.bias = nn.Parameter(module.bias.data.clone(), requires_grad=False)
        quantized = quantized.to(module.weight.device)  # quantizes
        q = quantized.weight.quant_state
        states += [q.absmax, q.offset, q.code, q.state2.absmax, q.state2.code]
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, quantized)
    return states
