// Portable paths of quant.h (any CPU): plain loops the compiler may vectorize, exact
// division in the encoder.
#pragma once

#include "quant.h"

namespace tf {
namespace simd {

inline void decode_bytes(const Quant& q, const uint8_t* codes, const float* absmax, int n, float* out) {
  for (int b0 = 0, blk = 0; b0 < n; b0 += q.block, ++blk) {
    const int m = n - b0 < q.block ? n - b0 : q.block;
    const float s = absmax[blk];
    for (int i = 0; i < m; ++i) out[b0 + i] = q.values[codes[b0 + i]] * s;
  }
}

inline void decode_nibbles(const Quant& q, const uint8_t* packed, const float* absmax, int n, float* out) {
  for (int b0 = 0, blk = 0; b0 < n; b0 += q.block, ++blk) {
    const int m = n - b0 < q.block ? n - b0 : q.block;
    const float s = absmax[blk];
    for (int i = 0; i < m; ++i) {
      const int k = b0 + i;
      out[k] = q.values[(packed[k / 2] >> (4 * (k & 1))) & 0x0F] * s;
    }
  }
}

inline void encode_block(const Quant& q, const float* x, int m, float* absmax_out, uint8_t* codes) {
  encode_block_exact(q, x, m, absmax_out, codes);
}

// n elements from a block-aligned start, block by block.
inline void encode_blocks(const Quant& q, const float* x, int n, float* absmax, uint8_t* codes) {
  for (int b0 = 0, blk = 0; b0 < n; b0 += q.block, ++blk)
    encode_block(q, x + b0, n - b0 < q.block ? n - b0 : q.block, absmax + blk, codes + b0);
}

}  // namespace simd
}  // namespace tf
