// Fused CPU optimizer step: one pass per tile of TILE elements.
//
// Per tile: load param + grad into float buffers, decode each state into a float
// buffer, apply the rule, store the param, encode each state (new per-block absmax,
// nearest map code via the bucket table of tightfit.codecs.maps.QuantMap). Every
// stage is a short loop over an L1-resident float buffer, so the compiler vectorizes
// it (gathers for map look-ups) and the stages compose: one decode/encode per codec,
// one update per rule, chosen per tile, never per element.
//
// Math mirrors tightfit/rules/*.py operation by operation (compile with
// -ffp-contract=off); the scalar coefficients are computed in Python, exactly as the
// rule functions compute them, and arrive here as floats.
//
// Plain C ABI, no torch headers: builds in about a second.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int TILE = 1024;       // multiple of every codec block (256, 128)
constexpr int MAX_STATES = 2;

enum DType : int32_t { F32 = 0, BF16 = 1, F16 = 2 };
enum CodecId : int32_t { C_FP32 = 0, C_BF16 = 1, C_Q8 = 2, C_Q4 = 3 };
enum RuleId : int32_t {
  R_ADAMW = 0, R_LION = 1, R_SGD = 2, R_SOPHIAG = 3, R_ADAFACTOR = 4, R_CAME = 5, R_ADAFACTOR_HF = 6,
};
enum Flags : int32_t {
  F_MAXIMIZE = 1, F_COUPLED_WD = 2, F_NESTEROV = 4, F_FIRST_STEP = 8, F_MOMENTUM = 16,
  F_GRAD_CHECKED = 32,  // the caller already found the gradient finite: tf_step skips its scan
};

}  // namespace

extern "C" {

// One encoded state tensor (see tightfit/codecs): for fp32/bf16 `data` holds the
// values; for 8/4-bit it holds the codes and `absmax` one float per block.
struct TfState {
  int32_t codec;
  int32_t block;
  void* data;
  float* absmax;
  const float* values;        // map values (decode)
  const float* bucket_mid;    // the one midpoint that can lie in each bucket, or +inf (encode)
  const int32_t* bucket_low;  // code of each bucket's lowest float (encode)
  int32_t shift;              // bucket = (monotone key >> shift) + top + 1
  int32_t top;
  int32_t n_buckets;
  int32_t pad_;
};

struct TfJob {
  int32_t rule;
  int32_t flags;
  int32_t param_dtype;
  int32_t grad_dtype;
  int32_t n_states;
  int32_t n_threads;
  uint32_t grad_limit_bits;  // float32 bits of the rule's gradient limit: |g| at or above it skips
  int32_t pad_;
  int64_t numel;
  void* param;
  const void* grad;
  float* step;           // 0-d float32: +1 when the update happens
  int64_t* skips;        // 0-d int64: +1 when the gradient is not usable (NaN/Inf/over the limit)
  float c[10];           // rule coefficients (see jobs.py RULE_CALLS)
  TfState states[MAX_STATES];
  // Factored rules on a (rows x cols) matrix. R_ADAFACTOR: the row and column statistics
  // (already updated for this step). R_CAME, R_ADAFACTOR_HF: the factors (R/mean R)^-1/2
  // and C^-1/2 of the second moment (rules/adafactor.py factored_rsqrt_factors).
  const float* row;      // rows floats
  const float* col;      // cols floats
  int64_t cols;
  // R_CAME: the same factors of the instability statistics (the confidence).
  const float* row2;
  const float* col2;
};

}  // extern "C"

