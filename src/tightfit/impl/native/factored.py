"""Passes shared by the native drivers of the fairseq-style factored rules (CAME and
Adafactor's HF convention; grad_sq_means also serves the torch convention, with ε₁ = 0),
whose update starts with rules/adafactor.py
``scaled_by_second_moment`` on a (rows x cols) matrix:

    S = g² + ε₁;  R, C ← EMAs (β₂) of mean₋₁(S), mean₋₂(S)
    u = g · (R/mean R)^-½ ⊗ C^-½;  û = u / max(1, RMS(u)/clip)

csrc/reductions.cpp reduces what is full-size (row/column sums of S and Σu², in double,
deterministic whatever the thread count); the small vectors in between go through the
rule's own functions (factored_ema, factored_rsqrt_factors, rms_clip_divisor). The first
pass also checks the gradient (None means a NaN/Inf: the caller skips the step) and can
sum θ² for Adafactor's RMS(θ).
Sums in double instead of torch's float32 reductions are the only difference from the
reference: statistics agree to about 1e-7 relative, not bit for bit.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ...codecs import decode_encoded, store_encoded
from ...rules.adafactor import factored_ema, factored_rsqrt_factors, rms_clip_divisor
from .jobs import TfJob


def row_col_means(reduce: Callable, job: TfJob, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean₋₁, mean₋₂ as float32, the pass's return value) of a row/column-sum pass."""
    row_sum = torch.zeros(rows, dtype=torch.float64)
    col_sum = torch.zeros(cols, dtype=torch.float64)
    result = reduce(job, row_sum.data_ptr(), col_sum.data_ptr())
    return (row_sum / cols).float(), (col_sum / rows).float(), result


def factors_into(job: TfJob, row: torch.Tensor, col: torch.Tensor, second: bool = False) -> tuple[torch.Tensor, ...]:
    """(R/mean R)^-½ and C^-½ as contiguous vectors, pointed at by job.row/col (or
    row2/col2); the caller keeps the returned tensors alive while the job runs."""
    row_factor, col_factor = (f.reshape(-1).contiguous() for f in factored_rsqrt_factors(row, col))
    if second:
        job.row2, job.col2 = row_factor.data_ptr(), col_factor.data_ptr()
    else:
        job.row, job.col = row_factor.data_ptr(), col_factor.data_ptr()
    return row_factor, col_factor


def rms_of_sumsq(sumsq: float, numel: int) -> torch.Tensor:
    """RMS = ‖x‖ / √n from a kernel's Σx², with the float32 division of the rules' _rms."""
    return torch.tensor(math.sqrt(sumsq), dtype=torch.float32) / math.sqrt(numel)


def grad_sq_means(lib, job: TfJob, rows: int, cols: int, param_rms: bool = False):
    """Pass 1 (job.c[0] = ε₁, 0 for S = g²): None for a non-finite gradient, else (mean₋₁(S), mean₋₂(S),
    RMS(θ) as a float or None unless ``param_rms``)."""
    param_sumsq = torch.zeros((), dtype=torch.float64)
    target = param_sumsq.data_ptr() if param_rms else None
    row_mean, col_mean, finite = row_col_means(lambda j, r, c: lib.tf_factored_stats(j, r, c, target), job, rows, cols)
    if not finite:
        return None
    return row_mean, col_mean, float(rms_of_sumsq(param_sumsq.item(), job.numel)) if param_rms else None


def second_moment(job: TfJob, state: dict, row_mean: torch.Tensor, col_mean: torch.Tensor, beta2: float):
    """(new R, new C, their factors) from pass 1's means; the factors are in job.row/col."""
    row, col = factored_ema(decode_encoded(state["exp_avg_sq_row"]), decode_encoded(state["exp_avg_sq_col"]),
                            row_mean, col_mean, beta2)
    return row, col, factors_into(job, row, col)


def clip_divisor(lib, job: TfJob, clip_threshold: float) -> float:
    """Pass 2: max(1, RMS(u)/clip) from the kernel's Σu², for job.c[1]."""
    return float(rms_clip_divisor(rms_of_sumsq(lib.tf_factored_sumsq(job), job.numel), clip_threshold))


def store_second_moment(state: dict, row: torch.Tensor, col: torch.Tensor) -> None:
    store_encoded(state["exp_avg_sq_row"], row)
    store_encoded(state["exp_avg_sq_col"], col)
