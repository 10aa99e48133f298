"""Adafactor, transformers convention (rules/adafactor.py ``adafactor_hf``), on the factored kernels."""

from .. import factored_kernels as K
from ..factored_step import FactoredRule


def slots(h) -> dict[int, float]:
    return {K.SLOT_EPS1: h["eps"][0], K.SLOT_EPS2: h["eps"][1], K.SLOT_DECAY: h["decay_rate"],
            K.SLOT_CLIP: h["clip_threshold"], K.SLOT_WEIGHT_DECAY: h["weight_decay"], K.SLOT_BETA1: h["beta1"] or 0.0,
            K.SLOT_RELATIVE_STEP: h["relative_step"], K.SLOT_WARMUP_INIT: h["warmup_init"],
            K.SLOT_SCALE_PARAMETER: h["scale_parameter"]}


BINDING = FactoredRule(K.RULE_ADAFACTOR_HF.value, slots, ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"))