namespace {

inline uint32_t bits_of(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float float_of(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }

// ---- param / grad dtypes ---------------------------------------------------------
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

// True when any element is NaN, +-Inf or has |g| >= the limit (a power of two, given as
// float32 bits). On the magnitude bits one unsigned comparison does all three: NaN and
// Inf have the largest exponent. bf16 is float32's upper half; fp16's largest finite
// value (65504) is below every limit, so only its NaN/Inf pattern counts.
bool any_beyond_limit(int32_t dtype, const void* src, int64_t n, uint32_t limit_bits, int threads) {
  int bad = 0;
  switch (dtype) {
    case F32: {
      const uint32_t* s = static_cast<const uint32_t*>(src);
#pragma omp parallel for simd reduction(| : bad) num_threads(threads) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) bad |= (s[i] & 0x7FFFFFFFu) >= limit_bits;
      break;
    }
    case BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      const uint16_t limit16 = uint16_t(limit_bits >> 16);
#pragma omp parallel for simd reduction(| : bad) num_threads(threads) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) bad |= (s[i] & 0x7FFFu) >= limit16;
      break;
    }
    case F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
#pragma omp parallel for simd reduction(| : bad) num_threads(threads) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) bad |= (s[i] & 0x7C00u) == 0x7C00u;
      break;
    }
  }
  return bad != 0;
}

// ---- codecs ----------------------------------------------------------------------
void decode_codes(const TfState& st, const uint8_t* codes, int64_t start, int n, float* out) {
  const float* vals = st.values;
  const int B = st.block;
  for (int b0 = 0; b0 < n; b0 += B) {
    const int m = n - b0 < B ? n - b0 : B;
    const float scale = st.absmax[(start + b0) / B];
    for (int i = 0; i < m; ++i) out[b0 + i] = vals[codes[b0 + i]] * scale;
  }
}

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

// ---- rules (mirror tightfit/rules/*.py; c[] = coefficients from RULE_SCALARS) ------
// AdamW: c = [1-b1, b2, 1-b2, 1-lr*wd, bias2_sqrt, eps, lr/bias1, wd, moment bound kappa]
// m is held to [-kappa sqrt(v), kappa sqrt(v)] for the update (rules/adamw.py clamp_moment;
// kappa = inf: no clamp, and inf * 0 = NaN compares false, as in the rule).
void adamw_tile(const TfJob& job, float* __restrict p, float* __restrict g, float* __restrict m,
                float* __restrict v, int n) {
  const float one_m_b1 = job.c[0], b2 = job.c[1], one_m_b2 = job.c[2], decay = job.c[3];
  const float bias2_sqrt = job.c[4], eps = job.c[5], step_size = job.c[6], wd = job.c[7];
  const float kappa = job.c[8];
  if (job.flags & F_MAXIMIZE)
    for (int i = 0; i < n; ++i) g[i] = -g[i];
  if (job.flags & F_COUPLED_WD)  // Adam: g <- g + wd * theta (decay is then 1)
    for (int i = 0; i < n; ++i) g[i] = g[i] + wd * p[i];
  for (int i = 0; i < n; ++i) {
    const float mi = m[i] + one_m_b1 * (g[i] - m[i]);
    const float vi = v[i] * b2 + one_m_b2 * (g[i] * g[i]);
    const float root = std::sqrt(vi);
    const float limit = root * kappa;
    const float held = std::fabs(mi) > limit ? std::copysign(limit, mi) : mi;
    const float denom = root / bias2_sqrt + eps;
    p[i] = p[i] * decay - step_size * (held / denom);
    m[i] = mi;
    v[i] = vi;
  }
}

// Lion: c = [b1, 1-b1, b2, 1-b2, 1-lr*wd, lr]
void lion_tile(const TfJob& job, float* __restrict p, const float* __restrict g, float* __restrict m, int n) {
  const float b1 = job.c[0], one_m_b1 = job.c[1], b2 = job.c[2], one_m_b2 = job.c[3];
  const float decay = job.c[4], lr = job.c[5];
  for (int i = 0; i < n; ++i) {
    const float c = m[i] * b1 + one_m_b1 * g[i];
    const float direction = c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : 0.0f);  // torch.sign (0 -> 0)
    p[i] = p[i] * decay - lr * direction;
    m[i] = m[i] * b2 + one_m_b2 * g[i];
  }
}

