// AdEMAMix (rules/ademamix.py). c = Rule.scalars order: [b1, 1-b1, b2, 1-b2, b3_t, 1-b3_t,
// alpha_t, decay factor 1-lr*wd, bias1 1-b1^t, bias2_sqrt, eps, lr, kappa of m1, kappa of m2]
// (kappas inf: states not lossy). States: exp_avg m1 (fast), exp_avg_slow m2, exp_avg_sq v.
// m1 and m2 are held to [-kappa sqrt(v), kappa sqrt(v)] for the update (inf * 0 = NaN
// compares false: no clamp), as ademamix_apply does.
#pragma once

#include <cmath>

#include "../abi.h"

namespace tf {

inline float ademamix_held(float moment, float root, float bound) {
  const float limit = root * bound;
  return std::fabs(moment) > limit ? std::copysign(limit, moment) : moment;
}

inline void ademamix_tile(const TfJob& job, int64_t, float* __restrict p, const float* __restrict g, float* const* s,
                          int n) {
  const float b1 = job.c[0], one_m_b1 = job.c[1], b2 = job.c[2], one_m_b2 = job.c[3];
  const float b3 = job.c[4], one_m_b3 = job.c[5], alpha = job.c[6], decay = job.c[7];
  const float bias1 = job.c[8], bias2_sqrt = job.c[9], eps = job.c[10], lr = job.c[11];
  const float fast_bound = job.c[12], slow_bound = job.c[13];
  float* __restrict fast = s[0];
  float* __restrict slow = s[1];
  float* __restrict second = s[2];
  for (int i = 0; i < n; ++i) {
    const float gi = g[i];
    const float m1 = fast[i] * b1 + one_m_b1 * gi;
    const float m2 = slow[i] * b3 + one_m_b3 * gi;
    const float v = second[i] * b2 + one_m_b2 * (gi * gi);
    const float root = std::sqrt(v);
    const float mixed = ademamix_held(m1, root, fast_bound) / bias1 + alpha * ademamix_held(m2, root, slow_bound);
    p[i] = p[i] * decay - lr * (mixed / (root / bias2_sqrt + eps));
    fast[i] = m1;
    slow[i] = m2;
    second[i] = v;
  }
}

}  // namespace tf
