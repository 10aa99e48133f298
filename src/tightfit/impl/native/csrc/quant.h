// Blockwise quantization (tightfit.codecs: 8/4-bit codes of value / block absmax on a
// QuantMap), the scalar definition every vector path must match code for code.
//
// Encoding finds the nearest map value by the map's bucket table (QuantMap.encode_fast):
// bucket = (monotone key of y) >> shift, and one comparison with the only midpoint that
// can lie in the bucket (ties -> lower code). Each packed entry holds the bucket's
// lowest code (bits 0-7) and the midpoint's key offset inside the bucket (bits 8+;
// 2^shift: none), so y > midpoint is an integer comparison and one look-up serves both.
#pragma once

#include <cstdint>

#include "abi.h"
#include "dtypes.h"

namespace tf {

struct Quant {
  const float* values;    // map values (decode)
  const int32_t* packed;  // per bucket: lowest code | midpoint offset << 8 (encode)
  const float* midpoints; // n_values: midpoints, then +inf
  int32_t shift;          // bucket = (key >> shift) + top + 1
  int32_t offset;         // top + 1
  int32_t last;           // n_buckets - 1
  int32_t block;
  int32_t nan_code;       // n_values - 1
  const TfSegments* seg;  // 8-bit maps with segment tables: the arithmetic encoder (may be null)
};

inline Quant quant_of(const TfState& st) {
  return {st.values, st.bucket_packed, st.midpoints, st.shift, st.top + 1, st.n_buckets - 1, st.block, st.n_values - 1, st.segments};
}

// Integer key of a float that orders like its value (sign * magnitude bits; -0 = +0).
inline int32_t monotone_key(float y) {
  const int32_t b = int32_t(bits_of(y));
  const int32_t mag = b & 0x7FFFFFFF;
  return b < 0 ? -mag : mag;
}

// The nearest code of y (|y| <= 1; NaN, from an inf or NaN state: the last code, as the
// reference's torch.bucketize gives).
inline int32_t code_of(const Quant& q, float y) {
  if (y != y) return q.nan_code;
  const int32_t key = monotone_key(y);
  const int32_t hi = key >> q.shift;
  const int32_t bucket = hi + q.offset;
  if (bucket < 0 || bucket > q.last) return q.packed[bucket < 0 ? 0 : q.last] & 0xFF;
  const int32_t entry = q.packed[bucket];
  const int32_t within = key - int32_t(uint32_t(hi) << q.shift);
  return (entry & 0xFF) + (within > (entry >> 8) ? 1 : 0);
}

// max |x| over m floats, on the bit patterns (orders like the value for x >= 0; NaN above all).
inline uint32_t absmax_bits(const float* x, int m) {
  uint32_t amax = 0;
  for (int i = 0; i < m; ++i) {
    const uint32_t a = bits_of(x[i]) & 0x7FFFFFFFu;
    amax = a > amax ? a : amax;
  }
  return amax;
}

// The divisor of a block with this absmax: the absmax, or 1 for an all-zero block (and,
// as the reference's torch.where, for a NaN absmax).
inline float block_scale(float amax) { return amax > 0.0f ? amax : 1.0f; }

// One block by the definition: y = x / scale, exactly divided.
inline void encode_block_exact(const Quant& q, const float* x, int m, float* absmax_out, uint8_t* codes) {
  const float amax = float_of(absmax_bits(x, m));
  *absmax_out = amax;
  const float scale = block_scale(amax);
  for (int i = 0; i < m; ++i) codes[i] = uint8_t(code_of(q, x[i] / scale));
}

// The AVX-512 8-bit encoders multiply by a reciprocal 1/scale instead of dividing when it
// is a normal float and the block is finite: then x * inv is within 3 roundings (< 2^-22
// relative, < 5 ulps) of x / scale, so a code computed from it can differ only where the
// key lies within RECIPROCAL_MARGIN of a bucket edge or of the bucket's midpoint; those
// lanes are divided exactly (every lane is checked). The 4-bit encoders and AVX2 divide
// every lane exactly: there the division is cheaper than the check (docs/cpu_step.md).
constexpr int32_t RECIPROCAL_MARGIN = 8;

// The segment encoder's closeness limits (impl/native/segments.py proves them against the
// map): |u - nearest integer| below this, or t within this many ulps of the threshold it
// is compared with, and the lane is divided exactly.
constexpr float SEGMENT_U_TOLERANCE = 1.0f / 512.0f;
constexpr int32_t SEGMENT_THRESHOLD_ULPS = 16;

inline bool reciprocal_usable(uint32_t amax_bits, float inv) {
  return amax_bits < 0x7F800000u && inv >= 1.17549435e-38f && inv <= 3.40282347e+38f;
}

}  // namespace tf
