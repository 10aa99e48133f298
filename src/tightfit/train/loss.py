"""The training loss, by name (``--loss``): ``full`` is transformers' causal-LM loss over
the whole vocabulary; ``chunked`` computes the same mean cross-entropy over chunks of
``LOSS_CHUNK_TOKENS`` tokens, each chunk's logits recomputed in backward
(``torch.utils.checkpoint``), so at most one chunk's logits (and their fp32 log-softmax
and gradients) are alive at a time instead of the whole batch's: on 128k-vocabulary
models that is gigabytes at long sequences.

Both shift labels by one and ignore ``-100`` like ``ForCausalLMLoss``; ``chunked`` equals
``full`` up to float summation order (tests/train/test_loss.py).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..finetune import LOSS_CHUNK_TOKENS

IGNORE_INDEX = -100


def full_loss(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, labels=labels).loss


def _chunk_loss_sum(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the causal LM
    head = base.get_output_embeddings()
    if head is None or getattr(base.config, "final_logit_softcapping", None):
        raise ValueError(f"--loss chunked needs a causal LM with a plain lm_head (got {type(base).__name__}); "
                         "use --loss full")
    return base.get_decoder(), head


def chunked_loss(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                 chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Mean next-token cross-entropy, as ``full_loss``, over chunks of ``chunk_tokens`` tokens."""
    decoder, head = _decoder_and_head(model)
    hidden = decoder(input_ids=input_ids).last_hidden_state[:, :-1].reshape(-1, head.in_features)
    targets = labels[:, 1:].reshape(-1)
    count = (targets != IGNORE_INDEX).sum()
    total = hidden.new_zeros((), dtype=torch.float32)
    for lo in range(0, len(targets), chunk_tokens):
        total = total + checkpoint(_chunk_loss_sum, head, hidden[lo:lo + chunk_tokens], targets[lo:lo + chunk_tokens],
                                   use_reentrant=False)
    return total / count.clamp(min=1)


LOSSES: dict[str, Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "full": full_loss,
    "chunked": chunked_loss,
}


def get_loss(name: str) -> Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    if name not in LOSSES:
        raise ValueError(f"--loss {name!r} is not allowed (allowed: {', '.join(LOSSES)})")
    return LOSSES[name]
