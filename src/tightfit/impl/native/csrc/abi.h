// The C ABI shared with Python (impl/native/jobs.py mirrors these structs with ctypes):
// one parameter's step is one TfJob; each of its encoded states one TfState.
// Bump TF_ABI_VERSION (and jobs.py's) whenever a layout or an id changes.
#pragma once

#include <cstdint>

#define TF_ABI_VERSION 7

namespace tf {

constexpr int TILE = 1024;       // elements per tile: a multiple of every codec block (256, 128)
constexpr int MAX_STATES = 4;    // states a tile streams (AdEMAMix keeps three)
constexpr int N_COEFFS = 16;     // rule coefficients: Rule.scalars(...) in its order

enum DType : int32_t { F32 = 0, BF16 = 1, F16 = 2 };
enum CodecId : int32_t { C_FP32 = 0, C_BF16 = 1, C_Q8 = 2, C_Q4 = 3 };
// The caller already found the gradient usable (a factored rule's first pass): tf_step skips its scan.
constexpr int32_t F_GRAD_CHECKED = 1;

}  // namespace tf

extern "C" {

// An 8-bit map's segment tables (impl/native/segments.py): its nearest code by arithmetic.
// Segment j covers t = |y| in (upper[j-1], upper[j]]; the k-th of its n[j] interior
// midpoints lies at u = k, u = t * d - b (kind 0) or sqrt(max(t - c, 0)) * d - b (kind 1).
struct TfSegments {
  int32_t kind;
  int32_t neg_base;            // code of +0 (the number of negative midpoints)
  int32_t mirrored;            // negative midpoints mirror the lowest `mirrored` nonnegative ones
  int32_t binade_shift;        // table entry: (exponent field >> shift) - ((127 >> shift) - 31), at least 0
  int32_t binade_segment[32];  // segment of each entry's lowest t
  float upper[16];
  float d[16];
  float b[16];
  float c[16];
  int32_t base[16];            // nonnegative midpoints at or below segment j's lower threshold
  int32_t n[16];
};

// One encoded state tensor (see tightfit/codecs): for fp32/bf16 `data` holds the
// values; for 8/4-bit it holds the codes and `absmax` one float per block.
struct TfState {
  int32_t codec;              // tf::CodecId
  int32_t block;
  void* data;
  float* absmax;
  const float* values;           // map values (decode)
  const int32_t* bucket_packed;  // per bucket: lowest code | midpoint key offset << 8 (quant.h)
  const float* midpoints;        // n_values: the map's midpoints, then +inf (4-bit encode in registers)
  int32_t shift;                 // bucket = (monotone key >> shift) + top + 1
  int32_t top;
  int32_t n_buckets;
  int32_t n_values;              // map size (a NaN encodes to the last code, as torch.bucketize)
  const TfSegments* segments;    // null: encode by the bucket table
};

struct TfJob {
  int32_t tile;              // rule tile id: tf_rule_tile(name)
  int32_t flags;             // tf::F_GRAD_CHECKED
  int32_t param_dtype;       // tf::DType
  int32_t grad_dtype;
  int32_t n_states;
  int32_t n_threads;
  uint32_t grad_limit_bits;  // float32 bits of the rule's gradient limit: |g| at or above it skips
  int32_t pad_;
  int64_t numel;
  void* param;
  const void* grad;
  float* step;               // 0-d float32: +1 when the update happens
  int64_t* skips;            // 0-d int64: +1 when the gradient is not usable (NaN/Inf/over the limit)
  float c[tf::N_COEFFS];     // the rule's scalars (Rule.scalars order), as float32
  TfState states[tf::MAX_STATES];
  // Factored rules on a (rows x cols) matrix: per-row and per-column statistics or
  // factors (see rules/adafactor.h, came.h, adafactor_hf.h), and CAME's second pair.
  const float* row;          // rows floats
  const float* col;          // cols floats
  int64_t cols;
  const float* row2;
  const float* col2;
};

}  // extern "C"

namespace tf {

// A rule tile: the update of one tile [start, start + n) of the parameter, on float32
// views: p (param, updated in place), g (grad, read only), s[k] (state k, updated in
// place). A view is the tensor's own memory when it is float32, else a buffer decoded
// before and encoded after. `start` locates the tile in the tensor (factored rules index
// rows by it).
using TileFn = void (*)(const TfJob& job, int64_t start, float* __restrict p, const float* __restrict g,
                        float* const* s, int n);

}  // namespace tf