// SGD: c = [lr, momentum, 1-dampening, wd]
void sgd_tile(const TfJob& job, float* __restrict p, float* __restrict g, float* __restrict buf, int n) {
  const float lr = job.c[0], mom = job.c[1], one_m_damp = job.c[2], wd = job.c[3];
  if (job.flags & F_MAXIMIZE)
    for (int i = 0; i < n; ++i) g[i] = -g[i];
  if (job.flags & F_COUPLED_WD)
    for (int i = 0; i < n; ++i) g[i] = g[i] + wd * p[i];
  if (!(job.flags & F_MOMENTUM)) {
    for (int i = 0; i < n; ++i) p[i] = p[i] - lr * g[i];
    return;
  }
  if (job.flags & F_FIRST_STEP)
    for (int i = 0; i < n; ++i) buf[i] = g[i];
  else
    for (int i = 0; i < n; ++i) buf[i] = buf[i] * mom + one_m_damp * g[i];
  if (job.flags & F_NESTEROV)
    for (int i = 0; i < n; ++i) p[i] = p[i] - lr * (g[i] + mom * buf[i]);
  else
    for (int i = 0; i < n; ++i) p[i] = p[i] - lr * buf[i];
}

// SophiaG: c = [1-lr*wd, b1, 1-b1, rho*bs, lr]; the Hessian EMA h is only read.
void sophiag_tile(const TfJob& job, float* __restrict p, float* __restrict g, float* __restrict m,
                  const float* __restrict h, int n) {
  const float decay = job.c[0], b1 = job.c[1], one_m_b1 = job.c[2], rho_bs = job.c[3], lr = job.c[4];
  if (job.flags & F_MAXIMIZE)
    for (int i = 0; i < n; ++i) g[i] = -g[i];
  for (int i = 0; i < n; ++i) {
    const float mi = m[i] * b1 + one_m_b1 * g[i];
    float ratio = std::fabs(mi) / (rho_bs * h[i] + 1e-15f);
    ratio = ratio > 1.0f ? 1.0f : ratio;  // clamp(max=1); NaN stays NaN
    const float direction = mi > 0.0f ? 1.0f : (mi < 0.0f ? -1.0f : 0.0f);
    p[i] = p[i] * decay - (lr * direction) * ratio;
    m[i] = mi;
  }
}

// Adafactor (torch convention), applied from updated row/col statistics:
// U = g / sqrt(max(r_i c_j / mean(r), eps1^2)), then c = [mean(r) clamped, eps1^2,
// clip divisor max(1, RMS(U)/d), alpha, 1-lr*wd (1: none), beta1, 1-beta1, has_momentum].
// (Defined after for_row_runs, which both of its passes use.)

// ---- factored rules with rsqrt factors (CAME, Adafactor HF convention) -------------
// A tile [start, start+n) of a row-major matrix is a few runs that each lie in one row;
// f(i, j0, k0, len) gets row i and tile elements k0..k0+len-1 = columns j0..j0+len-1, so
// inner loops run over contiguous columns with the row factor hoisted (they vectorize).
template <class F>
inline void for_row_runs(int64_t start, int n, int64_t cols, F&& f) {
  int64_t i = start / cols, j = start - i * cols;
  for (int k = 0; k < n; ++i, j = 0) {
    const int len = int(std::min<int64_t>(cols - j, n - k));
    f(i, j, k, len);
    k += len;
  }
}

// Adafactor (torch convention), see above: U from the row statistic r_i, the column
// statistic c_j and g, in rules/adafactor.py's order ((r_i c_j) / mean(r), clamp, rsqrt).
inline float adafactor_u(float row_mean, float eps1_sq, float ri, float cj, float g) {
  const float v = ri * cj / row_mean;
  const float clamped = v < eps1_sq ? eps1_sq : v;  // clamp(min=eps1^2); NaN stays NaN
  return (1.0f / std::sqrt(clamped)) * g;           // torch's rsqrt is 1 / sqrt
}

