// Param / grad element types: tiles of them to float32 and back, and the usable-gradient scan.
#pragma once

#include <cstdint>
#include <cstring>

#include "abi.h"

namespace tf {

inline uint32_t bits_of(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float float_of(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }

// n elements from src[start...] of dtype as floats into out.
void load_floats(int32_t dtype, const void* src, int64_t start, int n, float* out);
// n floats into dst[start...] of dtype (bf16: round to nearest even, as c10::BFloat16).
void store_floats(int32_t dtype, void* dst, int64_t start, int n, const float* in);
// True when any element is NaN, +-Inf or has |g| >= the limit (a power of two, as float32 bits).
bool any_beyond_limit(int32_t dtype, const void* src, int64_t n, uint32_t limit_bits, int threads);
// The same over elements [start, start + n), on the calling thread.
bool beyond_limit_in(int32_t dtype, const void* src, int64_t start, int64_t n, uint32_t limit_bits);
constexpr int64_t SCAN_CHUNK = 65536;  // elements per scan work item

}  // namespace tf
