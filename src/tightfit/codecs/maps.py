"""Quantization maps: sorted tables of the values a code can stand for.

A map turns a normalized value x in [-1, 1] into the index of its nearest entry
(round to nearest; a tie at an exact midpoint goes to the lower entry). Two encoders
give the same codes:

* ``QuantMap.encode_reference`` -- ``torch.bucketize`` over the midpoints: the definition.
* ``QuantMap.encode_fast`` -- a bucket table indexed by the high bits of the float's
  bit pattern, then one comparison with the single midpoint that can fall inside the
  bucket.  Pure elementwise ops and two gathers, so ``torch.compile`` fuses it into
  the optimizer step (``bucketize`` does not vectorize).  The table is checked at build
  time: every bucket holds at most one midpoint, otherwise fewer bits are dropped.

Maps (Dettmers 2015 arXiv 1511.04561, Dettmers et al. 2021
arXiv 2110.02861, Li et al. 2023 arXiv 2309.01507):

* ``dynamic8_signed`` / ``dynamic8_unsigned`` -- 8-bit dynamic-exponent maps.
* ``dynamic8_squared`` -- the squares of ``dynamic8_unsigned``, for second moments: a
  second moment v stored on it is √v stored on the dynamic map (see below).
* ``dynamic4_squared`` -- the squares of the 4-bit unsigned dynamic map (0, 1.06e-5 …
  1), for 4-bit second moments, likewise.
* ``dynamic4_signed`` -- 4-bit dynamic-exponent map for first moments.
* ``linear4_unsigned`` -- {k/16 : k = 1..16}, zero-point free: torchao's and Li et al.'s
  4-bit second-moment map, tightfit's until format 2 (read for older states).

8-bit second moments use ``dynamic8_squared``. The update divides by √v, so what must be
precise is √v: quantizing v on the dynamic map spends codes on 7 decades of v (3.5 of
√v) and leaves 1-2 codes per decade at the bottom, where an element whose gradient is
1e-3 of its block's largest lives; the squared map gives 13 decades of v with the
dynamic map's resolution applied to √v. On a quadratic whose curvatures span 12 decades
inside every block, 8-bit AdamW ends at 0.45x fp32's loss with it and 43x with the
plain map (benchmarks/quality_stress.py; docs/numerics.md). bitsandbytes and torchao
keep v on ``dynamic8_unsigned``; states stored so (format 1) are converted on load.
4-bit second moments likewise use ``dynamic4_squared`` instead of the linear map (5
decades of v instead of 1.2); measured in docs/numerics.md.

Second-moment maps with a 0 entry round with ``exact_zero``: only an exact 0 takes code
0, and a positive value below the smallest positive entry rounds up to it instead of
down to 0, so a second moment that was ever positive never decodes to 0 while its first
moment is still alive (the zero-point problem, Li et al. 2023). Such tiny values are
stored too large: that element steps less than fp32 Adam would, never more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

_FLOAT_MAGNITUDE = 0x7FFFFFFF
_ONE_BITS = 0x3F800000  # bit pattern of 1.0f


def dynamic_exponent_values(signed: bool, exponent_bits: int, total_bits: int) -> list[float]:
    """Values of a dynamic-exponent map (the bitsandbytes / torchao construction).

    For exponent index i = 0 .. E-1 (E = ``exponent_bits``), the interval [0.1, 1] is
    split into k_i equal parts with k_i = 2^(i + F) for signed maps and 2^(i + F + 1)
    for unsigned maps (F = total_bits - 1 - E), the k_i midpoints are scaled by
    10^(i - (E - 1)), and signed maps add the negatives. 0 and +1.0 complete the map.
    Arithmetic follows the anchors (float32 linspace, float64 scaling) so that codes
    stay compatible with theirs.
    """
    fraction_bits = total_bits - 1 - exponent_bits
    if fraction_bits < 0:
        raise ValueError(f"exponent_bits={exponent_bits} leaves no room in total_bits={total_bits}")
    values: list[float] = [0.0, 1.0]
    for i in range(exponent_bits):
        parts = 2 ** (i + fraction_bits + (0 if signed else 1))
        bounds = torch.linspace(0.1, 1.0, parts + 1, dtype=torch.float32)
        means = ((bounds[:-1] + bounds[1:]) / 2.0).tolist()
        scale = 10.0 ** (i - (exponent_bits - 1))
        values += [scale * m for m in means]
        if signed:
            values += [-scale * m for m in means]
    if len(values) != 2**total_bits:
        raise ValueError(f"dynamic map has {len(values)} values, expected {2 ** total_bits}")
    return sorted(values)


def _monotone_key(x: torch.Tensor) -> torch.Tensor:
    """Integer key of float32 ``x`` that orders like ``x`` (sign * magnitude bits)."""
    bits = x.view(torch.int32)
    magnitude = bits & _FLOAT_MAGNITUDE
    return torch.where(bits < 0, -magnitude, magnitude)


@dataclass(frozen=True, eq=False)
class QuantMap:
    """A sorted table of representable values plus the tables its encoders need."""

    name: str
    values: torch.Tensor  # float32, sorted ascending
    # Only an exact 0 encodes to the 0 entry (which must be values[0]); see the module doc.
    exact_zero: bool = False
    midpoints: torch.Tensor = field(init=False)  # float32, len(values) - 1
    _padded_midpoints: torch.Tensor = field(init=False)  # + [inf], indexed by bucket_low
    _bucket_low: torch.Tensor = field(init=False)  # uint8 code of each bucket's lowest float
    _shift: int = field(init=False)

    def __post_init__(self) -> None:
        v = self.values
        if v.dtype != torch.float32 or v.dim() != 1 or not bool((v[1:] > v[:-1]).all()):
            raise ValueError(f"map {self.name!r} must be a strictly increasing float32 vector")
        if len(v) > 256:
            raise ValueError(f"map {self.name!r} has {len(v)} values; codes are uint8 (at most 256)")
        mids = (v[:-1] + v[1:]) / 2
        if self.exact_zero:
            if float(v[0]) != 0.0:
                raise ValueError(f"map {self.name!r}: exact_zero needs 0 as its smallest value")
            mids[0] = 0.0  # x > 0 lies above the first midpoint: code >= 1
        object.__setattr__(self, "midpoints", mids)
        object.__setattr__(self, "_padded_midpoints", torch.cat([mids, mids.new_tensor([float("inf")])]))
        shift, low = self._build_buckets(mids)
        object.__setattr__(self, "_shift", shift)
        object.__setattr__(self, "_bucket_low", low)

    @property
    def size(self) -> int:
        return len(self.values)

    @staticmethod
    def _build_buckets(mids: torch.Tensor) -> tuple[int, torch.Tensor]:
        # Try coarse buckets first (small table); accept the first where no bucket
        # holds two midpoints, so one comparison decides between two codes.
        for shift in range(18, 10, -1):
            top = _ONE_BITS >> shift
            buckets = torch.arange(-top - 1, top + 1, dtype=torch.int64)
            keys = buckets << shift  # lowest key of each bucket
            bits = torch.where(keys < 0, (-keys) | 0x80000000, keys)
            bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
            lowest = bits.view(torch.float32)
            low = torch.bucketize(lowest, mids)
            if int((low[1:] - low[:-1]).max()) <= 1:
                return shift, low.to(torch.uint8)
        raise ValueError("map midpoints too dense for a bucket table")

    def encode_reference(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 index of the nearest value to each element of ``x`` (x in [-1, 1])."""
        return torch.bucketize(x, self.midpoints.to(x.device)).to(torch.uint8)

    def encode_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Same codes as ``encode_reference`` for float32 ``x`` in [-1, 1], gather-based."""
        top = _ONE_BITS >> self._shift
        bucket = (_monotone_key(x) >> self._shift) + (top + 1)
        low = self._bucket_low.to(x.device)[bucket].long()
        above = x > self._padded_midpoints.to(x.device)[low]
        return (low + above.long()).to(torch.uint8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.values.to(codes.device)[codes.long()]


@lru_cache(maxsize=None)
def get_map(name: str) -> QuantMap:
    """The named map (built once)."""
    builders = {  # name -> (values, exact_zero)
        "dynamic8_signed": lambda: (dynamic_exponent_values(True, 7, 8), False),
        "dynamic8_unsigned": lambda: (dynamic_exponent_values(False, 7, 8), True),
        "dynamic8_squared": lambda: ([v * v for v in dynamic_exponent_values(False, 7, 8)], True),
        "dynamic4_signed": lambda: (dynamic_exponent_values(True, 3, 4), False),
        "dynamic4_squared": lambda: ([v * v for v in dynamic_exponent_values(False, 3, 4)], True),
        "linear4_unsigned": lambda: ([k / 16 for k in range(1, 17)], False),
    }
    if name not in builders:
        raise ValueError(f"unknown quantization map {name!r}; known: {sorted(builders)}")
    # built once per process and cached: always as real tensors, even when first asked for
    # under a FakeTensorMode (the planner's simulation), which would otherwise cache fakes
    with unset_fake_temporarily():
        values, exact_zero = builders[name]()
        return QuantMap(name, torch.tensor(values, dtype=torch.float32), exact_zero=exact_zero)
