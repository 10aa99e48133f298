"""Passes shared by the native drivers of the fairseq-style factored rules (CAME and
Adafactor's HF convention), whose update starts with rules/adafactor.py
``scaled_by_second_moment`` on a (rows x cols) matrix:

    S = g² + ε₁;  R, C ← EMAs (β₂) of mean₋₁(S), mean₋₂(S)
    u = g · (R/mean R)^-½ ⊗ C^-½;  û = u / max(1, RMS(u)/clip)

step_kernel.cpp reduces what is full-size (row/column sums of S and Σu², in double,
deterministic whatever the thread count); the small vectors in between go through the
rule's own functions (factored_ema, factored_rsqrt_factors, rms_clip_divisor). The first
pass also checks the gradient: None means a NaN/Inf and the caller skips the step.
Sums in double instead of torch's float32 reductions are the only difference from the
reference: statistics agree to about 1e-7 relative, not bit for bit.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ...codecs import Encoded, get_codec
from ...rules.adafactor import factored_ema, factored_rsqrt_factors, rms_clip_divisor
from .jobs import TfJob


def decode_small(enc: Encoded) -> torch.Tensor:
    return get_codec(enc.codec).decode(enc)


def store_small(enc: Encoded, value: torch.Tensor) -> None:
    get_codec(enc.codec).store(enc, value)


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


def second_moment(lib, job: TfJob, state: dict, beta2: float, rows: int, cols: int):
    """None for a non-finite gradient, else (new R, new C, their factors): the factors are
    in job.row/col, and job.c[1] holds the clip divisor max(1, RMS(u)/clip) once
    ``clip_divisor`` ran. job.c[0] must hold ε₁."""
    row_mean, col_mean, finite = row_col_means(lib.tf_factored_stats, job, rows, cols)
    if not finite:
        return None
    row, col = factored_ema(decode_small(state["exp_avg_sq_row"]), decode_small(state["exp_avg_sq_col"]),
                            row_mean, col_mean, beta2)
    return row, col, factors_into(job, row, col)


def clip_divisor(lib, job: TfJob, clip_threshold: float) -> float:
    """max(1, RMS(u)/clip) from the kernel's Σu², through the rule's float32 arithmetic
    (RMS = ‖u‖ / √n as _rms evaluates it)."""
    norm = torch.tensor(math.sqrt(lib.tf_factored_sumsq(job)), dtype=torch.float32)
    return float(rms_clip_divisor(norm / math.sqrt(job.numel), clip_threshold))
