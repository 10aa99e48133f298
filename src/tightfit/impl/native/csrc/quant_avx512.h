// AVX-512 (F, BW, DQ, VL) paths of quant.h: 16 lanes, no gathers in decode.
//   decode 8-bit: with AVX-512 VBMI, byte permutes on 64 codes at a time (quant_vbmi.h); else
//                 the 256-entry map held in 16 registers; 8 two-table permutes (vpermi2ps,
//                 code bits 0-4) and a 3-level blend on code bits 5-7.
//   decode 4-bit: the 16-entry map in one register (vpermps), nibbles re-interleaved by permutes.
//   encode:       absmax in registers; 8-bit: x * (1/scale) with a per-lane check (quant.h),
//                 the nearest code by arithmetic on the map's segment tables held in
//                 registers (maps that have them: segments.py), else one gather of the
//                 packed bucket entry per lane; 4-bit: x / scale exactly divided (cheaper
//                 than the check) and a 4-step binary search over the 15 midpoints held in
//                 registers (one shifted copy per step); codes narrowed by vpmovdb.
#pragma once

#include <immintrin.h>

#include "quant.h"
#ifdef __AVX512VBMI__
#include "quant_vbmi.h"
#endif

namespace tf {
namespace simd {

inline __mmask16 tail_mask(int left) { return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1); }

#ifndef __AVX512VBMI__  // the VBMI decode_bytes is quant_vbmi.h's
struct Map256 {
  __m512 t[16];
  explicit Map256(const float* values) {
    for (int k = 0; k < 16; ++k) t[k] = _mm512_loadu_ps(values + 16 * k);
  }
  __m512 operator()(__m512i code) const {
    __m512 r[8];
    for (int k = 0; k < 8; ++k) r[k] = _mm512_permutex2var_ps(t[2 * k], code, t[2 * k + 1]);
    const __mmask16 b5 = _mm512_test_epi32_mask(code, _mm512_set1_epi32(32));
    const __mmask16 b6 = _mm512_test_epi32_mask(code, _mm512_set1_epi32(64));
    const __mmask16 b7 = _mm512_test_epi32_mask(code, _mm512_set1_epi32(128));
    for (int k = 0; k < 4; ++k) r[k] = _mm512_mask_blend_ps(b5, r[2 * k], r[2 * k + 1]);
    r[0] = _mm512_mask_blend_ps(b6, r[0], r[1]);
    r[1] = _mm512_mask_blend_ps(b6, r[2], r[3]);
    return _mm512_mask_blend_ps(b7, r[0], r[1]);
  }
};

// n codes (one byte each) from a block-aligned start; absmax[0] is the first block's.
inline void decode_bytes(const Quant& q, const uint8_t* codes, const float* absmax, int n, float* out) {
  const Map256 map(q.values);
  for (int b0 = 0, blk = 0; b0 < n; b0 += q.block, ++blk) {
    const int m = n - b0 < q.block ? n - b0 : q.block;
    const __m512 scale = _mm512_set1_ps(absmax[blk]);
    for (int i = 0; i < m; i += 16) {
      const __mmask16 k = tail_mask(m - i);
      const __m512i code = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, codes + b0 + i));
      _mm512_mask_storeu_ps(out + b0 + i, k, _mm512_mul_ps(map(code), scale));
    }
  }
}
#endif

// n codes packed two per byte (element 2i: low nibble of byte i), block-aligned start.
inline void decode_nibbles(const Quant& q, const uint8_t* packed, const float* absmax, int n, float* out) {
  const __m512 map = _mm512_loadu_ps(q.values);  // a 4-bit map has 16 values
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i low4 = _mm512_set1_epi32(0x0F);
  for (int b0 = 0, blk = 0; b0 < n; b0 += q.block, ++blk) {
    const int m = n - b0 < q.block ? n - b0 : q.block;
    const __m512 scale = _mm512_set1_ps(absmax[blk]);
    for (int i = 0; i < m; i += 32) {  // 32 elements from 16 bytes
      const int left = m - i;
      const __mmask16 bytes = tail_mask((left + 1) / 2);
      const __m512i pair = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(bytes, packed + (b0 + i) / 2));
      const __m512 even = _mm512_permutexvar_ps(_mm512_and_si512(pair, low4), map);
      const __m512 odd = _mm512_permutexvar_ps(_mm512_srli_epi32(pair, 4), map);
      _mm512_mask_storeu_ps(out + b0 + i, tail_mask(left),
                            _mm512_mul_ps(_mm512_permutex2var_ps(even, first, odd), scale));
      if (left > 16)
        _mm512_mask_storeu_ps(out + b0 + i + 16, tail_mask(left - 16),
                              _mm512_mul_ps(_mm512_permutex2var_ps(even, second, odd), scale));
    }
  }
}

