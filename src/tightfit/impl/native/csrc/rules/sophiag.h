// SophiaG (rules/sophia.py). c = [decay factor 1-lr*wd, b1, 1-b1, rho*bs, lr, maximize].
// States: exp_avg m, hessian h (the Hessian EMA is only read here).
#pragma once

#include <cmath>

#include "../abi.h"

namespace tf {

template <bool MAXIMIZE>
inline void sophiag_loop(const TfJob& job, float* __restrict p, const float* __restrict g, float* __restrict m,
                         const float* __restrict h, int n) {
  const float decay = job.c[0], b1 = job.c[1], one_m_b1 = job.c[2], rho_bs = job.c[3], lr = job.c[4];
  for (int i = 0; i < n; ++i) {
    const float gi = MAXIMIZE ? -g[i] : g[i];
    const float mi = m[i] * b1 + one_m_b1 * gi;
    float ratio = std::fabs(mi) / (rho_bs * h[i] + 1e-15f);
    ratio = ratio > 1.0f ? 1.0f : ratio;  // clamp(max=1); NaN stays NaN
    // torch.sign (0 -> 0); written without branches so that AVX2 vectorizes it too
    const float direction = float(mi > 0.0f) - float(mi < 0.0f);
    p[i] = p[i] * decay - (lr * direction) * ratio;
    m[i] = mi;
  }
}

inline void sophiag_tile(const TfJob& job, int64_t, float* __restrict p, const float* __restrict g, float* const* s,
                         int n) {
  if (job.c[5] != 0.0f)  // maximize
    sophiag_loop<true>(job, p, g, s[0], s[1], n);
  else
    sophiag_loop<false>(job, p, g, s[0], s[1], n);
}

}  // namespace tf
