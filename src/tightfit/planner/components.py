"""Bytes of the persistent components of training: weights, fp32 master weights, LoRA
adapters, gradients and optimizer state, over the model's real parameter shapes.

Formulas (n = elements of a tensor, e = bytes of the weight dtype):

* weights: n·e for every parameter; under QLoRA the block linears are NF4 with double
  quantization (QLoRA, arXiv 2305.14314; bitsandbytes ``quantize_4bit``, nf4, block 64,
  ``compress_statistics=True``)::

      nf4_bytes(n) = ceil(n/2)                  4-bit codes, two per byte
                   + ceil(n/64)                 absmax per 64, quantized to 8 bits
                   + 4·ceil(ceil(n/64)/256)     fp32 absmax per 256 quantized absmaxes
                   + 4                          fp32 mean subtracted from the absmaxes

  embeddings, norms and lm_head stay in the weight dtype (no upcast: TRL >= 0.26 skips
  peft's ``prepare_model_for_kbit_training`` upcast; with it they would be fp32).
* LoRA adapters: r·(in + out) per target linear, in the adapter dtype (fp32 by default:
  peft ``autocast_adapter_dtype``; bf16 as torchtune keeps them).
* master weights: 4 bytes per trainable element when trainable weights are 16-bit
  (mixed precision); none with ``stochastic_rounding`` (bf16 weights updated with
  stochastic rounding) and none for fp32 weights or fp32 adapters.
* gradients: one per trainable element in the trainable weight's dtype.
* optimizer state: ``tightfit.state_bytes`` (the rule's declared states through the codec,
  fp32 below ``min_quantized_numel`` and for ``small`` factored statistics) summed over the
  trainable shapes; paged optimizers keep it in host memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..placement.paged import paged_slot_bytes, plan_resident
from ..state_bytes import state_bytes
from .model_facts import ModelFacts, ParamInfo
from .lora import DEFAULT_TARGETS

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def nf4_bytes(n: int, block: int = 64, absmax_block: int = 256) -> int:
    """NF4 weight with double quantization (formula in the module docstring)."""
    blocks = math.ceil(n / block)
    return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / absmax_block) + 4


@dataclass(frozen=True)
class Trainable:
    """One trainable tensor: its shape and dtype (full FT: a weight; LoRA: an adapter)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str = "adapter"  # model_facts.ParamInfo.kind for a trained weight (embedding, lm_head ...)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def lora_targets(facts: ModelFacts, targets=DEFAULT_TARGETS) -> list[ParamInfo]:
    """Block linears whose module name is a LoRA target (fused phi3 projections count as one)."""
    fused = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
    out = []
    for p in facts.parameters():
        module = p.name.rsplit(".", 2)[-2]
        if p.linear and (module in targets or any(t in targets for t in fused.get(module, ()))):
            out.append(p)
    return out


def trainables(facts: ModelFacts, method: str, dtype: str, lora_rank: int, targets=DEFAULT_TARGETS,
               adapter_dtype: str = "fp32") -> list[Trainable]:
    """Full FT: every weight in ``dtype``; LoRA: A (r x in) and B (out x r) per target, in ``adapter_dtype``."""
    if method == "full":
        return [Trainable(p.name, p.shape, dtype, p.kind) for p in facts.parameters()]
    out = []
    for p in lora_targets(facts, targets):
        rows, cols = p.shape
        out += [Trainable(p.name + ".lora_A", (lora_rank, cols), adapter_dtype),
                Trainable(p.name + ".lora_B", (rows, lora_rank), adapter_dtype)]
    return out


def weight_bytes(facts: ModelFacts, method: str, dtype: str) -> int:
    """Base weights (frozen or trained); adapters are counted separately."""
    e = DTYPE_BYTES[dtype]
    total = 0
    for p in facts.parameters():
        total += nf4_bytes(p.numel) if (method == "qlora" and p.linear) else p.numel * e
    return total


def master_bytes(params: list[Trainable], stochastic_rounding: bool) -> int:
    if stochastic_rounding:
        return 0
    return sum(4 * t.numel for t in params if t.dtype != "fp32")


def offload_master_bytes(params: list[Trainable]) -> int:
    """placement/offload.py's host master copies: fp32 for every trainable, whatever its dtype."""
    return sum(4 * t.numel for t in params)