// Codes of 16 lanes of y (|y| <= 1 + 2^-22, finite), and the lanes whose key lies within
// RECIPROCAL_MARGIN of a bucket edge or of the bucket's midpoint.
inline __m512i codes_of(const Quant& q, __m512 y, __mmask16* near) {
  const __m512i bits = _mm512_castps_si512(y);
  const __m512i mag = _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF));
  const __m512i key = _mm512_mask_sub_epi32(mag, _mm512_movepi32_mask(bits), _mm512_setzero_si512(), mag);
  const __m128i shift = _mm_cvtsi32_si128(q.shift);
  const __m512i hi = _mm512_sra_epi32(key, shift);
  __m512i bucket = _mm512_add_epi32(hi, _mm512_set1_epi32(q.offset));
  bucket = _mm512_min_epi32(_mm512_max_epi32(bucket, _mm512_setzero_si512()), _mm512_set1_epi32(q.last));
  const __m512i entry = _mm512_i32gather_epi32(bucket, q.packed, 4);
  const __m512i low = _mm512_and_si512(entry, _mm512_set1_epi32(0xFF));
  const __m512i mid = _mm512_srli_epi32(entry, 8);
  const __m512i within = _mm512_sub_epi32(key, _mm512_sll_epi32(hi, shift));
  const __mmask16 above = _mm512_cmpgt_epi32_mask(within, mid);
  const __m512i margin = _mm512_set1_epi32(RECIPROCAL_MARGIN);
  *near = _mm512_cmple_epi32_mask(_mm512_abs_epi32(_mm512_sub_epi32(within, mid)), margin) |
          _mm512_cmplt_epi32_mask(within, margin) |
          _mm512_cmpgt_epi32_mask(within, _mm512_set1_epi32((1 << q.shift) - 1 - RECIPROCAL_MARGIN));
  return _mm512_mask_add_epi32(low, above, low, _mm512_set1_epi32(1));
}

// A segment's lowest code (neg_base + base) and highest (+ n), packed in 16-bit halves.
inline __m512i bounds_of(const TfSegments& s) {
  const __m512i lowest = _mm512_add_epi32(_mm512_loadu_si512(s.base), _mm512_set1_epi32(s.neg_base));
  return _mm512_or_si512(lowest, _mm512_slli_epi32(_mm512_add_epi32(lowest, _mm512_loadu_si512(s.n)), 16));
}

// 8-bit maps with segment tables (abi.h TfSegments): t = |y|; its binade's segment and one
// comparison with that segment's upper threshold; then the count of interior midpoints
// below t is the integer part of u. Lanes close to a threshold or with u close to an
// integer are flagged in *near (the caller divides those exactly and uses the bucket table).
// SQUARED: the map's kind (u from sqrt(t - c)); UNSIGNED: no negative midpoints. Both are
// template flags so that each map's loop carries only its own instructions.
template <bool SQUARED, bool UNSIGNED>
struct SegmentTable {
  __m512i binade_lo, binade_hi;
  __m512i upper_low;  // bit patterns of the upper thresholds minus SEGMENT_THRESHOLD_ULPS
  __m512 d, b, c;
  __m512i bounds;  // per segment: its lowest code (bits 0-15) and its highest (bits 16-31), + neg_base
  __m512i two_neg_base, mirrored, lowest;  // mirrored: + neg_base (the code of +0)
  __m128i shift;
  explicit SegmentTable(const TfSegments& s)
      : binade_lo(_mm512_loadu_si512(s.binade_segment)), binade_hi(_mm512_loadu_si512(s.binade_segment + 16)),
        upper_low(_mm512_sub_epi32(_mm512_loadu_si512(s.upper), _mm512_set1_epi32(SEGMENT_THRESHOLD_ULPS))),
        d(_mm512_loadu_ps(s.d)), b(_mm512_loadu_ps(s.b)), c(_mm512_loadu_ps(s.c)),
        bounds(bounds_of(s)),
        two_neg_base(_mm512_set1_epi32(2 * s.neg_base)), mirrored(_mm512_set1_epi32(s.mirrored + s.neg_base)),
        lowest(_mm512_set1_epi32((127 >> s.binade_shift) - 31)),
        shift(_mm_cvtsi32_si128(23 + s.binade_shift)) {}
};

