// SophiaG (rules/sophia.py). c = [decay factor 1-lr*wd, b1, 1-b1, rho*bs, lr, maximize].
// States: exp_avg m, hessian h (the Hessian EMA is only read here).
#pragma once

#include <cmath>

#include "../abi.h"

namespace tf {

inline void sophiag_tile(const TfJob& job, int64_t, float* __restrict p, float* __restrict g, float* const* s,
                         int n) {
  const float decay = job.c[0], b1 = job.c[1], one_m_b1 = job.c[2], rho_bs = job.c[3], lr = job.c[4];
  const bool maximize = job.c[5] != 0.0f;
  float* __restrict m = s[0];
  const float* __restrict h = s[1];
  if (maximize)
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

}  // namespace tf
