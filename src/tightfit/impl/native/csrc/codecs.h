// State codecs (tightfit/codecs): a tile of an encoded state to floats and back.
#pragma once

#include <cstdint>

#include "abi.h"

namespace tf {

// Elements [start, start + n) of the state, decoded into out (start: a multiple of TILE).
void decode_state(const TfState& st, int64_t start, int n, float* out);
// x (n floats) encoded into elements [start, start + n): fp32/bf16 stored, 8/4-bit per
// block the new absmax and each element's nearest map code.
void encode_state(const TfState& st, int64_t start, int n, const float* x);

}  // namespace tf