void adafactor_tile(const TfJob& job, int64_t start, float* __restrict p, float* __restrict g,
                    float* __restrict m, int n) {
  const float row_mean = job.c[0], eps1_sq = job.c[1];
  const float clip = job.c[2], alpha = job.c[3], decay = job.c[4], b1 = job.c[5], one_m_b1 = job.c[6];
  const bool momentum = job.c[7] != 0.0f, decayed = decay != 1.0f;
  if (job.flags & F_MAXIMIZE)
    for (int i = 0; i < n; ++i) g[i] = -g[i];
  for_row_runs(start, n, job.cols, [&](int64_t i, int64_t j0, int k0, int len) {
    const float ri = job.row[i];
    const float* cj = job.col + j0;
    float* pk = p + k0;
    float* mk = m + k0;
    const float* gk = g + k0;
    for (int k = 0; k < len; ++k) {
      float u = alpha * (adafactor_u(row_mean, eps1_sq, ri, cj[k], gk[k]) / clip);
      if (momentum) {
        u = mk[k] * b1 + one_m_b1 * u;
        mk[k] = u;
      }
      pk[k] = (decayed ? pk[k] * decay : pk[k]) - u;
    }
  });
}

// u = factored_rsqrt(R, C) * g, as PyTorch evaluates it: (row factor * col factor) * g.
inline float factored_u(float row_factor, float col_factor, float g) { return (row_factor * col_factor) * g; }

// CAME: c = [eps1, clip divisor max(1, RMS(u)/clip), b1, 1-b1, eps2, wd*lr, lr, has_wd].
// û = u / divisor and m' = b1 m + (1-b1) û, as rules/came.py came_update; the
// instability pass and the update pass both call these, so they agree bit for bit.
inline float came_u_hat(const TfJob& job, float u) { return u / job.c[1]; }
inline float came_moment(const TfJob& job, float u_hat, float m) { return m * job.c[2] + job.c[3] * u_hat; }

// CAME's update pass: θ ← θ − (wd·lr)·θ − lr · (R'^-1/2 ⊗ C'^-1/2) · m', m ← m'.
void came_tile(const TfJob& job, int64_t start, float* __restrict p, const float* __restrict g,
               float* __restrict m, int n) {
  const float wd_lr = job.c[5], lr = job.c[6];
  const bool decay = job.c[7] != 0.0f;
  for_row_runs(start, n, job.cols, [&](int64_t i, int64_t j0, int k0, int len) {
    const float ri = job.row[i], ri2 = job.row2[i];
    const float* cj = job.col + j0;
    const float* cj2 = job.col2 + j0;
    float* pk = p + k0;
    float* mk = m + k0;
    const float* gk = g + k0;
    for (int k = 0; k < len; ++k) {
      const float mn = came_moment(job, came_u_hat(job, factored_u(ri, cj[k], gk[k])), mk[k]);
      const float direction = (ri2 * cj2[k]) * mn;
      const float pv = decay ? pk[k] - wd_lr * pk[k] : pk[k];
      pk[k] = pv - lr * direction;
      mk[k] = mn;
    }
  });
}

// Adafactor, HF convention: c = [eps1, clip divisor, alpha, b1, 1-b1, wd*alpha, has_wd,
// has_momentum]: u = alpha (û); with momentum m ← b1 m + (1-b1) u, u = m;
// θ ← θ − (wd·alpha)·θ − u (rules/adafactor.py adafactor_hf_update).
void adafactor_hf_tile(const TfJob& job, int64_t start, float* __restrict p, const float* __restrict g,
                       float* __restrict m, int n) {
  const float divisor = job.c[1], alpha = job.c[2], b1 = job.c[3], one_m_b1 = job.c[4], wd_alpha = job.c[5];
  const bool decay = job.c[6] != 0.0f, momentum = job.c[7] != 0.0f;
  for_row_runs(start, n, job.cols, [&](int64_t i, int64_t j0, int k0, int len) {
    const float ri = job.row[i];
    const float* cj = job.col + j0;
    float* pk = p + k0;
    float* mk = m + k0;
    const float* gk = g + k0;
    for (int k = 0; k < len; ++k) {
      float u = alpha * (factored_u(ri, cj[k], gk[k]) / divisor);
      if (momentum) {
        u = mk[k] * b1 + one_m_b1 * u;
        mk[k] = u;
      }
      const float pv = decay ? pk[k] - wd_alpha * pk[k] : pk[k];
      pk[k] = pv - u;
    }
  });
}

