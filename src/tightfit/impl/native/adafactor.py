"""Adafactor (torch.optim.Adafactor convention, rules/adafactor.py) on the native CPU path.

Three passes over the matrix, as the HF convention's driver (adafactor_hf.py):
factored.py's grad_sq_means gives the row/column means of g² (job.c[0] = 0: this
convention adds no ε₁ to g²) with the finite check and Σθ² for αₜ's RMS(θ); the rule's
own adafactor_step_scalars and factored_lerp turn them into wₜ, αₜ and the new R, C
(small vectors, torch.lerp) and max(mean R, ε₁); then the kernel sums U² for the
RMS(U) clip (tf_adafactor_sumsq) and applies U = g / √V̂, αₜ, the optional first moment
through its codec and the parameter update (tf_step with the tile csrc/rules/adafactor.h).
The means of g², RMS(θ) and RMS(U) are summed in double where torch's reductions run in
float32, so the result equals the reference to about 1e-7 relative, not bit for bit.
Parameters that are not matrices (vectors, scalars, stacks of matrices) take the
reference step.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ...codecs import decode_encoded, store_encoded
from ...rules.adafactor import adafactor_step_scalars, factored_lerp
from ..reference import reference_param_step
from .factored import grad_sq_means
from .jobs import F_GRAD_CHECKED, make_job

# The states the kernel streams (row/col statistics are read through job.row / job.col).
KERNEL_STATES = ("exp_avg",)


def param_step(lib, rule, hyper: Mapping[str, Any], param: torch.Tensor, state: dict,
                         n_threads: int) -> None:
    if param.dim() != 2 or param.numel() == 0:
        reference_param_step(rule, hyper, param, state)
        return
    rows, cols = param.shape
    beta1, weight_decay = hyper["beta1"], hyper["weight_decay"]
    # c = [max(mean R, ε₁), ε₁², clip divisor, αₜ, 1-ηλ (1: none), β₁, 1-β₁, has momentum, maximize];
    # c[0] is first the ε₁ that pass 1 adds to g²: none in this convention.
    coeffs = (0.0, 0.0, 1.0, 0.0, 1 - hyper["lr"] * weight_decay if weight_decay != 0 else 1.0,
              beta1 or 0.0, 1 - (beta1 or 0.0), 1.0 if beta1 is not None else 0.0,
              1.0 if hyper["maximize"] else 0.0)
    moments = [state["exp_avg"]] if beta1 is not None else []
    job = make_job(rule, coeffs, param.detach(), param.grad, moments,
                   state["step"], state["nonfinite_skips"], n_threads, flags=F_GRAD_CHECKED)
    job.cols = cols
    means = grad_sq_means(lib, job, rows, cols, param_rms=True)  # g² is even in g: maximize does not matter
    if means is None:
        state["nonfinite_skips"] += 1  # skip: parameter and states stay as they were
        return
    grad_sq_row, grad_sq_col, rms_param = means
    # The rule's own functions from here (rules/adafactor.py), on the small vectors.
    eps1, new_weight, alpha = adafactor_step_scalars(rms_param, step=int(state["step"].item()) + 1, lr=hyper["lr"],
                                                     beta2_decay=hyper["beta2_decay"], eps=hyper["eps"])
    row_var, col_var, row_mean = factored_lerp(decode_encoded(state["row_var"]), decode_encoded(state["col_var"]),
                                               grad_sq_row.reshape(rows, 1), grad_sq_col.reshape(1, cols),
                                               new_weight, eps1)
    row_var, col_var = row_var.contiguous(), col_var.contiguous()
    job.row, job.col = row_var.data_ptr(), col_var.data_ptr()
    job.c[0], job.c[1], job.c[3] = float(row_mean), eps1 * eps1, alpha
    rms_update = math.sqrt(lib.tf_adafactor_sumsq(job)) / math.sqrt(param.numel())
    job.c[2] = max(1.0, rms_update / hyper["d"])
    lib.tf_step(job)
    store_encoded(state["row_var"], row_var)
    store_encoded(state["col_var"], col_var)
