"""Adafactor, torch.optim convention (rules/adafactor.py ``adafactor``), on the factored kernels."""

import torch

from .. import factored_kernels as K
from ..factored_step import FactoredRule


def slots(h) -> dict[int, float]:
    eps1, eps2 = h["eps"]
    return {K.SLOT_EPS1: torch.finfo(torch.float32).eps if eps1 is None else eps1, K.SLOT_EPS2: eps2,
            K.SLOT_DECAY: h["beta2_decay"], K.SLOT_CLIP: h["d"], K.SLOT_WEIGHT_DECAY: h["weight_decay"],
            K.SLOT_BETA1: h["beta1"] or 0.0, K.SLOT_MAXIMIZE: h["maximize"]}


BINDING = FactoredRule(K.RULE_ADAFACTOR.value, slots, ("row_var", "col_var", "variance"))
