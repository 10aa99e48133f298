"""Segment tables: the nearest code of an 8-bit map by arithmetic instead of a table gather.

The dynamic maps are piecewise regular: between a few threshold midpoints (one per
decade boundary) the midpoints form an arithmetic progression (signed / unsigned maps)
or, for the squared maps, one in sqrt(m - c). For t = |y| the encoder (csrc/quant_avx512.h,
``SegmentTable``) finds t's segment from its binade (or pair of binades: a 32-entry table)
and at most one threshold comparison, then the number of the segment's interior midpoints
below t as the integer part of u = t * d - b (linear) or sqrt(max(t - c, 0)) * d - b
(squared; one fused multiply-subtract): the k-th interior midpoint sits at u = k. A lane is sent to the exact path
(division, bucket table) when u lies within U_TOLERANCE of an integer or t within
THRESHOLD_ULPS of the threshold it was compared with; everywhere else the code equals
the reference's.

Why that is exact: every step of u is a correctly rounded, monotone float32 operation, so
u is monotone in t. ``_fit`` measures, by emulating those operations bit for bit, how far
u(m_k) lies from k at every interior midpoint m_k (the deviation), and how far u moves
there when t carries the encoder's reciprocal error (< 2^-21 relative, plus an allowance
for u's own rounding: the drift); it accepts a map only when deviation + drift <
U_TOLERANCE / 2 (half as margin). Then an unflagged lane is farther than that from every
integer, so it lies on the same side of each midpoint as the exactly divided value (the
threshold comparison likewise: 2^-21 relative is under 8 ulps). ``check`` replays the
encoder on every midpoint, its float neighbours and random points against
``torch.bucketize``. Maps that do not fit (more than
16 segments, two thresholds in one binade, a loose progression) get no tables and keep
the bucket-table encoder.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ...codecs.maps import QuantMap

MAX_SEGMENTS = 16
BINADES = 32  # table entries: exponent field >> binade_shift, the top 32 values (t <= 1); smaller t share entry 0
U_TOLERANCE = 2.0 ** -9
THRESHOLD_ULPS = 16  # the reciprocal's error is < 2^-21 relative: under 8 ulps
LINEAR, SQUARED = 0, 1


class TfSegments(ctypes.Structure):
    """Mirror of ``TfSegments`` in csrc/abi.h."""

    _fields_ = [("kind", ctypes.c_int32), ("neg_base", ctypes.c_int32), ("mirrored", ctypes.c_int32),
                ("binade_shift", ctypes.c_int32), ("binade_segment", ctypes.c_int32 * BINADES),
                ("upper", ctypes.c_float * MAX_SEGMENTS),
                ("d", ctypes.c_float * MAX_SEGMENTS), ("b", ctypes.c_float * MAX_SEGMENTS),
                ("c", ctypes.c_float * MAX_SEGMENTS), ("base", ctypes.c_int32 * MAX_SEGMENTS),
                ("n", ctypes.c_int32 * MAX_SEGMENTS)]


@dataclass(frozen=True)
class Segments:
    kind: int
    neg_base: int  # code of +0: the number of negative midpoints
    mirrored: int  # the negative midpoints are minus the lowest `mirrored` nonnegative ones
    binade_shift: int  # 0: one table entry per binade, 1: per pair of binades
    binade_segment: np.ndarray  # int32[BINADES]
    upper: np.ndarray  # float32[16]: segment j covers (upper[j-1], upper[j]]
    d: np.ndarray
    b: np.ndarray
    c: np.ndarray
    base: np.ndarray  # int32[16]: nonnegative midpoints at or below segment j's lower threshold
    n: np.ndarray  # int32[16]: its interior midpoints

    def struct(self) -> TfSegments:
        s = TfSegments()
        s.kind, s.neg_base, s.mirrored, s.binade_shift = self.kind, self.neg_base, self.mirrored, self.binade_shift
        s.binade_segment[:] = self.binade_segment.tolist()
        for name in ("upper", "d", "b", "c", "base", "n"):
            getattr(s, name)[:] = getattr(self, name).tolist()
        return s


f32 = np.float32


def _u(kind: int, t: np.ndarray, d, b, c) -> np.ndarray:
    """u of float32 t, rounded as the encoder rounds (one float32 operation at a time)."""
    t = t.astype(f32)
    if kind == SQUARED:
        t = np.sqrt(np.maximum(t - c.astype(f32), f32(0)))
    # one fused multiply-subtract: t * d exact in float64 (24 x 24 bits), one rounding there and one
    # to float32 (a double rounding can differ from the fused one by an ulp of u; the drift allows 8)
    return (t.astype(np.float64) * d.astype(f32) - b.astype(f32)).astype(f32)


def _binade(bits: np.ndarray, shift: int) -> np.ndarray:
    """Table entry of t's bit pattern: (exponent field >> shift) counted from the 32nd below 1's."""
    return np.maximum((bits >> (23 + shift)) - ((127 >> shift) - BINADES + 1), 0)


def encode(seg: Segments, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, flagged) of float32 y as the vector encoder computes them (flagged: exact path)."""
    y = y.astype(f32)
    t = np.abs(y)
    seg0 = seg.binade_segment[_binade(t.view(np.int32), seg.binade_shift)]
    up = seg.upper[seg0]
    j = seg0 + (t > up)
    near = np.abs(t.view(np.int32).astype(np.int64) - up.view(np.int32)) <= THRESHOLD_ULPS
    u = _u(seg.kind, t, seg.d[j], seg.b[j], seg.c[j])
    near |= np.abs(u - np.rint(u)) < f32(U_TOLERANCE)
    count = seg.base[j] + np.minimum(np.trunc(u).astype(np.int64), seg.n[j])  # u > -1 (checked)
    codes = np.where(np.signbit(y), seg.neg_base - np.minimum(count, seg.mirrored), seg.neg_base + count)
    return codes.astype(np.int64), near