// Deterministic row and column sums over a rows x cols matrix. The elements are cut into
// at most 64 chunks of whole tiles, chosen from the shape alone (never the thread count);
// each chunk sums into its own double arrays, and the chunks are added in order
// afterwards, so the sums do not depend on scheduling or on the number of threads.
// Column partials cost chunks x cols doubles, kept at most 1/4 of the matrix's floats.
// tile_fn(start, n, row_acc, col_acc, totals) adds a tile's contributions to row_acc[row],
// col_acc[col] and totals[0..1] (per-chunk scalars, returned summed in chunk order);
// row_out, col_out (zeroed by the caller, summed into) may be null, and so then are the
// accumulators.
struct Totals { double v[2] = {0.0, 0.0}; };

template <class TileFn>
Totals reduce_rows_cols(const TfJob& job, double* row_out, double* col_out, TileFn&& tile_fn) {
  const int64_t n = job.numel, cols = job.cols, rows = n / cols;
  const int64_t tiles = (n + TILE - 1) / TILE;
  int64_t chunks = std::max<int64_t>(1, std::min<int64_t>({64, tiles / 8, rows / 4}));
  const int64_t tiles_per_chunk = (tiles + chunks - 1) / chunks;
  chunks = (tiles + tiles_per_chunk - 1) / tiles_per_chunk;
  const int64_t chunk_elems = tiles_per_chunk * TILE;
  // chunk c touches rows first(c)..last(c) and keeps them at row_part[c + i]: slots
  // first(c)+c..last(c)+c, disjoint from the next chunk's since first(c+1) >= last(c)
  std::vector<double> row_part(row_out ? rows + chunks : 0), col_part(col_out ? chunks * cols : 0);
  std::vector<Totals> totals(chunks);
#pragma omp parallel for schedule(dynamic, 1) num_threads(job.n_threads) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t e0 = c * chunk_elems, e1 = std::min(n, e0 + chunk_elems);
    double* row_acc = row_out ? row_part.data() + c : nullptr;  // indexed by the global row
    double* col_acc = col_out ? col_part.data() + c * cols : nullptr;
    for (int64_t start = e0; start < e1; start += TILE)
      tile_fn(start, int(std::min<int64_t>(TILE, e1 - start)), row_acc, col_acc, totals[c].v);
  }
  Totals total;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t e0 = c * chunk_elems, e1 = std::min(n, e0 + chunk_elems);
    total.v[0] += totals[c].v[0];
    total.v[1] += totals[c].v[1];
    if (row_out) {
      const int64_t first = e0 / cols, last = (e1 - 1) / cols;
      const double* part = row_part.data() + first + c;
      for (int64_t i = first; i <= last; ++i) row_out[i] += part[i - first];
    }
    if (col_out) {
      const double* part = col_part.data() + c * cols;
      for (int64_t j = 0; j < cols; ++j) col_out[j] += part[j];
    }
  }
  return total;
}

void apply_rule(const TfJob& job, float* p, float* g, float (*s)[TILE], int n) {
  switch (job.rule) {
    case R_ADAMW: adamw_tile(job, p, g, s[0], s[1], n); break;
    case R_LION: lion_tile(job, p, g, s[0], n); break;
    case R_SGD: sgd_tile(job, p, g, s[0], n); break;
    case R_SOPHIAG: sophiag_tile(job, p, g, s[0], s[1], n); break;
  }
}

void process_tile(const TfJob& job, int64_t start, int n) {
  alignas(64) float p[TILE];
  alignas(64) float g[TILE];
  alignas(64) float s[MAX_STATES][TILE];
  load_floats(job.param_dtype, job.param, start, n, p);
  load_floats(job.grad_dtype, job.grad, start, n, g);
  for (int k = 0; k < job.n_states; ++k) decode_state(job.states[k], start, n, s[k]);
  switch (job.rule) {  // the factored rules need element indices for their row/col factors
    case R_ADAFACTOR: adafactor_tile(job, start, p, g, s[0], n); break;
    case R_CAME: came_tile(job, start, p, g, s[0], n); break;
    case R_ADAFACTOR_HF: adafactor_hf_tile(job, start, p, g, s[0], n); break;
    default: apply_rule(job, p, g, s, n);
  }
  store_floats(job.param_dtype, job.param, start, n, p);
  for (int k = 0; k < job.n_states; ++k) encode_state(job.states[k], start, n, s[k]);
}

