// AVX2 paths of quant.h: 8 lanes. AVX2 has no two-table permute, so the 256-entry map is
// read by a gather (vgatherdps); the 16-entry 4-bit map by two vpermps and a blend.
// Encode: absmax in registers, y = x / scale exactly divided; 8-bit: one gather of the
// packed bucket entry per lane; 4-bit as the AVX-512 path: a
// binary search over the midpoints held in registers (no index arithmetic: see Mids16).
#pragma once

#include <immintrin.h>

#include "quant.h"

namespace tf {
namespace simd {

inline int32_t reduce_max_epu32(__m256i v) {
  __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0x4E));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, 0xB1));
  return _mm_cvtsi128_si32(m);
}

inline __m256 lookup16(__m256 map_lo, __m256 map_hi, __m256i code) {
  const __m256 lo = _mm256_permutevar8x32_ps(map_lo, code);
  const __m256 hi = _mm256_permutevar8x32_ps(map_hi, code);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(code, 28)));  // code bit 3
}

inline void decode_bytes(const Quant& q, const uint8_t* codes, const float* absmax, int n, float* out) {
  for (int b0 = 0, blk = 0; b0 < n; b0 += q.block, ++blk) {
    const int m = n - b0 < q.block ? n - b0 : q.block;
    const float s = absmax[blk];
    const __m256 scale = _mm256_set1_ps(s);
    int i = 0;
    for (; i + 8 <= m; i += 8) {
      const __m256i code = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + b0 + i)));
      _mm256_storeu_ps(out + b0 + i, _mm256_mul_ps(_mm256_i32gather_ps(q.values, code, 4), scale));
    }
    for (; i < m; ++i) out[b0 + i] = q.values[codes[b0 + i]] * s;
  }
}

inline void decode_nibbles(const Quant& q, const uint8_t* packed, const float* absmax, int n, float* out) {
  const __m256 map_lo = _mm256_loadu_ps(q.values), map_hi = _mm256_loadu_ps(q.values + 8);
  const __m256i low4 = _mm256_set1_epi32(0x0F);
  for (int b0 = 0, blk = 0; b0 < n; b0 += q.block, ++blk) {
    const int m = n - b0 < q.block ? n - b0 : q.block;
    const float s = absmax[blk];
    const __m256 scale = _mm256_set1_ps(s);
    int i = 0;
    for (; i + 16 <= m; i += 16) {  // 16 elements from 8 bytes
      const __m256i pair =
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed + (b0 + i) / 2)));
      const __m256 even = lookup16(map_lo, map_hi, _mm256_and_si256(pair, low4));
      const __m256 odd = lookup16(map_lo, map_hi, _mm256_srli_epi32(pair, 4));
      const __m256 a = _mm256_unpacklo_ps(even, odd), b = _mm256_unpackhi_ps(even, odd);
      _mm256_storeu_ps(out + b0 + i, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x20), scale));
      _mm256_storeu_ps(out + b0 + i + 8, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x31), scale));
    }
    for (; i < m; ++i) {
      const int k = b0 + i;
      out[k] = q.values[(packed[k / 2] >> (4 * (k & 1))) & 0x0F] * s;
    }
  }
}

// Codes of 8 lanes of y = x / scale (exactly divided, |y| <= 1, finite) by the bucket table.
inline __m256i codes_of(const Quant& q, __m256 y) {
  const __m256i bits = _mm256_castps_si256(y);
  const __m256i mag = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i key = _mm256_blendv_epi8(mag, _mm256_sub_epi32(_mm256_setzero_si256(), mag), _mm256_srai_epi32(bits, 31));
  const __m128i shift = _mm_cvtsi32_si128(q.shift);
  const __m256i hi = _mm256_sra_epi32(key, shift);
  __m256i bucket = _mm256_add_epi32(hi, _mm256_set1_epi32(q.offset));
  bucket = _mm256_min_epi32(_mm256_max_epi32(bucket, _mm256_setzero_si256()), _mm256_set1_epi32(q.last));
  const __m256i entry = _mm256_i32gather_epi32(q.packed, bucket, 4);
  const __m256i low = _mm256_and_si256(entry, _mm256_set1_epi32(0xFF));
  const __m256i mid = _mm256_srli_epi32(entry, 8);
  const __m256i within = _mm256_sub_epi32(key, _mm256_sll_epi32(hi, shift));
  const __m256i above = _mm256_cmpgt_epi32(within, mid);  // -1 where above
  return _mm256_sub_epi32(low, above);
}

