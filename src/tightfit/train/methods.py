"""Fine-tuning methods: which weights train and how the base model is stored.

- ``full``: every parameter trains.
- ``lora``: frozen base, LoRA adapters (peft) on the target linears (``--lora-targets``),
  in ``--adapter-dtype`` (fp32: peft's ``autocast_adapter_dtype`` over a bf16 base).
- ``qlora``: base linears stored as 4-bit NF4 with double quantization (bitsandbytes
  ``BitsAndBytesConfig``, block 64, absmax re-quantized to 8 bits), computing in the
  precision's compute dtype, LoRA adapters on top, gradient checkpointing on. The other
  weights are not upcast to fp32 (as TRL >= 0.26, unlike peft's
  ``prepare_model_for_kbit_training``), which is what ``tightfit plan`` assumes.

The base weights' dtype is set before (train/step.py ``cast_model``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .errors import TrainInputError


@dataclass(frozen=True)
class LoraOptions:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    adapter_dtype: str = "fp32"  # fp32 adapters over a 16-bit base, or adapters in the base's dtype


def _no_quantization(compute_dtype: torch.dtype = torch.float32) -> None:
    return None


def _nf4_double_quant(compute_dtype: torch.dtype = torch.float32) -> Any:
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise TrainInputError(f"method 'qlora' needs bitsandbytes (pip install bitsandbytes): {err}") from None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


# Non-reentrant checkpointing: the form torch recommends (and will require); it also works
# when the block inputs do not require grad.
CHECKPOINTING = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}


def _full(model: torch.nn.Module, lora: LoraOptions, checkpointing: bool) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    if checkpointing:
        model.gradient_checkpointing_enable(**CHECKPOINTING)
    return model


def _add_lora(model: torch.nn.Module, lora: LoraOptions) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config, autocast_adapter_dtype=lora.adapter_dtype == "fp32")


def _lora(model: torch.nn.Module, lora: LoraOptions, checkpointing: bool) -> torch.nn.Module:
    if checkpointing:
        model.gradient_checkpointing_enable(**CHECKPOINTING)
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return _add_lora(model, lora)


def _qlora(model: torch.nn.Module, lora: LoraOptions, checkpointing: bool) -> torch.nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return _lora(model, lora, True)


@dataclass(frozen=True)
class Method:
    name: str
    quantization: Callable[..., Any]  # (compute dtype) -> BitsAndBytesConfig for from_pretrained, or None
    prepare: Callable[[torch.nn.Module, LoraOptions, bool], torch.nn.Module]
    adapters: bool  # True: checkpoints and the final save hold adapters only


METHODS: dict[str, Method] = {
    "full": Method("full", _no_quantization, _full, adapters=False),
    "lora": Method("lora", _no_quantization, _lora, adapters=True),
    "qlora": Method("qlora", _nf4_double_quant, _qlora, adapters=True),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise TrainInputError(f"unknown method {name!r} (allowed: {', '.join(METHODS)})")
    return METHODS[name]
