"""Adafactor, transformers convention (rules/adafactor.py adafactor_hf_update), on the
native CPU path, for matrices.

Three passes over the matrix (factored.py): row/column sums of S = g² + ε₁ with the
finite check and Σθ² for αₜ's RMS(θ); Σu² for the clip divisor; then tf_step
(tile csrc/rules/adafactor_hf.h): u = αₜ·û, the optional first moment through its codec, θ ← θ − λαₜ·θ − u.
αₜ and β̂₂ₜ come from the rule's adafactor_hf_step_scalars, R and C from factored_ema.
RMS(θ) and RMS(u) are summed in double where torch's norm sums in float32, so results
agree with the reference to about 1e-7 relative (torch's float32 norm itself drifts
~1e-6 from the exact value over ~1e5 elements). Parameters that are not matrices take
the reference step with native codec passes.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ...rules.adafactor import adafactor_hf_step_scalars
from ..reference import reference_param_step
from .codec_passes import native_decode, native_store
from .factored import clip_divisor, grad_sq_means, second_moment, store_second_moment
from .jobs import F_GRAD_CHECKED, make_job

KERNEL_STATES = ("exp_avg",)


def param_step(lib, rule, hyper: Mapping[str, Any], param: torch.Tensor, state: dict,
                            n_threads: int) -> None:
    if param.dim() != 2 or param.numel() == 0:
        reference_param_step(rule, hyper, param, state, decode=native_decode, store=native_store)
        return
    rows, cols = param.shape
    beta1, weight_decay = hyper["beta1"], hyper["weight_decay"]
    moments = [state["exp_avg"]] if beta1 is not None else []
    # c = [ε₁, clip divisor, αₜ, β₁, 1-β₁, λαₜ, has decay, has momentum]: αₜ after pass 1, the divisor after pass 2.
    coeffs = (hyper["eps"][0], 1.0, 0.0, beta1 or 0.0, 1 - (beta1 or 0.0), 0.0, 1.0 if weight_decay != 0 else 0.0,
              1.0 if beta1 is not None else 0.0)
    job = make_job(rule, coeffs, param.detach(), param.grad, moments,
                   state["step"], state["nonfinite_skips"], n_threads, flags=F_GRAD_CHECKED)
    job.cols = cols
    means = grad_sq_means(lib, job, rows, cols, param_rms=hyper["scale_parameter"])
    if means is None:
        state["nonfinite_skips"] += 1  # skip: parameter and states stay as they were
        return
    row_mean, col_mean, rms_param = means
    alpha, beta2t = adafactor_hf_step_scalars(rms_param, step=int(state["step"].item()) + 1, lr=hyper["lr"],
                                              eps=hyper["eps"], decay_rate=hyper["decay_rate"],
                                              scale_parameter=hyper["scale_parameter"],
                                              relative_step=hyper["relative_step"], warmup_init=hyper["warmup_init"])
    job.c[2], job.c[5] = alpha, weight_decay * alpha
    sq_row, sq_col, _factors = second_moment(job, state, row_mean, col_mean, beta2t)
    job.c[1] = clip_divisor(lib, job, hyper["clip_threshold"])
    lib.tf_step(job)
    store_second_moment(state, sq_row, sq_col)
