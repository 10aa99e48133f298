#include "dtypes.h"

namespace tf {

void load_floats(int32_t dtype, const void* src, int64_t start, int n, float* out) {
  switch (dtype) {
    case F32: std::memcpy(out, static_cast<const float*>(src) + start, sizeof(float) * n); break;
    case BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src) + start;
      for (int i = 0; i < n; ++i) out[i] = float_of(uint32_t(s[i]) << 16);
      break;
    }
    case F16: {
      const _Float16* s = static_cast<const _Float16*>(src) + start;
      for (int i = 0; i < n; ++i) out[i] = float(s[i]);
      break;
    }
  }
}

void store_floats(int32_t dtype, void* dst, int64_t start, int n, const float* in) {
  switch (dtype) {
    case F32: std::memcpy(static_cast<float*>(dst) + start, in, sizeof(float) * n); break;
    case BF16: {  // round to nearest even; NaN -> 0x7FC0 (as c10::BFloat16)
      uint16_t* d = static_cast<uint16_t*>(dst) + start;
      for (int i = 0; i < n; ++i) {
        uint32_t u = bits_of(in[i]);
        uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
        d[i] = uint16_t((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : r);
      }
      break;
    }
    case F16: {
      _Float16* d = static_cast<_Float16*>(dst) + start;
      for (int i = 0; i < n; ++i) d[i] = _Float16(in[i]);
      break;
    }
  }
}

// On the magnitude bits one unsigned comparison does all three: NaN and Inf have the
// largest exponent. bf16 is float32's upper half; fp16's largest finite value (65504)
// is below every limit, so only its NaN/Inf pattern counts.
bool beyond_limit_in(int32_t dtype, const void* src, int64_t start, int64_t n, uint32_t limit_bits) {
  int bad = 0;
  switch (dtype) {
    case F32: {
      const uint32_t* s = static_cast<const uint32_t*>(src) + start;
#pragma omp simd reduction(| : bad)
      for (int64_t i = 0; i < n; ++i) bad |= (s[i] & 0x7FFFFFFFu) >= limit_bits;
      break;
    }
    case BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src) + start;
      const uint16_t limit16 = uint16_t(limit_bits >> 16);
#pragma omp simd reduction(| : bad)
      for (int64_t i = 0; i < n; ++i) bad |= (s[i] & 0x7FFFu) >= limit16;
      break;
    }
    case F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src) + start;
#pragma omp simd reduction(| : bad)
      for (int64_t i = 0; i < n; ++i) bad |= (s[i] & 0x7C00u) == 0x7C00u;
      break;
    }
  }
  return bad != 0;
}

bool any_beyond_limit(int32_t dtype, const void* src, int64_t n, uint32_t limit_bits, int threads) {
  const int64_t chunks = (n + SCAN_CHUNK - 1) / SCAN_CHUNK;
  int bad = 0;
#pragma omp parallel for reduction(| : bad) num_threads(threads) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t start = c * SCAN_CHUNK;
    bad |= beyond_limit_in(dtype, src, start, n - start < SCAN_CHUNK ? n - start : SCAN_CHUNK, limit_bits);
  }
  return bad != 0;
}

}  // namespace tf