// Sum of u^2 over a matrix for RMS(u) clipping, u = u_of(row stat, col stat, g) per
// element, in double, deterministic (chunked as reduce_rows_cols). The caller has checked
// the gradient is finite.
template <class U>
double sum_of_u_squared(const TfJob* job, U u_of) {
  const int64_t cols = job->cols;
  return reduce_rows_cols(*job, nullptr, nullptr,
      [&](int64_t start, int n, double*, double*, double* total) {
        alignas(64) float g[TILE];
        load_floats(job->grad_dtype, job->grad, start, n, g);
        for_row_runs(start, n, cols, [&](int64_t i, int64_t j0, int k0, int len) {
          const float ri = job->row[i];
          const float* cj = job->col + j0;
          const float* gk = g + k0;
          double sum = 0.0;
#pragma omp simd reduction(+ : sum)
          for (int k = 0; k < len; ++k) {
            const float u = u_of(ri, cj[k], gk[k]);
            sum += double(u) * double(u);
          }
          total[0] += sum;
        });
      }).v[0];
}

}  // namespace

extern "C" {

int tf_abi_version() { return 5; }
int tf_tile_size() { return TILE; }
int tf_job_size() { return int(sizeof(TfJob)); }

// One parameter's step. Unusable gradient (NaN/Inf, or an element at or above the
// rule's limit): a first pass over the gradient finds it and the step is skipped
// entirely (param and states untouched, *skips += 1), unless F_GRAD_CHECKED says the
// caller's own earlier pass found it usable.
// Returns 1 when the update happened, 0 when skipped.
int tf_step(const TfJob* job) {
  const int64_t n = job->numel;
  if (!(job->flags & F_GRAD_CHECKED) &&
      any_beyond_limit(job->grad_dtype, job->grad, n, job->grad_limit_bits, job->n_threads)) {
    *job->skips += 1;
    return 0;
  }
  const int64_t tiles = (n + TILE - 1) / TILE;
  // dynamic chunks of 16 tiles: on a shared CPU a descheduled thread's work is taken over
#pragma omp parallel for schedule(dynamic, 16) num_threads(job->n_threads) if (tiles > 8)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t start = t * TILE;
    process_tile(*job, start, int(n - start < TILE ? n - start : TILE));
  }
  *job->step += 1.0f;
  return 1;
}

// Adafactor's (torch convention) sum of U^2: the same U as adafactor_tile (U is odd in g,
// so maximize does not change its square).
double tf_adafactor_sumsq(const TfJob* job) {
  const float row_mean = job->c[0], eps1_sq = job->c[1];
  return sum_of_u_squared(job, [=](float ri, float cj, float g) { return adafactor_u(row_mean, eps1_sq, ri, cj, g); });
}