def _partition(mids: np.ndarray, roots, step_of: np.ndarray) -> list[tuple[float, list[int]]] | None:
    """Nonnegative midpoints -> [(lower threshold, interior indexes)]; a run continues while
    the step between the values either side (step_of) and the spacing in root space
    (roots(i): the midpoint's position) stay the same."""
    segments: list[tuple[float, list[int]]] = [(-np.inf, [])]  # segment 0: t <= mids[0]
    segments.append((float(mids[0]), []))
    for i in range(1, len(mids)):
        lower, interior = segments[-1]
        if not interior:
            fits = True
        else:
            first = step_of[interior[0]]
            fits = abs(step_of[i] - first) <= 1e-3 * first
            if fits and len(interior) >= 2:
                step = roots(interior[-1]) - roots(interior[-2])
                fits = abs((roots(i) - roots(interior[-1])) - step) <= 1e-3 * abs(step)
        if fits:
            interior.append(i)
        else:
            segments.append((float(mids[i]), []))
    return segments if len(segments) <= MAX_SEGMENTS else None


def _fit(kind: int, qmap: QuantMap, mids: np.ndarray, first: int) -> Segments | None:
    values = qmap.values.double().numpy()
    all_mids = qmap.midpoints.numpy()
    # the values either side of nonnegative midpoint i
    lo = values[first:first + len(mids)]
    hi = values[first + 1:first + 1 + len(mids)]
    if kind == SQUARED:
        if (lo < 0).any():
            return None
        step_of = np.sqrt(hi) - np.sqrt(lo)
        roots = lambda i: float(np.sqrt(max(float(mids[i]) - step_of[i] ** 2 / 4, 0.0)))  # noqa: E731
    else:
        step_of = hi - lo
        roots = lambda i: float(mids[i])  # noqa: E731
    parts = _partition(mids, roots, step_of)
    if parts is None:
        return None
    k = len(parts)
    upper = np.full(MAX_SEGMENTS, np.inf, dtype=f32)
    d = np.zeros(MAX_SEGMENTS, dtype=f32)
    b = np.full(MAX_SEGMENTS, -0.5, dtype=f32)  # no interior midpoint: u = 0.5, never near an integer
    c = np.zeros(MAX_SEGMENTS, dtype=f32)
    base = np.zeros(MAX_SEGMENTS, dtype=np.int32)
    n = np.zeros(MAX_SEGMENTS, dtype=np.int32)
    count = 0
    for j, (lower, interior) in enumerate(parts):
        if j + 1 < k:
            upper[j] = parts[j + 1][0]
        if j >= 1:
            count += 1  # the lower threshold itself
        base[j] = count
        n[j] = len(interior)
        count += len(interior)
        if interior:
            s = step_of[interior[0]] if kind == SQUARED else None
            cc = (s * s / 4) if kind == SQUARED else 0.0
            r = [roots(i) for i in interior]
            step = (r[-1] - r[0]) / (len(r) - 1) if len(r) > 1 else r[0] - (
                np.sqrt(max(lower - cc, 0.0)) if kind == SQUARED else lower)
            if not step > 0:
                return None
            d[j], b[j], c[j] = 1.0 / step, r[0] / step - 1.0, cc
    shift, binade = _binade_table(upper[:k])
    if binade is None:
        return None
    neg = int((all_mids < 0).sum())
    mirrored = neg
    if neg and not np.array_equal(-all_mids[:neg][::-1], mids[:neg]):
        return None
    seg = Segments(kind, neg, mirrored, shift, binade, upper, d, b, c, base, n)
    if not _within_tolerance(seg, parts, mids):
        return None
    return seg


