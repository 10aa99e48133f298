// State codecs: fp32/bf16 copies; blockwise 8/4-bit codes (quant.h), by the vector path
// of the instruction set this library is built for (build.py ISA_LEVELS).
#include "codecs.h"

#include "dtypes.h"
#include "quant.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#include "quant_avx512.h"
#ifdef __AVX512VBMI__
#define TF_ISA "avx512vbmi"
#else
#define TF_ISA "avx512"
#endif
#elif defined(__AVX2__) && defined(__FMA__)
#include "quant_avx2.h"
#define TF_ISA "avx2"
#else
#include "quant_portable.h"
#define TF_ISA "portable"
#endif

namespace tf {

void decode_state(const TfState& st, int64_t start, int n, float* out) {
  switch (st.codec) {
    case C_FP32: load_floats(F32, st.data, start, n, out); break;
    case C_BF16: load_floats(BF16, st.data, start, n, out); break;
    case C_Q8:
      simd::decode_bytes(quant_of(st), static_cast<const uint8_t*>(st.data) + start, st.absmax + start / st.block,
                         n, out);
      break;
    case C_Q4:  // element 2i: low nibble of byte i, 2i+1: high nibble (start is even)
      simd::decode_nibbles(quant_of(st), static_cast<const uint8_t*>(st.data) + start / 2,
                           st.absmax + start / st.block, n, out);
      break;
  }
}

void encode_state(const TfState& st, int64_t start, int n, const float* x) {
  switch (st.codec) {
    case C_FP32: store_floats(F32, st.data, start, n, x); break;
    case C_BF16: store_floats(BF16, st.data, start, n, x); break;
    case C_Q8:
      simd::encode_blocks(quant_of(st), x, n, st.absmax + start / st.block, static_cast<uint8_t*>(st.data) + start);
      break;
    case C_Q4: {
      alignas(64) uint8_t codes[TILE + 1];
      simd::encode_blocks(quant_of(st), x, n, st.absmax + start / st.block, codes);
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

// The instruction-set level the codecs' vector paths were built for.
const char* tf_isa() { return TF_ISA; }

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
