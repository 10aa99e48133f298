// SGD (rules/sgd.py). c = [lr, momentum, 1-dampening, weight decay, maximize, nesterov,
// first step]; momentum != 0 <=> the rule keeps momentum_buffer (s[0]), weight decay != 0
// <=> the L2 term is added.
#pragma once

#include "../abi.h"

namespace tf {

// d = (maximize ? -g : g) + wd * theta, one loop per flag pair.
template <bool MAXIMIZE, bool DECAY>
inline void sgd_direction(const float* __restrict p, const float* __restrict g, float wd, float* __restrict d, int n) {
  for (int i = 0; i < n; ++i) {
    const float gi = MAXIMIZE ? -g[i] : g[i];
    d[i] = DECAY ? gi + wd * p[i] : gi;
  }
}

inline void sgd_tile(const TfJob& job, int64_t, float* __restrict p, const float* __restrict g, float* const* s,
                     int n) {
  const float lr = job.c[0], mom = job.c[1], one_m_damp = job.c[2], wd = job.c[3];
  const bool maximize = job.c[4] != 0.0f, nesterov = job.c[5] != 0.0f, first_step = job.c[6] != 0.0f;
  alignas(64) float d[TILE];
  if (maximize)
    wd != 0.0f ? sgd_direction<true, true>(p, g, wd, d, n) : sgd_direction<true, false>(p, g, wd, d, n);
  else
    wd != 0.0f ? sgd_direction<false, true>(p, g, wd, d, n) : sgd_direction<false, false>(p, g, wd, d, n);
  if (mom == 0.0f) {
    for (int i = 0; i < n; ++i) p[i] = p[i] - lr * d[i];
    return;
  }
  float* __restrict buf = s[0];
  if (first_step)
    for (int i = 0; i < n; ++i) buf[i] = d[i];
  else
    for (int i = 0; i < n; ++i) buf[i] = buf[i] * mom + one_m_damp * d[i];
  if (nesterov)
    for (int i = 0; i < n; ++i) p[i] = p[i] - lr * (d[i] + mom * buf[i]);
  else
    for (int i = 0; i < n; ++i) p[i] = p[i] - lr * buf[i];
}

}  // namespace tf
