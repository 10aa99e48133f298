"""CAME (rules/came.py), on the factored kernels: Adafactor's statistics plus the
confidence (instability) statistics."""

from .. import factored_kernels as K
from ..factored_step import FactoredRule


def slots(h) -> dict[int, float]:
    beta1, beta2, beta3 = h["betas"]
    return {K.SLOT_EPS1: h["eps"][0], K.SLOT_EPS2: h["eps"][1], K.SLOT_CLIP: h["clip_threshold"],
            K.SLOT_WEIGHT_DECAY: h["weight_decay"], K.SLOT_BETA1: beta1, K.SLOT_BETA2: beta2, K.SLOT_BETA3: beta3}


BINDING = FactoredRule(K.RULE_CAME.value, slots, ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"),
                       ("exp_avg_res_row", "exp_avg_res_col"))
