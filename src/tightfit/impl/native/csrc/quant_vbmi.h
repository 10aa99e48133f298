// AVX-512 VBMI decode of 8-bit codes (quant_avx512.h uses it when __AVX512VBMI__ is defined):
// 64 codes at a time by byte permutes instead of 16 at a time by float permutes.
//   The 256-entry fp32 map as 4 byte planes (plane k: byte k of every value, 256 bytes = 4
//   registers). Per plane, two vpermi2b look up the code's 7 low bits in the map's low and
//   high 128 entries, the code's top bit picks one; unpacks then re-interleave the 4 planes
//   into 64 floats, bit for bit the map's values, multiplied by the block's absmax.
#pragma once

#include <immintrin.h>

#include "quant.h"

namespace tf {
namespace simd {

// 16 floats' bytes transposed within one register: byte 16k + i = byte k of float i.
inline __m512i bytes_by_plane(__m512i floats) {
  alignas(64) static const uint8_t order[64] = {
      0, 4, 8,  12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 1, 5, 9,  13, 17, 21,
      25, 29, 33, 37, 41, 45, 49, 53, 57, 61, 2, 6, 10, 14, 18, 22, 26, 30, 34, 38, 42, 46,
      50, 54, 58, 62, 3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 43, 47, 51, 55, 59, 63};
  return _mm512_permutexvar_epi8(_mm512_load_si512(order), floats);
}

struct BytePlanes256 {
  __m512i plane[4][4];  // [byte k][values 64j .. 64j + 63]
  explicit BytePlanes256(const float* values) {
    for (int j = 0; j < 4; ++j) {
      __m512i t[4];
      for (int r = 0; r < 4; ++r) t[r] = bytes_by_plane(_mm512_loadu_si512(values + 64 * j + 16 * r));
      // a 4x4 transpose of 128-bit lanes: plane k = lane k of t[0], t[1], t[2], t[3]
      const __m512i a = _mm512_shuffle_i32x4(t[0], t[1], 0x44), b = _mm512_shuffle_i32x4(t[2], t[3], 0x44);
      const __m512i c = _mm512_shuffle_i32x4(t[0], t[1], 0xEE), d = _mm512_shuffle_i32x4(t[2], t[3], 0xEE);
      plane[0][j] = _mm512_shuffle_i32x4(a, b, 0x88);
      plane[1][j] = _mm512_shuffle_i32x4(a, b, 0xDD);
      plane[2][j] = _mm512_shuffle_i32x4(c, d, 0x88);
      plane[3][j] = _mm512_shuffle_i32x4(c, d, 0xDD);
    }
  }
  // byte k of values[code] for 64 codes
  __m512i operator()(int k, __m512i code, __mmask64 top) const {
    const __m512i low = _mm512_permutex2var_epi8(plane[k][0], code, plane[k][1]);
    const __m512i high = _mm512_permutex2var_epi8(plane[k][2], code, plane[k][3]);
    return _mm512_mask_blend_epi8(top, low, high);
  }
};

// The unpacks below interleave within 128-bit lanes: result r lane l takes bytes 16l + 4r ..
// 16l + 4r + 3 of the planes. Codes are placed there first so that result r holds elements
// 16r .. 16r + 15 in order: byte 16l + 4r + j <- code 16r + 4l + j.
inline __m512i lane_order() {
  alignas(64) static const uint8_t order[64] = {
      0,  1,  2,  3,  16, 17, 18, 19, 32, 33, 34, 35, 48, 49, 50, 51, 4,  5,  6,  7,  20, 21,
      22, 23, 36, 37, 38, 39, 52, 53, 54, 55, 8,  9,  10, 11, 24, 25, 26, 27, 40, 41, 42, 43,
      56, 57, 58, 59, 12, 13, 14, 15, 28, 29, 30, 31, 44, 45, 46, 47, 60, 61, 62, 63};
  return _mm512_load_si512(order);
}

inline __mmask64 tail_mask64(int left) { return left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1; }

// n codes (one byte each) from a block-aligned start; absmax[0] is the first block's.
inline void decode_bytes(const Quant& q, const uint8_t* codes, const float* absmax, int n, float* out) {
  const BytePlanes256 map(q.values);
  const __m512i order = lane_order();
  for (int b0 = 0, blk = 0; b0 < n; b0 += q.block, ++blk) {
    const int m = n - b0 < q.block ? n - b0 : q.block;
    const __m512 scale = _mm512_set1_ps(absmax[blk]);
    for (int i = 0; i < m; i += 64) {
      const __mmask64 k = tail_mask64(m - i);
      const __m512i code = _mm512_permutexvar_epi8(order, _mm512_maskz_loadu_epi8(k, codes + b0 + i));
      const __mmask64 top = _mm512_movepi8_mask(code);
      const __m512i b0v = map(0, code, top), b1v = map(1, code, top), b2v = map(2, code, top), b3v = map(3, code, top);
      const __m512i lo01 = _mm512_unpacklo_epi8(b0v, b1v), hi01 = _mm512_unpackhi_epi8(b0v, b1v);
      const __m512i lo23 = _mm512_unpacklo_epi8(b2v, b3v), hi23 = _mm512_unpackhi_epi8(b2v, b3v);
      const __m512i value[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                                _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
      for (int r = 0; r < 4; ++r)  // element 16r + e is stored where bit 16r + e of the load's mask is set
        _mm512_mask_storeu_ps(out + b0 + i + 16 * r, __mmask16(k >> (16 * r)),
                              _mm512_mul_ps(_mm512_castsi512_ps(value[r]), scale));
    }
  }
}

}  // namespace simd
}  // namespace tf
