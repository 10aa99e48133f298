"""What one native step call receives: ctypes mirrors of ``TfJob`` / ``TfState`` in
step_kernel.cpp, and the registries that fill them (rule -> coefficients, codec ->
buffers and map tables, dtype -> id).

Rule coefficients are computed here with the same Python expressions as the rule
functions in tightfit/rules (same double-precision scalars, cast to float32 like
PyTorch casts a Python scalar), so the kernel rounds as the reference does.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

import torch

from ...codecs import Encoded, get_codec
from ...codecs.maps import QuantMap
from ...rules.adamw import adam_moment_bound
from ...rules.base import GRAD_LIMIT_ELEMENTWISE, GRAD_LIMIT_REDUCING
from .bounds import checked_filler

MAX_STATES = 4
N_COEFFS = 16

F_GRAD_CHECKED = 1  # must match abi.h

DTYPE_IDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


class TfState(ctypes.Structure):
    _fields_ = [("codec", ctypes.c_int32), ("block", ctypes.c_int32),
                ("data", ctypes.c_void_p), ("absmax", ctypes.c_void_p),
                ("values", ctypes.c_void_p), ("bucket_mid", ctypes.c_void_p),
                ("bucket_low", ctypes.c_void_p),
                ("shift", ctypes.c_int32), ("top", ctypes.c_int32),
                ("n_buckets", ctypes.c_int32), ("pad_", ctypes.c_int32)]


class TfJob(ctypes.Structure):
    _fields_ = [("tile", ctypes.c_int32), ("flags", ctypes.c_int32),
                ("param_dtype", ctypes.c_int32), ("grad_dtype", ctypes.c_int32),
                ("n_states", ctypes.c_int32), ("n_threads", ctypes.c_int32),
                ("grad_limit_bits", ctypes.c_uint32), ("pad_", ctypes.c_int32),
                ("numel", ctypes.c_int64), ("param", ctypes.c_void_p), ("grad", ctypes.c_void_p),
                ("step", ctypes.c_void_p), ("skips", ctypes.c_void_p),
                ("c", ctypes.c_float * N_COEFFS), ("states", TfState * MAX_STATES),
                ("row", ctypes.c_void_p), ("col", ctypes.c_void_p), ("cols", ctypes.c_int64),
                ("row2", ctypes.c_void_p), ("col2", ctypes.c_void_p)]


# ---- rules: name -> (hyper, step) -> (tile, coefficients) ---------------
@dataclass(frozen=True)
class RuleCall:
    tile: str
    coeffs: tuple[float, ...]
    reducing: bool = False


def _adamw(h: Mapping[str, Any], step: int, lossy: bool, coupled_wd: float = 0.0) -> RuleCall:
    beta1, beta2 = h["betas"]
    lr, weight_decay = h["lr"], (0.0 if coupled_wd else h["weight_decay"])
    bias1 = 1 - beta1**step
    bias2_sqrt = (1 - beta2**step) ** 0.5
    return RuleCall("adam", (1 - beta1, beta2, 1 - beta2, 1 - lr * weight_decay,
                             bias2_sqrt, h["eps"], lr / bias1, coupled_wd,
                             adam_moment_bound(beta1, beta2, step) if lossy else math.inf,
                             float(bool(h["maximize"]))))


def _adam(h: Mapping[str, Any], step: int, lossy: bool) -> RuleCall:
    if h["decoupled_weight_decay"]:
        return _adamw(h, step, lossy)
    return _adamw(h, step, lossy, coupled_wd=h["weight_decay"])


def _lion(h: Mapping[str, Any], step: int, lossy: bool) -> RuleCall:
    beta1, beta2 = h["betas"]
    lr = h["lr"]
    return RuleCall("lion", (beta1, 1 - beta1, beta2, 1 - beta2, 1 - lr * h["weight_decay"], lr))


def _sgd(h: Mapping[str, Any], step: int, lossy: bool) -> RuleCall:
    return RuleCall("sgd", (h["lr"], h["momentum"], 1 - h["dampening"], h["weight_decay"],
                            float(bool(h["maximize"])), float(bool(h["nesterov"])), float(step == 1)))


def _sophiag(h: Mapping[str, Any], step: int, lossy: bool) -> RuleCall:
    beta1 = h["betas"][0]
    lr = h["lr"]
    return RuleCall("sophiag", (1 - lr * h["weight_decay"], beta1, 1 - beta1, h["rho"] * h["bs"], lr,
                                float(bool(h["maximize"]))))


RULE_CALLS: dict[str, Callable[[Mapping[str, Any], int, bool], RuleCall]] = {
    "adamw": _adamw, "adam": _adam, "lion": _lion, "sgd": _sgd, "sophiag": _sophiag,
}


# ---- codecs: name -> how its buffers and map tables fill a TfState -----------------
@dataclass(frozen=True)
class MapTables:
    """A QuantMap's encode/decode tables as contiguous CPU tensors (kept alive here)."""

    values: torch.Tensor
    bucket_mid: torch.Tensor  # padded_midpoints[bucket_low]: the one midpoint a bucket can hold
    bucket_low: torch.Tensor  # int32: the kernel gathers 32-bit lanes
    shift: int
    top: int


