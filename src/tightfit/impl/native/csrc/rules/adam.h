// Adam / AdamW (rules/adamw.py). c = Rule.scalars order: [1-b1, b2, 1-b2, decay factor
// 1-lr*wd (decoupled), bias2_sqrt, eps, step size lr/bias1, coupled wd (Adam's L2, else 0),
// moment bound kappa (inf: not lossy), maximize]. States: exp_avg m, exp_avg_sq v.
// m is held to [-kappa sqrt(v), kappa sqrt(v)] for the update (clamp_moment; kappa = inf:
// no clamp, and inf * 0 = NaN compares false, as in the rule).
#pragma once

#include <cmath>

#include "../abi.h"

namespace tf {

inline void adam_tile(const TfJob& job, int64_t, float* __restrict p, float* __restrict g, float* const* s, int n) {
  const float one_m_b1 = job.c[0], b2 = job.c[1], one_m_b2 = job.c[2], decay = job.c[3];
  const float bias2_sqrt = job.c[4], eps = job.c[5], step_size = job.c[6], coupled_wd = job.c[7];
  const float kappa = job.c[8];
  const bool maximize = job.c[9] != 0.0f;
  float* __restrict m = s[0];
  float* __restrict v = s[1];
  if (maximize)
    for (int i = 0; i < n; ++i) g[i] = -g[i];
  if (coupled_wd != 0.0f)  // Adam: g <- g + wd * theta (the decay factor is then 1)
    for (int i = 0; i < n; ++i) g[i] = g[i] + coupled_wd * p[i];
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

}  // namespace tf