inline void store_code_bytes(__m256i code, uint8_t* dst) {
  const __m256i bytes = _mm256_shuffle_epi8(code, _mm256_setr_epi8(
      0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
      0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
  const __m256i packed = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(packed));
}

// The bits of max |x[i]| over a block (as an unsigned integer: the order of finite floats,
// and Inf/NaN above every finite value).
inline uint32_t block_absmax_bits(const float* x, int m) {
  const int whole = m & ~7;
  __m256i amax = _mm256_setzero_si256();
  for (int i = 0; i < whole; i += 8)
    amax = _mm256_max_epu32(amax, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)),
                                                    _mm256_set1_epi32(0x7FFFFFFF)));
  const uint32_t vector_bits = uint32_t(reduce_max_epu32(amax));
  const uint32_t rest = absmax_bits(x + whole, m - whole);
  return rest > vector_bits ? rest : vector_bits;
}

// 4-bit maps: code = number of midpoints < y, by a 4-step binary search on y = x / scale exactly
// divided (no gather, no closeness check). Step s (8, 4, 2, 1) compares y with midpoint
// code + s - 1: step 8 with a broadcast midpoint 7, step 4 with midpoint 3 or 11 (a blend on
// step 8's outcome), steps 2 and 1 with one vpermps each from 8-entry tables indexed by code / 4
// and code / 2. Each outcome, all ones where y is above, is masked to s and added.
struct Mids16 {
  __m256 mid3, mid7, mid11, by4, by2;
  explicit Mids16(const float* midpoints)
      : mid3(_mm256_set1_ps(midpoints[3])), mid7(_mm256_set1_ps(midpoints[7])), mid11(_mm256_set1_ps(midpoints[11])),
        by4(_mm256_setr_ps(midpoints[1], midpoints[5], midpoints[9], midpoints[13], 0, 0, 0, 0)),
        by2(_mm256_setr_ps(midpoints[0], midpoints[2], midpoints[4], midpoints[6], midpoints[8], midpoints[10],
                           midpoints[12], midpoints[14])) {}
};

inline __m256i codes_of(const Mids16& t, __m256 y) {
  const __m256 above8 = _mm256_cmp_ps(y, t.mid7, _CMP_GT_OQ);
  __m256i code = _mm256_and_si256(_mm256_castps_si256(above8), _mm256_set1_epi32(8));
  const __m256 above4 = _mm256_cmp_ps(y, _mm256_blendv_ps(t.mid3, t.mid11, above8), _CMP_GT_OQ);
  code = _mm256_add_epi32(code, _mm256_and_si256(_mm256_castps_si256(above4), _mm256_set1_epi32(4)));
  const __m256 above2 = _mm256_cmp_ps(y, _mm256_permutevar8x32_ps(t.by4, _mm256_srli_epi32(code, 2)), _CMP_GT_OQ);
  code = _mm256_add_epi32(code, _mm256_and_si256(_mm256_castps_si256(above2), _mm256_set1_epi32(2)));
  const __m256 above1 = _mm256_cmp_ps(y, _mm256_permutevar8x32_ps(t.by2, _mm256_srli_epi32(code, 1)), _CMP_GT_OQ);
  return _mm256_sub_epi32(code, _mm256_castps_si256(above1));  // all ones: -1
}

// One block, y = x / scale exactly divided, so the table's comparisons are the reference's:
// no closeness check (dividing is cheaper than the reciprocal's check here;
// docs/cpu_step.md). Table: the 8-bit bucket table (Quant) or a 4-bit map's Mids16.
template <class Table>
inline void encode_block(const Table& table, const Quant& q, const float* x, int m, float* absmax_out,
                         uint8_t* codes) {
  const int whole = m & ~7;
  const uint32_t amax_bits = block_absmax_bits(x, m);
  if (amax_bits >= 0x7F800000u) {  // Inf or NaN in the block
    encode_block_exact(q, x, m, absmax_out, codes);
    return;
  }
  *absmax_out = float_of(amax_bits);
  const float scale = block_scale(float_of(amax_bits));
  const __m256 scale_v = _mm256_set1_ps(scale);
  for (int i = 0; i < whole; i += 8)
    store_code_bytes(codes_of(table, _mm256_div_ps(_mm256_loadu_ps(x + i), scale_v)), codes + i);
  for (int i = whole; i < m; ++i) codes[i] = uint8_t(code_of(q, x[i] / scale));
}

// n elements from a block-aligned start, block by block (the table built once).
template <class Table>
inline void encode_blocks_with(const Table& table, const Quant& q, const float* x, int n, float* absmax,
                               uint8_t* codes) {
  for (int b0 = 0, blk = 0; b0 < n; b0 += q.block, ++blk)
    encode_block(table, q, x + b0, n - b0 < q.block ? n - b0 : q.block, absmax + blk, codes + b0);
}

inline void encode_blocks(const Quant& q, const float* x, int n, float* absmax, uint8_t* codes) {
  if (q.nan_code == 15)  // a 4-bit map
    encode_blocks_with(Mids16(q.midpoints), q, x, n, absmax, codes);
  else
    encode_blocks_with(q, q, x, n, absmax, codes);
}

}  // namespace simd
}  // namespace tf
