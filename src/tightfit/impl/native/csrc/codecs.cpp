// Blockwise 8/4-bit codecs: code -> map value * block absmax, and back to the nearest
// code through the bucket table of tightfit.codecs.maps.QuantMap.
#include "codecs.h"

#include "dtypes.h"

namespace tf {
namespace {

void decode_codes(const TfState& st, const uint8_t* codes, int64_t start, int n, float* out) {
  const float* vals = st.values;
  const int B = st.block;
  for (int b0 = 0; b0 < n; b0 += B) {
    const int m = n - b0 < B ? n - b0 : B;
    const float scale = st.absmax[(start + b0) / B];
    for (int i = 0; i < m; ++i) out[b0 + i] = vals[codes[b0 + i]] * scale;
  }
}

// Nearest map code of each x / scale: bucket of the float's monotone key, then one
// comparison with the only midpoint that can lie in that bucket (ties -> lower code).
// Matches QuantMap.encode_fast / encode_reference exactly; both look-ups are indexed
// by the bucket (bucket_mid[b] = padded_mids[bucket_low[b]]), so they do not chain.
void encode_block(const TfState& st, const float* x, int m, float* absmax_out, uint8_t* codes) {
  uint32_t amax_bits = 0;  // max |x| on the bit pattern: orders like the value for x >= 0
  for (int i = 0; i < m; ++i) {
    const uint32_t a = bits_of(x[i]) & 0x7FFFFFFFu;
    amax_bits = a > amax_bits ? a : amax_bits;
  }
  const float amax = float_of(amax_bits);
  *absmax_out = amax;
  const float scale = amax > 0.0f ? amax : 1.0f;
  const int32_t* low_of = st.bucket_low;
  const float* mids = st.bucket_mid;
  const int32_t shift = st.shift, offset = st.top + 1, last = st.n_buckets - 1;
  alignas(64) int32_t wide[TILE];  // int32 codes first: keeps the loop one element width (vectorizes)
  for (int i = 0; i < m; ++i) {
    const float y = x[i] / scale;
    const int32_t b = int32_t(bits_of(y));
    const int32_t mag = b & 0x7FFFFFFF;
    int32_t bucket = ((b < 0 ? -mag : mag) >> shift) + offset;
    bucket = bucket < 0 ? 0 : (bucket > last ? last : bucket);  // NaN / out of range stay in bounds
    wide[i] = low_of[bucket] + (y > mids[bucket] ? 1 : 0);
  }
  for (int i = 0; i < m; ++i) codes[i] = uint8_t(wide[i]);
}

}  // namespace

void decode_state(const TfState& st, int64_t start, int n, float* out) {
  switch (st.codec) {
    case C_FP32: load_floats(F32, st.data, start, n, out); break;
    case C_BF16: load_floats(BF16, st.data, start, n, out); break;
    case C_Q8: decode_codes(st, static_cast<const uint8_t*>(st.data) + start, start, n, out); break;
    case C_Q4: {  // element 2i: low nibble of byte i, 2i+1: high nibble (start is even)
      alignas(64) uint8_t codes[TILE];
      const uint8_t* packed = static_cast<const uint8_t*>(st.data) + start / 2;
      const int pairs = (n + 1) / 2;
      for (int i = 0; i < pairs; ++i) {
        codes[2 * i] = packed[i] & 0x0F;
        codes[2 * i + 1] = packed[i] >> 4;
      }
      decode_codes(st, codes, start, n, out);
      break;
    }
  }
}

void encode_state(const TfState& st, int64_t start, int n, const float* x) {
  switch (st.codec) {
    case C_FP32: store_floats(F32, st.data, start, n, x); break;
    case C_BF16: store_floats(BF16, st.data, start, n, x); break;
    case C_Q8: {
      uint8_t* codes = static_cast<uint8_t*>(st.data) + start;
      for (int b0 = 0; b0 < n; b0 += st.block) {
        const int m = n - b0 < st.block ? n - b0 : st.block;
        encode_block(st, x + b0, m, st.absmax + (start + b0) / st.block, codes + b0);
      }
      break;
    }
    case C_Q4: {
      alignas(64) uint8_t codes[TILE + 1];
      for (int b0 = 0; b0 < n; b0 += st.block) {
        const int m = n - b0 < st.block ? n - b0 : st.block;
        encode_block(st, x + b0, m, st.absmax + (start + b0) / st.block, codes + b0);
      }
      codes[n] = 0;  // odd tail: the high nibble of the last byte is code 0
      uint8_t* packed = static_cast<uint8_t*>(st.data) + start / 2;
      const int pairs = (n + 1) / 2;
      for (int i = 0; i < pairs; ++i) packed[i] = uint8_t(codes[2 * i] | (codes[2 * i + 1] << 4));
      break;
    }
  }
}

}  // namespace tf

extern "C" {

// Whole-tensor codec passes, for rules without a fused tile (impl "native_codec"):
// the rule runs in PyTorch, decode and encode run here, tile by tile as in tf_step.
void tf_decode(const TfState* st, int64_t n, float* out, int n_threads) {
  const int64_t tiles = (n + tf::TILE - 1) / tf::TILE;
#pragma omp parallel for schedule(dynamic, 16) num_threads(n_threads) if (tiles > 8)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t start = t * tf::TILE;
    tf::decode_state(*st, start, int(n - start < tf::TILE ? n - start : tf::TILE), out + start);
  }
}

void tf_encode(const TfState* st, int64_t n, const float* x, int n_threads) {
  const int64_t tiles = (n + tf::TILE - 1) / tf::TILE;
#pragma omp parallel for schedule(dynamic, 16) num_threads(n_threads) if (tiles > 8)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t start = t * tf::TILE;
    tf::encode_state(*st, start, int(n - start < tf::TILE ? n - start : tf::TILE), x + start);
  }
}

}  // extern "C"
