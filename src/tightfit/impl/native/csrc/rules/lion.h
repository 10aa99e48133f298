// Lion (rules/lion.py). c = [b1, 1-b1, b2, 1-b2, decay factor 1-lr*wd, lr]. State: exp_avg m.
#pragma once

#include "../abi.h"

namespace tf {

inline void lion_tile(const TfJob& job, int64_t, float* __restrict p, const float* __restrict g, float* const* s, int n) {
  const float b1 = job.c[0], one_m_b1 = job.c[1], b2 = job.c[2], one_m_b2 = job.c[3];
  const float decay = job.c[4], lr = job.c[5];
  float* __restrict m = s[0];
  for (int i = 0; i < n; ++i) {
    const float c = m[i] * b1 + one_m_b1 * g[i];
    // torch.sign (0 -> 0); written without branches so that AVX2 vectorizes it too
    const float direction = float(c > 0.0f) - float(c < 0.0f);
    p[i] = p[i] * decay - lr * direction;
    m[i] = m[i] * b2 + one_m_b2 * g[i];
  }
}

}  // namespace tf
