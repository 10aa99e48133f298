"""What one native step call receives: ctypes mirrors of ``TfJob`` / ``TfState`` in
csrc/abi.h, and what fills them (codec -> buffers and map tables, dtype -> id).

A job's coefficients are the rule's own ``Rule.scalars(hyper, step, lossy)`` in order
(double-precision Python scalars, cast to float32 as PyTorch casts a Python scalar), so
the tile rounds as the reference does; its tile id is the kernel's for
``rule.kernels.native_tile``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import torch

from ...codecs import Encoded, get_codec
from ...codecs.maps import QuantMap
from ...rules import Rule
from .bounds import checked_filler
from .build import tile_id
from .segments import TfSegments, segments_of

MAX_STATES = 4
N_COEFFS = 16

F_GRAD_CHECKED = 1  # must match abi.h

DTYPE_IDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


class TfState(ctypes.Structure):
    _fields_ = [("codec", ctypes.c_int32), ("block", ctypes.c_int32),
                ("data", ctypes.c_void_p), ("absmax", ctypes.c_void_p),
                ("values", ctypes.c_void_p), ("bucket_packed", ctypes.c_void_p), ("midpoints", ctypes.c_void_p),
                ("shift", ctypes.c_int32), ("top", ctypes.c_int32),
                ("n_buckets", ctypes.c_int32), ("n_values", ctypes.c_int32), ("segments", ctypes.c_void_p)]


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


# ---- codecs: name -> how its buffers and map tables fill a TfState -----------------
@dataclass(frozen=True)
class MapTables:
    """A QuantMap's encode/decode tables as contiguous CPU tensors (kept alive here)."""

    values: torch.Tensor
    bucket_packed: torch.Tensor  # int32 per bucket: lowest code | (midpoint key - bucket's lowest key) << 8
    midpoints: torch.Tensor  # the map's midpoints, then +inf (as many as values)
    shift: int
    top: int
    segments: TfSegments | None  # the arithmetic encoder's tables (segments.py), when the map has them


def _monotone_key(x: torch.Tensor) -> torch.Tensor:
    bits = x.view(torch.int32).long()
    magnitude = bits & 0x7FFFFFFF
    return torch.where(bits < 0, -magnitude, magnitude)


@lru_cache(maxsize=None)
def map_tables(qmap: QuantMap) -> MapTables:
    """QuantMap's bucket table (maps.py: bucket = (key >> shift) + top + 1, its lowest code
    and the one midpoint that can lie in it) packed into one int32 per bucket: the code in
    bits 0-7, the midpoint's key offset from the bucket's lowest key in bits 8+ (2^shift
    when the midpoint lies beyond the bucket, +inf padding included): y > midpoint is then
    an integer comparison of y's offset inside its bucket (csrc/quant.h)."""
    shift = qmap._shift
    top = 0x3F800000 >> shift
    low = qmap._bucket_low.long()
    lowest_key = torch.arange(-top - 1, top + 1, dtype=torch.int64) << shift
    mid_offset = (_monotone_key(qmap._padded_midpoints[low].contiguous()) - lowest_key).clamp(0, 1 << shift)
    packed = low | (mid_offset << 8)
    seg = segments_of(qmap)
    return MapTables(qmap.values.contiguous(), packed.to(torch.int32).contiguous(),
                     qmap._padded_midpoints.contiguous(), shift, top, None if seg is None else seg.struct())


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
        st.bucket_packed = tables.bucket_packed.data_ptr()
        st.midpoints = tables.midpoints.data_ptr()
        st.shift, st.top, st.n_buckets = tables.shift, tables.top, tables.bucket_packed.numel()
        st.n_values = tables.values.numel()
        st.segments = ctypes.addressof(tables.segments) if tables.segments is not None else None
    return fill


# Codec name -> (buffer dtypes it must have, filler). Ids must match CodecId in the C++.
CODEC_FILLERS: dict[str, tuple[dict[str, torch.dtype], Callable[[TfState, Encoded], None]]] = {
    "fp32": ({"values": torch.float32}, _fill_plain(0)),
    "bf16": ({"values": torch.bfloat16}, _fill_plain(1)),
    "8bit": ({"codes": torch.uint8, "absmax": torch.float32}, _fill_blockwise(2)),
    "4bit": ({"codes": torch.uint8, "absmax": torch.float32}, _fill_blockwise(3)),
}
CODEC_FILLERS = {name: (dtypes, checked_filler(fill)) for name, (dtypes, fill) in CODEC_FILLERS.items()}


def grad_limit_bits(limit: float) -> int:
    """float32 bit pattern of a rule's gradient limit (a power of two)."""
    return int(torch.tensor(limit, dtype=torch.float32).view(torch.int32))


def make_job(rule: Rule, coeffs: Sequence[float], param: torch.Tensor, grad: torch.Tensor, states: list[Encoded],
             step: torch.Tensor, skips: torch.Tensor, n_threads: int, flags: int = 0) -> TfJob:
    """The job of one parameter's step through ``rule``'s native tile, with ``coeffs`` as c[]."""
    if len(coeffs) > N_COEFFS or len(states) > MAX_STATES:
        raise ValueError(f"rule {rule.name!r}: {len(coeffs)} scalars and {len(states)} states; the native kernel "
                         f"takes at most {N_COEFFS} and {MAX_STATES}")
    job = TfJob()
    job.tile, job.flags = tile_id(rule.kernels.native_tile), flags
    job.param_dtype, job.grad_dtype = DTYPE_IDS[param.dtype], DTYPE_IDS[grad.dtype]
    job.n_states, job.n_threads = len(states), n_threads
    job.grad_limit_bits = grad_limit_bits(rule.grad_limit)
    job.numel = param.numel()
    job.param, job.grad = param.data_ptr(), grad.data_ptr()
    job.step, job.skips = step.data_ptr(), skips.data_ptr()
    job.c[:len(coeffs)] = [float(c) for c in coeffs]
    for slot, enc in zip(job.states, states):
        CODEC_FILLERS[enc.codec][1](slot, enc)
    return job
