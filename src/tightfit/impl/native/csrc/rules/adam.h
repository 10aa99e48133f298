// Adam / AdamW (rules/adamw.py). c = Rule.scalars order: [1-b1, b2, 1-b2, decay factor
// 1-lr*wd (decoupled), bias2_sqrt, eps, step size lr/bias1, coupled wd (Adam's L2, else 0),
// moment bound kappa (inf: not lossy), maximize]. States: exp_avg m, exp_avg_sq v.
// m is held to [-kappa sqrt(v), kappa sqrt(v)] for the update (clamp_moment; kappa = inf:
// no clamp, and inf * 0 = NaN compares false, as in the rule).
#pragma once

#include <cmath>

#include "../abi.h"

namespace tf {

// One loop per (maximize, coupled decay): the flags are tested once per tile.
template <bool MAXIMIZE, bool COUPLED>
inline void adam_loop(const TfJob& job, float* __restrict p, const float* __restrict g, float* __restrict m,
                      float* __restrict v, int n) {
  const float one_m_b1 = job.c[0], b2 = job.c[1], one_m_b2 = job.c[2], decay = job.c[3];
  const float bias2_sqrt = job.c[4], eps = job.c[5], step_size = job.c[6], coupled_wd = job.c[7];
  const float kappa = job.c[8];
  for (int i = 0; i < n; ++i) {
    float gi = MAXIMIZE ? -g[i] : g[i];
    if (COUPLED) gi = gi + coupled_wd * p[i];  // Adam: g <- g + wd * theta (the decay factor is then 1)
    const float mi = m[i] + one_m_b1 * (gi - m[i]);
    const float vi = v[i] * b2 + one_m_b2 * (gi * gi);
    const float root = std::sqrt(vi);
    const float limit = root * kappa;
    const float held = std::fabs(mi) > limit ? std::copysign(limit, mi) : mi;
    const float denom = root / bias2_sqrt + eps;
    p[i] = p[i] * decay - step_size * (held / denom);
    m[i] = mi;
    v[i] = vi;
  }
}

inline void adam_tile(const TfJob& job, int64_t, float* __restrict p, const float* __restrict g, float* const* s,
                      int n) {
  const bool maximize = job.c[9] != 0.0f, coupled = job.c[7] != 0.0f;
  if (maximize)
    coupled ? adam_loop<true, true>(job, p, g, s[0], s[1], n) : adam_loop<true, false>(job, p, g, s[0], s[1], n);
  else
    coupled ? adam_loop<false, true>(job, p, g, s[0], s[1], n) : adam_loop<false, false>(job, p, g, s[0], s[1], n);
}

}  // namespace tf