def gradient_bytes(params: list[Trainable]) -> int:
    return sum(t.numel * DTYPE_BYTES[t.dtype] for t in params)


def optimizer_state_bytes_each(params: list[Trainable], spec, masters: bool) -> list[int]:
    """Exact state bytes of ``spec`` (optimizer_specs.OptimizerSpec) per trainable tensor.

    The optimizer steps the fp32 masters when there are masters, else the params themselves.
    """
    each = []
    for t in params:
        stepped = torch.float32 if (masters or t.dtype == "fp32") else TORCH_DTYPES[t.dtype]
        own = spec.for_param(t.shape, t.role)  # Muon routes embeddings and the head to AdamW
        each.append(state_bytes(own.rule, own.codec_for(stepped), t.shape, own.hyper, own.min_quantized_numel))
    return each


def optimizer_state_bytes(params: list[Trainable], spec, masters: bool) -> int:
    return sum(optimizer_state_bytes_each(params, spec, masters))


# bitsandbytes pages only state1/state2 of tensors with at least this many elements
BNB_PAGED_MIN_NUMEL = 100_000


def managed_split(params: list[Trainable], state_each: list[int]) -> tuple[int, int]:
    """(device, managed) state bytes of a bitsandbytes paged optimizer: its states live in CUDA
    managed memory (torch's counters do not see them; the driver keeps them on the GPU while
    it has room), except for tensors under BNB_PAGED_MIN_NUMEL, which stay ordinary device memory."""
    device = sum(b for t, b in zip(params, state_each) if t.numel < BNB_PAGED_MIN_NUMEL)
    return device, sum(state_each) - device


def paged_split(state_each: list[int], budget: int | None, splittable: bool = False,
                per_param: bool = False) -> tuple[int, int]:
    """(state bytes kept on the device, device bytes of the streaming slots) the way
    placement/paged.py splits them: smallest states stay resident while the budget lasts,
    the rest streams through its slots (paged_slot_bytes; ``splittable``: elementwise
    rules stream large parameters in pieces). ``per_param``: updates inside backward
    stream one parameter at a time (optimizer.step_param), so the slots are those of the
    largest single parameter."""
    if budget is None:
        return sum(state_each), 0
    indices = list(range(len(state_each)))
    resident = plan_resident(indices, lambda i: state_each[i], budget)
    paged = [state_each[i] for i in indices if i not in resident]
    if per_param:
        return sum(state_each[i] for i in resident), max((paged_slot_bytes([b], splittable) for b in paged), default=0)
    return sum(state_each[i] for i in resident), paged_slot_bytes(paged, splittable)


@dataclass
class GradientPlaces:
    """Gradient bytes by where backward produces them (see activations.step_timeline).

    ``stepping``: for "head", "embed" and each block index, the largest gradient there plus
    its optimizer-step temporaries (what is live while it is updated inside backward).
    """

    by_block: list[int]
    largest_by_block: list[int]
    head: int  # lm_head (the embedding when tied) and the final norm
    embed: int  # the embedding's gradient as its backward makes it
    stepping: dict


def gradient_places(facts: ModelFacts, params: list[Trainable],
                    temp_per_element: Callable[[Trainable], float]) -> GradientPlaces:
    """``temp_per_element(t)``: the optimizer step's temporaries per element of ``t``."""
    places = GradientPlaces([0] * facts.layers, [0] * facts.layers, 0, 0,
                            {"head": 0, "embed": 0, **{k: 0 for k in range(facts.layers)}})
    infos = {p.name: p for p in facts.parameters()}
    for t in params:
        info = infos[t.name.split(".lora_")[0]]
        nbytes = t.numel * DTYPE_BYTES[t.dtype]
        place = info.layer if info.layer is not None else ("embed" if info.kind == "embedding" else "head")
        places.stepping[place] = max(places.stepping[place], nbytes + int(temp_per_element(t) * t.numel))
        if info.layer is not None:
            places.by_block[info.layer] += nbytes
            places.largest_by_block[info.layer] = max(places.largest_by_block[info.layer], nbytes)
        elif info.kind == "embedding":
            places.embed += nbytes
        else:
            places.head += nbytes
    if facts.tied and places.embed:
        places.head += places.embed  # the lm_head's gradient is the embedding's
    return places


def largest(params: list[Trainable]) -> Trainable:
    return max(params, key=lambda t: t.numel)