// Factored rules' first pass (CAME, Adafactor both conventions): row and column sums of
// S = g^2 + eps1 (c[0]; 0 for the torch convention, which adds none) over the matrix, in double (see reduce_rows_cols), into zeroed row_sum[rows],
// col_sum[cols]; with param_sumsq also the sum of theta^2 (Adafactor's RMS(theta)).
// The same read of g checks it: returns 0 (skip the step) when any element is NaN,
// +-Inf or at or above the rule's limit (as any_beyond_limit), so no sum can overflow.
int tf_factored_stats(const TfJob* job, double* row_sum, double* col_sum, double* param_sumsq) {
  const float eps1 = job->c[0];
  const int64_t cols = job->cols;
  const Totals totals = reduce_rows_cols(*job, row_sum, col_sum,
      [&](int64_t start, int n, double* row_acc, double* col_acc, double* total) {
        alignas(64) float g[TILE];
        load_floats(job->grad_dtype, job->grad, start, n, g);
        int beyond = 0;
        for (int k = 0; k < n; ++k) beyond |= (bits_of(g[k]) & 0x7FFFFFFFu) >= job->grad_limit_bits;
        total[0] += beyond;
        if (param_sumsq) {
          alignas(64) float p[TILE];
          load_floats(job->param_dtype, job->param, start, n, p);
          double sum = 0.0;
#pragma omp simd reduction(+ : sum)
          for (int k = 0; k < n; ++k) sum += double(p[k]) * double(p[k]);
          total[1] += sum;
        }
        for_row_runs(start, n, cols, [&](int64_t i, int64_t j0, int k0, int len) {
          double row = 0.0;
          double* col = col_acc + j0;
          const float* gk = g + k0;
#pragma omp simd reduction(+ : row)
          for (int k = 0; k < len; ++k) {
            const float s = gk[k] * gk[k] + eps1;  // grad * grad + eps1, in float32 as the rule
            row += s;
            col[k] += s;
          }
          row_acc[i] += row;
        });
      });
  if (param_sumsq) *param_sumsq = totals.v[1];
  return totals.v[0] == 0.0;
}

// Second pass of CAME / HF Adafactor: sum of u^2, u = (row factor * col factor) * g.
double tf_factored_sumsq(const TfJob* job) {
  return sum_of_u_squared(job, [](float ri, float cj, float g) { return factored_u(ri, cj, g); });
}

// CAME's third pass: row and column sums of the instability U = (û - m')^2 + eps2 (c[4]),
// with m' the new first moment from the decoded old one (states[0]); nothing is written:
// the update pass (tf_step, R_CAME) recomputes m' bit for bit and only then encodes it,
// so the old m is still there to decode and no full-size float scratch is needed.
void tf_came_instability(const TfJob* job, double* row_sum, double* col_sum) {
  const float eps2 = job->c[4];
  const int64_t cols = job->cols;
  reduce_rows_cols(*job, row_sum, col_sum,
      [&](int64_t start, int n, double* row_acc, double* col_acc, double*) {
        alignas(64) float g[TILE];
        alignas(64) float m[TILE];
        load_floats(job->grad_dtype, job->grad, start, n, g);
        decode_state(job->states[0], start, n, m);
        for_row_runs(start, n, cols, [&](int64_t i, int64_t j0, int k0, int len) {
          const float ri = job->row[i];
          const float* cj = job->col + j0;
          const float* gk = g + k0;
          const float* mk = m + k0;
          double* col = col_acc + j0;
          double row = 0.0;
#pragma omp simd reduction(+ : row)
          for (int k = 0; k < len; ++k) {
            const float u_hat = came_u_hat(*job, factored_u(ri, cj[k], gk[k]));
            const float d = u_hat - came_moment(*job, u_hat, mk[k]);
            const float instability = d * d + eps2;  // (update - exp_avg) ** 2 + eps2
            row += instability;
            col[k] += instability;
          }
          row_acc[i] += row;
        });
      });
}

// Whole-tensor codec passes, for rules without a fused kernel (impl "native_codec"):
// the rule runs in PyTorch, decode and encode run here, tile by tile as in tf_step.
void tf_decode(const TfState* st, int64_t n, float* out, int n_threads) {
  const int64_t tiles = (n + TILE - 1) / TILE;
#pragma omp parallel for schedule(dynamic, 16) num_threads(n_threads) if (tiles > 8)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t start = t * TILE;
    decode_state(*st, start, int(n - start < TILE ? n - start : TILE), out + start);
  }
}

void tf_encode(const TfState* st, int64_t n, const float* x, int n_threads) {
  const int64_t tiles = (n + TILE - 1) / TILE;
#pragma omp parallel for schedule(dynamic, 16) num_threads(n_threads) if (tiles > 8)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t start = t * TILE;
    encode_state(*st, start, int(n - start < TILE ? n - start : TILE), x + start);
  }
}

}  // extern "C"