template <bool SQUARED, bool UNSIGNED>
inline __m512i codes_of(const SegmentTable<SQUARED, UNSIGNED>& t, __m512 y, __mmask16* near) {
  const __m512i bits = _mm512_castps_si512(y);
  // unsigned maps: a negative y (a negative int32) becomes +0, whose code 0 is also its own
  const __mmask16 negative = UNSIGNED ? 0 : _mm512_movepi32_mask(bits);
  const __m512i mag = UNSIGNED ? _mm512_max_epi32(bits, _mm512_setzero_si512())
                               : _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF));
  const __m512 tv = _mm512_castsi512_ps(mag);
  // the table entry: exponent field (< 256: a 16-bit lane) minus the lowest, saturating at 0
  const __m512i entry = _mm512_subs_epu16(_mm512_srl_epi32(mag, t.shift), t.lowest);
  const __m512i seg0 = _mm512_permutex2var_epi32(t.binade_lo, entry, t.binade_hi);
  // t against the threshold on the bit patterns (positive floats order as integers):
  // from_low = mag - (up - ULPS); t > up where from_low > ULPS, within ULPS of it where
  // 0 <= from_low <= 2 ULPS (one unsigned comparison)
  const __m512i from_low = _mm512_sub_epi32(mag, _mm512_permutexvar_epi32(seg0, t.upper_low));
  const __m512i ulps = _mm512_set1_epi32(SEGMENT_THRESHOLD_ULPS);
  const __m512i seg = _mm512_mask_add_epi32(seg0, _mm512_cmpgt_epi32_mask(from_low, ulps), seg0,
                                            _mm512_set1_epi32(1));
  __mmask16 close = _mm512_cmple_epu32_mask(from_low, _mm512_add_epi32(ulps, ulps));
  __m512 w = tv;
  if (SQUARED)
    w = _mm512_sqrt_ps(_mm512_max_ps(_mm512_sub_ps(tv, _mm512_permutexvar_ps(seg, t.c)), _mm512_setzero_ps()));
  const __m512 u = _mm512_fmsub_ps(w, _mm512_permutexvar_ps(seg, t.d), _mm512_permutexvar_ps(seg, t.b));
  // u - round(u), exact
  close |= _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_reduce_ps(u, _MM_FROUND_TO_NEAREST_INT)),
                              _mm512_set1_ps(SEGMENT_U_TOLERANCE), _CMP_LT_OQ);
  *near = close;
  // u > -1 from each segment's lower threshold up (segments.py), so truncation needs no lower clamp.
  // The code of t = |y|: neg_base + count.
  // min(lowest + trunc(u), highest) in the low 16 bits (u < 2^15: t is at most its segment's upper
  // threshold), 0 above: one look-up for both bounds
  const __m512i sum = _mm512_add_epi32(_mm512_cvttps_epi32(u), _mm512_permutexvar_epi32(seg, t.bounds));
  const __m512i code = _mm512_min_epu16(sum, _mm512_srli_epi32(sum, 16));
  if (UNSIGNED) return code;
  // a negative y: neg_base - min(count, mirrored), with count = code - neg_base
  return _mm512_mask_sub_epi32(code, negative, t.two_neg_base, _mm512_min_epi32(code, t.mirrored));
}

// 4-bit maps: code = number of midpoints < y, by a 4-step binary search. Step s (8, 4, 2, 1)
// compares y with midpoint code + s - 1; the first against a broadcast midpoint 7, the others
// against their own copy of the midpoints shifted down by s - 1 (+inf padding), indexed by the
// code itself: one permute, one compare and one masked add per step, no index arithmetic.
struct Mids16 {
  __m512 mid7, from3, from1, from0;
  explicit Mids16(const float* midpoints) : mid7(_mm512_set1_ps(midpoints[7])), from0(_mm512_loadu_ps(midpoints)) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i last = _mm512_set1_epi32(15);
    from3 = _mm512_permutexvar_ps(_mm512_min_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(3)), last), from0);
    from1 = _mm512_permutexvar_ps(_mm512_min_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(1)), last), from0);
  }
};

inline __m512i codes_of(const Mids16& t, __m512 y) {
  __m512i code = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(y, t.mid7, _CMP_GT_OQ), _mm512_set1_epi32(8));
  code = _mm512_mask_add_epi32(code, _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(code, t.from3), _CMP_GT_OQ), code,
                               _mm512_set1_epi32(4));
  code = _mm512_mask_add_epi32(code, _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(code, t.from1), _CMP_GT_OQ), code,
                               _mm512_set1_epi32(2));
  return _mm512_mask_add_epi32(code, _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(code, t.from0), _CMP_GT_OQ), code,
                               _mm512_set1_epi32(1));
}

