"""Adafactor (torch.optim.Adafactor convention, rules/adafactor.py) on the native CPU path.

The row and column statistics are updated in PyTorch with the rule's own operations
(two reductions of g², small results). The elementwise rest -- U = g / √V̂ from the
statistics, RMS(U) clipping, αₜ scaling, the optional first moment through its codec and
the parameter update -- runs in step_kernel.cpp in two passes over the matrix (sum of
U², then the update), instead of about ten PyTorch passes with full-size temporaries.
Only RMS(U) is summed in another order (double instead of torch's float32 norm), so the
result equals the reference to about 1e-7 relative, not bit for bit. Parameters that are
not matrices (vectors, scalars, stacks of matrices) take the reference step.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ...codecs import get_codec
from ...rules.adafactor import adafactor_step_scalars, factored_variance
from ..base import all_finite
from ..reference import reference_param_step
from .jobs import F_MAXIMIZE, R_ADAFACTOR, RuleCall, make_job

# The states the kernel streams (row/col statistics are read through job.row / job.col).
KERNEL_STATES = ("exp_avg",)


def adafactor_param_step(lib, rule, hyper: Mapping[str, Any], param: torch.Tensor, state: dict,
                         n_threads: int) -> None:
    if param.dim() != 2:
        reference_param_step(rule, hyper, param, state)
        return
    grad = param.grad
    if not all_finite(grad):
        state["nonfinite_skips"] += 1
        return
    step = int(state["step"].item()) + 1
    # The rule's own functions up to the statistics (rules/adafactor.py).
    eps1, new_weight, alpha = adafactor_step_scalars(param.detach().float(), step=step, lr=hyper["lr"],
                                                     beta2_decay=hyper["beta2_decay"], eps=hyper["eps"])
    g = -grad.float() if hyper["maximize"] else grad.float()
    row_enc, col_enc = state["row_var"], state["col_var"]
    row_var, col_var, row_mean = factored_variance(g, get_codec(row_enc.codec).decode(row_enc),
                                                   get_codec(col_enc.codec).decode(col_enc), new_weight, eps1)
    row_var, col_var = row_var.contiguous(), col_var.contiguous()

    beta1, weight_decay = hyper["beta1"], hyper["weight_decay"]
    coeffs = [float(row_mean), eps1 * eps1, 1.0, alpha, 1 - hyper["lr"] * weight_decay if weight_decay != 0 else 1.0,
              beta1 or 0.0, 1 - (beta1 or 0.0), 1.0 if beta1 is not None else 0.0]
    call = RuleCall(R_ADAFACTOR, F_MAXIMIZE if hyper["maximize"] else 0, tuple(coeffs))
    moments = [state["exp_avg"]] if beta1 is not None else []
    job = make_job(call, param.detach(), grad, moments, state["step"], state["nonfinite_skips"], n_threads)
    job.row, job.col, job.cols = row_var.data_ptr(), col_var.data_ptr(), param.shape[-1]
    rms_update = math.sqrt(lib.tf_adafactor_sumsq(job)) / math.sqrt(param.numel())
    job.c[2] = max(1.0, rms_update / hyper["d"])
    lib.tf_step(job)
    get_codec(row_enc.codec).store(row_enc, row_var)
    get_codec(col_enc.codec).store(col_enc, col_var)
