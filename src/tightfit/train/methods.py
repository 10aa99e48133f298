"""Fine-tuning methods: which weights train and how the base model is stored.

- ``full``: every parameter trains.
- ``lora``: frozen fp32 base, LoRA adapters (peft) on every linear layer.
- ``qlora``: base linears stored as 4-bit NF4 with double quantization (bitsandbytes
  ``BitsAndBytesConfig``, block 64, absmax re-quantized to 8 bits), LoRA adapters on top,
  gradient checkpointing on (peft ``prepare_model_for_kbit_training``). Compute stays
  fp32: bf16 math is ~25x slower on CPU, and on GPU fp32 compute is the safe default.
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
    target_modules: str = "all-linear"


def _no_quantization() -> None:
    return None


def _nf4_double_quant() -> Any:
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise TrainInputError(f"method 'qlora' needs bitsandbytes (pip install bitsandbytes): {err}") from None
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.float32)


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
    return get_peft_model(model, config)


def _lora(model: torch.nn.Module, lora: LoraOptions, checkpointing: bool) -> torch.nn.Module:
    if checkpointing:
        model.gradient_checkpointing_enable(**CHECKPOINTING)
        model.enable_input_require_grads()  # checkpointed blocks need an input that requires grad
    return _add_lora(model, lora)


def _qlora(model: torch.nn.Module, lora: LoraOptions, checkpointing: bool) -> torch.nn.Module:
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True, **CHECKPOINTING)
    return _add_lora(model, lora)


@dataclass(frozen=True)
class Method:
    name: str
    quantization: Callable[[], Any]  # BitsAndBytesConfig for from_pretrained, or None
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