def _binade_table(upper: np.ndarray) -> tuple[int, np.ndarray | None]:
    """(shift, segment of each table entry's lowest t): entries of one binade, else of two;
    None when an entry holds two thresholds or one within reach of its lower edge."""
    for shift in (0, 1):
        table = np.zeros(BINADES, dtype=np.int32)
        for e in range(BINADES):
            field = (e + (127 >> shift) - BINADES + 1) << shift
            low = np.float32(2.0 ** (field - 127)) if e else np.float32(0.0)
            high = np.float32(2.0 ** (field + (1 << shift) - 127))
            table[e] = int(np.searchsorted(upper, low, side="left"))  # first segment whose upper >= low
            near_edge = 1 + 2.0 ** -18
            inside = upper[(upper > low / near_edge) & (upper < high * near_edge)]
            if len(inside) > 1 or (len(inside) == 1 and e and not low * near_edge < inside[0]):
                break
        else:
            return shift, table
    return 0, None


def _within_tolerance(seg: Segments, parts, mids: np.ndarray) -> bool:
    """deviation + drift < U_TOLERANCE at every interior midpoint (module doc), and u > -1
    from each segment's lower threshold up (the encoder truncates u without a lower clamp)."""
    lowers = [np.nextafter(f32(lower), f32(1)) if np.isfinite(lower) else f32(0) for lower, _ in parts]
    for j, low in enumerate(lowers):
        if not _u(seg.kind, np.array([low], f32), seg.d[j], seg.b[j], seg.c[j])[0] > -0.5:
            return False
    for j, (_, interior) in enumerate(parts):
        if not interior:
            continue
        m = mids[interior].astype(f32)
        at = _u(seg.kind, m, seg.d[j], seg.b[j], seg.c[j]).astype(np.float64)
        deviation = np.abs(at - np.arange(1, len(interior) + 1))
        wide = [_u(seg.kind, (m.astype(np.float64) * (1 + s * 2.0 ** -21)).astype(f32), seg.d[j], seg.b[j], seg.c[j])
                for s in (-1, 1)]
        drift = np.abs(wide[1].astype(np.float64) - wide[0]) + 8 * np.abs(at) * 2.0 ** -24
        if not (deviation + drift < U_TOLERANCE / 2).all():
            return False
    return True


def check(seg: Segments, qmap: QuantMap, samples: int = 200_000, seed: int = 0) -> None:
    """Raise when the emulated encoder disagrees with torch.bucketize on an unflagged lane."""
    mids = qmap.midpoints.numpy()
    rng = np.random.default_rng(seed)
    y = np.concatenate([mids, np.nextafter(mids, f32(np.inf)), np.nextafter(mids, f32(-np.inf)),
                        qmap.values.numpy(), [0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30],
                        rng.uniform(-1, 1, samples), np.sign(rng.uniform(-1, 1, samples)) * 10.0 ** rng.uniform(-16, 0, samples)
                        ]).astype(f32)
    codes, near = encode(seg, y)
    ref = torch.bucketize(torch.from_numpy(y), qmap.midpoints).numpy()
    bad = (~near) & (codes != ref)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(f"map {qmap.name}: segment code {codes[i]} != reference {ref[i]} at y={y[i]!r}")


@lru_cache(maxsize=None)
def segments_of(qmap: QuantMap) -> Segments | None:
    """The map's segment tables, or None when it is not piecewise regular (module doc)."""
    if qmap.size != 256:
        return None  # 4-bit maps: a register binary search is already cheap
    all_mids = qmap.midpoints.numpy()
    first = int((all_mids < 0).sum())
    mids = all_mids[first:]
    for kind in (LINEAR, SQUARED):
        seg = _fit(kind, qmap, mids, first)
        if seg is not None:
            check(seg, qmap)
            return seg
    return None
