"""CAME (rules/came.py) on the native CPU path, for matrices.

Four passes over the matrix instead of about twenty PyTorch passes with full-size
temporaries (see came_update for the math):

1. tf_factored_stats: row/column sums of S = g² + ε₁ (and the finite check of g);
   R, C and their factors from the rule's functions (factored.py).
2. tf_factored_sumsq: Σu², so û = u / max(1, RMS(u)/clip).
3. tf_came_instability: decode m, m' = β₁m + (1 − β₁)û, row/column sums of the
   instability (û − m')² + ε₂; nothing is written. R', C' and their factors follow
   (factored_ema, factored_rsqrt_factors, β₃).
4. tf_step (tile csrc/rules/came.h): recompute m' from g and the old m, θ ← θ − λη·θ − η·(R'^-½ ⊗ C'^-½)·m',
   and only now encode m'.

The reference takes Δ from the unquantized m', which pass 3 cannot keep unless it writes
a full-size float32 scratch (4 bytes per element of the largest matrix, more memory than
an 8-bit m itself). Recomputing m' in pass 4 from the still-stored old m costs one more
decode of m per step and no memory, and gives the identical float m' (same operations);
it was also no slower (measured in docs/benchmarks.md, "CAME: recompute m' or keep a scratch").
Sums are in double where torch reduces in float32, so params and states agree with the
reference to about 1e-7 relative on small matrices; on large ones (3e5 elements) the
reference's own float32 norm and means drift ~1e-6 from the exact values, these sums do
not. An 8/4-bit code (or bf16 value) of m' can land on the neighbouring one where m' sits
at a rounding midpoint.

Parameters that are not matrices (vectors, scalars, stacks of matrices ≥ 3-D) take the
reference step with native codec passes (impl "native_codec").
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ...codecs import decode_encoded, store_encoded
from ...rules.adafactor import factored_ema
from ..reference import reference_param_step
from .codec_passes import native_decode, native_store
from .factored import (clip_divisor, factors_into, grad_sq_means, row_col_means, second_moment,
                       store_second_moment)
from .jobs import F_GRAD_CHECKED, make_job

# The states the kernel streams (the statistics are read through job.row/col/row2/col2).
KERNEL_STATES = ("exp_avg",)


def param_step(lib, rule, hyper: Mapping[str, Any], param: torch.Tensor, state: dict,
                    n_threads: int) -> None:
    if param.dim() != 2 or param.numel() == 0:
        reference_param_step(rule, hyper, param, state, decode=native_decode, store=native_store)
        return
    rows, cols = param.shape
    beta1, beta2, beta3 = hyper["betas"]
    eps1, eps2 = hyper["eps"]
    lr, weight_decay = hyper["lr"], hyper["weight_decay"]
    # c[1], the clip divisor, is filled in after pass 2.
    coeffs = (eps1, 1.0, beta1, 1 - beta1, eps2, weight_decay * lr, lr, 1.0 if weight_decay != 0 else 0.0)
    job = make_job(rule, coeffs, param.detach(), param.grad, [state["exp_avg"]],
                   state["step"], state["nonfinite_skips"], n_threads, flags=F_GRAD_CHECKED)
    job.cols = cols
    means = grad_sq_means(lib, job, rows, cols)
    if means is None:
        state["nonfinite_skips"] += 1  # skip: parameter and states stay as they were
        return
    sq_row, sq_col, _factors = second_moment(job, state, means[0], means[1], beta2)
    job.c[1] = clip_divisor(lib, job, hyper["clip_threshold"])
    res_row_mean, res_col_mean, _ = row_col_means(lib.tf_came_instability, job, rows, cols)
    res_row, res_col = factored_ema(decode_encoded(state["exp_avg_res_row"]), decode_encoded(state["exp_avg_res_col"]),
                                    res_row_mean, res_col_mean, beta3)
    _confidence = factors_into(job, res_row, res_col, second=True)
    lib.tf_step(job)
    store_second_moment(state, sq_row, sq_col)
    store_encoded(state["exp_avg_res_row"], res_row)
    store_encoded(state["exp_avg_res_col"], res_col)