// The bits of max |x[i]| over a block (as an unsigned integer: the order of finite floats,
// and Inf/NaN above every finite value).
inline uint32_t block_absmax_bits(const float* x, int m) {
  __m512i amax = _mm512_setzero_si512();
  for (int i = 0; i < m; i += 16) {
    const __m512i v = _mm512_castps_si512(_mm512_maskz_loadu_ps(tail_mask(m - i), x + i));
    amax = _mm512_max_epu32(amax, _mm512_and_si512(v, _mm512_set1_epi32(0x7FFFFFFF)));
  }
  return _mm512_reduce_max_epu32(amax);
}

// 4-bit blocks: y = x / scale exactly divided, so the search's comparisons are the reference's.
inline void encode_block_with(const Mids16& table, const Quant& q, const float* x, int m, float* absmax_out,
                              uint8_t* codes) {
  const uint32_t amax_bits = block_absmax_bits(x, m);
  if (amax_bits >= 0x7F800000u) {  // Inf or NaN in the block
    encode_block_exact(q, x, m, absmax_out, codes);
    return;
  }
  *absmax_out = float_of(amax_bits);
  const __m512 scale_v = _mm512_set1_ps(block_scale(float_of(amax_bits)));
  for (int i = 0; i < m; i += 16) {
    const __mmask16 k = tail_mask(m - i);
    const __m512 y = _mm512_div_ps(_mm512_maskz_loadu_ps(k, x + i), scale_v);
    _mm_mask_storeu_epi8(codes + i, k, _mm512_cvtepi32_epi8(codes_of(table, y)));
  }
}

// The codes of x / scale, exactly divided, by the bucket table: for the lanes whose
// x * (1/scale) was too close to call (whichever table gave the others).
inline __m512i exact_codes(const Quant& q, __m512 xv, __m512 scale_v) {
  __mmask16 unused;
  return codes_of(q, _mm512_div_ps(xv, scale_v), &unused);
}

template <class Table>
inline void encode_block_with(const Table& table, const Quant& q, const float* x, int m, float* absmax_out,
                              uint8_t* codes) {
  const uint32_t amax_bits = block_absmax_bits(x, m);
  const float scale = block_scale(float_of(amax_bits));
  const float inv = 1.0f / scale;
  if (!reciprocal_usable(amax_bits, inv)) {
    encode_block_exact(q, x, m, absmax_out, codes);
    return;
  }
  *absmax_out = float_of(amax_bits);
  const __m512 inv_v = _mm512_set1_ps(inv), scale_v = _mm512_set1_ps(scale);
  for (int i = 0; i < m; i += 16) {
    const __mmask16 k = tail_mask(m - i);
    const __m512 xv = _mm512_maskz_loadu_ps(k, x + i);
    __mmask16 near;
    __m512i code = codes_of(table, _mm512_mul_ps(xv, inv_v), &near);
    if (near & k)  // rare: divide exactly and take those lanes' codes from the quotient
      code = _mm512_mask_mov_epi32(code, near, exact_codes(q, xv, scale_v));
    _mm_mask_storeu_epi8(codes + i, k, _mm512_cvtepi32_epi8(code));
  }
}

// n elements from a block-aligned start, block by block (the table built once).
template <class Table>
inline void encode_blocks_with(const Table& table, const Quant& q, const float* x, int n, float* absmax,
                               uint8_t* codes) {
  for (int b0 = 0, blk = 0; b0 < n; b0 += q.block, ++blk)
    encode_block_with(table, q, x + b0, n - b0 < q.block ? n - b0 : q.block, absmax + blk, codes + b0);
}

inline void encode_blocks_segments(const TfSegments& s, const Quant& q, const float* x, int n, float* absmax,
                                   uint8_t* codes) {
  const bool squared = s.kind == 1, unsigned_map = s.neg_base == 0 && s.mirrored == 0;
  if (squared && unsigned_map) encode_blocks_with(SegmentTable<true, true>(s), q, x, n, absmax, codes);
  else if (squared) encode_blocks_with(SegmentTable<true, false>(s), q, x, n, absmax, codes);
  else if (unsigned_map) encode_blocks_with(SegmentTable<false, true>(s), q, x, n, absmax, codes);
  else encode_blocks_with(SegmentTable<false, false>(s), q, x, n, absmax, codes);
}

inline void encode_blocks(const Quant& q, const float* x, int n, float* absmax, uint8_t* codes) {
  if (q.nan_code == 15)  // a 4-bit map
    encode_blocks_with(Mids16(q.midpoints), q, x, n, absmax, codes);
  else if (q.seg != nullptr)
    encode_blocks_segments(*q.seg, q, x, n, absmax, codes);
  else
    encode_blocks_with(q, q, x, n, absmax, codes);
}

}  // namespace simd
}  // namespace tf
