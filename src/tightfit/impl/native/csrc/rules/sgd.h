// SGD (rules/sgd.py). c = [lr, momentum, 1-dampening, weight decay, maximize, nesterov,
// first step]; momentum != 0 <=> the rule keeps momentum_buffer (s[0]), weight decay != 0
// <=> the L2 term is added.
#pragma once

#include "../abi.h"

namespace tf {

inline void sgd_tile(const TfJob& job, int64_t, float* __restrict p, float* __restrict g, float* const* s, int n) {
  const float lr = job.c[0], mom = job.c[1], one_m_damp = job.c[2], wd = job.c[3];
  const bool maximize = job.c[4] != 0.0f, nesterov = job.c[5] != 0.0f, first_step = job.c[6] != 0.0f;
  if (maximize)
    for (int i = 0; i < n; ++i) g[i] = -g[i];
  if (wd != 0.0f)
    for (int i = 0; i < n; ++i) g[i] = g[i] + wd * p[i];
  if (mom == 0.0f) {
    for (int i = 0; i < n; ++i) p[i] = p[i] - lr * g[i];
    return;
  }
  float* __restrict buf = s[0];
  if (first_step)
    for (int i = 0; i < n; ++i) buf[i] = g[i];
  else
    for (int i = 0; i < n; ++i) buf[i] = buf[i] * mom + one_m_damp * g[i];
  if (nesterov)
    for (int i = 0; i < n; ++i) p[i] = p[i] - lr * (g[i] + mom * buf[i]);
  else
    for (int i = 0; i < n; ++i) p[i] = p[i] - lr * buf[i];
}

}  // namespace tf
