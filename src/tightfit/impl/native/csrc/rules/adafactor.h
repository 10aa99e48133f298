// Adafactor, torch convention (rules/adafactor.py), applied from the updated row/column
// statistics r (job.row), c (job.col): U = g / sqrt(max(r_i c_j / mean(r), eps1^2)).
// c = [max(mean r, eps1), eps1^2, clip divisor max(1, RMS(U)/d), alpha, decay factor
// 1-lr*wd (1: none), b1, 1-b1, has momentum, maximize]; the driver is impl/native/adafactor.py.
// State: exp_avg (with momentum).
#pragma once

#include <cmath>

#include "../abi.h"
#include "../reductions.h"

namespace tf {

// U from r_i, c_j and g in rules/adafactor.py's order ((r_i c_j) / mean(r), clamp, rsqrt).
inline float adafactor_u(float row_mean, float eps1_sq, float ri, float cj, float g) {
  const float v = ri * cj / row_mean;
  const float clamped = v < eps1_sq ? eps1_sq : v;  // clamp(min=eps1^2); NaN stays NaN
  return (1.0f / std::sqrt(clamped)) * g;           // torch's rsqrt is 1 / sqrt
}

inline void adafactor_tile(const TfJob& job, int64_t start, float* __restrict p, const float* __restrict g_in,
                           float* const* s, int n) {
  const float row_mean = job.c[0], eps1_sq = job.c[1];
  const float clip = job.c[2], alpha = job.c[3], decay = job.c[4], b1 = job.c[5], one_m_b1 = job.c[6];
  const bool momentum = job.c[7] != 0.0f, decayed = decay != 1.0f, maximize = job.c[8] != 0.0f;
  float* __restrict m = s[0];
  alignas(64) float negated[TILE];
  const float* g = g_in;
  if (maximize) {
    for (int i = 0; i < n; ++i) negated[i] = -g_in[i];
    g = negated;
  }
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

}  // namespace tf

extern "C" {

// Sum of U^2 for the RMS(U) clip: the same U as adafactor_tile (U is odd in g, so
// maximize does not change its square).
double tf_adafactor_sumsq(const TfJob* job) {
  const float row_mean = job->c[0], eps1_sq = job->c[1];
  return tf::sum_of_u_squared(
      job, [=](float ri, float cj, float g) { return tf::adafactor_u(row_mean, eps1_sq, ri, cj, g); });
}

}  // extern "C"