@lru_cache(maxsize=None)
def map_tables(qmap: QuantMap) -> MapTables:
    # The bucket layout is QuantMap's (maps.py): bucket = (key >> shift) + top + 1.
    top = 0x3F800000 >> qmap._shift
    low = qmap._bucket_low.long()
    return MapTables(qmap.values.contiguous(), qmap._padded_midpoints[low].contiguous(),
                     low.to(torch.int32).contiguous(), qmap._shift, top)


def _fill_plain(codec_id: int) -> Callable[[TfState, Encoded], None]:
    def fill(st: TfState, enc: Encoded) -> None:
        st.codec, st.block = codec_id, 0
        st.data = enc.buffers["values"].data_ptr()
    return fill


def _fill_blockwise(codec_id: int) -> Callable[[TfState, Encoded], None]:
    def fill(st: TfState, enc: Encoded) -> None:
        codec = get_codec(enc.codec)
        tables = map_tables(codec.quant_map(enc.kind))
        st.codec, st.block = codec_id, codec.block_size
        st.data = enc.buffers["codes"].data_ptr()
        st.absmax = enc.buffers["absmax"].data_ptr()
        st.values = tables.values.data_ptr()
        st.bucket_mid = tables.bucket_mid.data_ptr()
        st.bucket_low = tables.bucket_low.data_ptr()
        st.shift, st.top, st.n_buckets = tables.shift, tables.top, tables.bucket_low.numel()
    return fill


# Codec name -> (buffer dtypes it must have, filler). Ids must match CodecId in the C++.
CODEC_FILLERS: dict[str, tuple[dict[str, torch.dtype], Callable[[TfState, Encoded], None]]] = {
    "fp32": ({"values": torch.float32}, _fill_plain(0)),
    "bf16": ({"values": torch.bfloat16}, _fill_plain(1)),
    "8bit": ({"codes": torch.uint8, "absmax": torch.float32}, _fill_blockwise(2)),
    "4bit": ({"codes": torch.uint8, "absmax": torch.float32}, _fill_blockwise(3)),
}
CODEC_FILLERS = {name: (dtypes, checked_filler(fill)) for name, (dtypes, fill) in CODEC_FILLERS.items()}


def grad_limit_bits(reducing: bool) -> int:
    limit = GRAD_LIMIT_REDUCING if reducing else GRAD_LIMIT_ELEMENTWISE
    return int(torch.tensor(limit, dtype=torch.float32).view(torch.int32))


def make_job(call: RuleCall, param: torch.Tensor, grad: torch.Tensor, states: list[Encoded],
             step: torch.Tensor, skips: torch.Tensor, n_threads: int) -> TfJob:
    job = TfJob()
    from .build import tile_id
    job.tile, job.flags = tile_id(call.tile), 0
    job.param_dtype, job.grad_dtype = DTYPE_IDS[param.dtype], DTYPE_IDS[grad.dtype]
    job.n_states, job.n_threads = len(states), n_threads
    job.grad_limit_bits = grad_limit_bits(call.reducing)
    job.numel = param.numel()
    job.param, job.grad = param.data_ptr(), grad.data_ptr()
    job.step, job.skips = step.data_ptr(), skips.data_ptr()
    job.c[:len(call.coeffs)] = call.coeffs
    for slot, enc in zip(job.states, states):
        CODEC_FILLERS[enc.codec][1](slot, enc)
    return job
