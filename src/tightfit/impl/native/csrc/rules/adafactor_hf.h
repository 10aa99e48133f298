// Adafactor, transformers convention (rules/adafactor.py adafactor_hf_update), from the
// factors (R/mean R)^-1/2 (job.row) and C^-1/2 (job.col) of the second moment.
// c = [eps1, clip divisor, alpha, b1, 1-b1, wd*alpha, has decay, has momentum]:
// u = alpha (u / divisor); with momentum m <- b1 m + (1-b1) u, u = m;
// theta <- theta - (wd*alpha)*theta - u. The driver is impl/native/adafactor_hf.py.
#pragma once

#include "../abi.h"
#include "../reductions.h"

namespace tf {

inline void adafactor_hf_tile(const TfJob& job, int64_t start, float* __restrict p, const float* __restrict g,
                              float* const* s, int n) {
  const float divisor = job.c[1], alpha = job.c[2], b1 = job.c[3], one_m_b1 = job.c[4], wd_alpha = job.c[5];
  const bool decay = job.c[6] != 0.0f, momentum = job.c[7] != 0.0f;
  float* __restrict m = s[0];
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

}  // namespace tf
