// CAME (rules/came.py), from the factors of the second moment (job.row, job.col) and of
// the instability statistics, the confidence (job.row2, job.col2).
// c = [eps1, clip divisor max(1, RMS(u)/clip), b1, 1-b1, eps2, wd*lr, lr, has decay].
// The driver is impl/native/came.py (four passes; tf_came_instability is the third).
#pragma once

#include "../abi.h"
#include "../codecs.h"
#include "../reductions.h"

namespace tf {

// u_hat = u / divisor and m' = b1 m + (1-b1) u_hat, as came_update; the instability pass
// and the update pass both call these, so they agree bit for bit.
inline float came_u_hat(const TfJob& job, float u) { return u / job.c[1]; }
inline float came_moment(const TfJob& job, float u_hat, float m) { return m * job.c[2] + job.c[3] * u_hat; }

// The update pass: theta <- theta - (wd*lr)*theta - lr * (R'^-1/2 x C'^-1/2) * m', m <- m'.
inline void came_tile(const TfJob& job, int64_t start, float* __restrict p, const float* __restrict g, float* const* s,
                      int n) {
  const float wd_lr = job.c[5], lr = job.c[6];
  const bool decay = job.c[7] != 0.0f;
  float* __restrict m = s[0];
  for_row_runs(start, n, job.cols, [&](int64_t i, int64_t j0, int k0, int len) {
    const float ri = job.row[i], ri2 = job.row2[i];
    const float* cj = job.col + j0;
    const float* cj2 = job.col2 + j0;
    float* pk = p + k0;
    float* mk = m + k0;
    const float* gk = g + k0;
    for (int k = 0; k < len; ++k) {
      const float mn = came_moment(job, came_u_hat(job, factored_u(ri, cj[k], gk[k])), mk[k]);
      const float direction = (ri2 * cj2[k]) * mn;
      const float pv = decay ? pk[k] - wd_lr * pk[k] : pk[k];
      pk[k] = pv - lr * direction;
      mk[k] = mn;
    }
  });
}

}  // namespace tf

extern "C" {

// Third pass: row and column sums of the instability U = (u_hat - m')^2 + eps2 (c[4]),
// with m' the new first moment from the decoded old one (states[0]); nothing is written:
// the update pass recomputes m' bit for bit and only then encodes it, so the old m is
// still there to decode and no full-size float scratch is needed.
void tf_came_instability(const TfJob* job, double* row_sum, double* col_sum) {
  using namespace tf;
  const float eps2 = job->c[4];
  const int64_t cols = job->cols;
  reduce_rows_cols(*job, row_sum, col_sum,
      [&](int64_t start, int n, double* row_acc, double* col_acc, double*) {
        alignas(64) float g[TILE];
        alignas(64) float m[TILE];
        load_floats(job->grad_dtype, job->grad, start, n, g);
        decode_state(job->states[0], start, n, m);
        for_row_runs(start, n, cols, [&](int64_t i, int64_t j0, int k0, int len) {
          const float ri = job->row[i];
          const float* cj = job->col + j0;
          const float* gk = g + k0;
          const float* mk = m + k0;
          double* col = col_acc + j0;
          double row = 0.0;
#pragma omp simd reduction(+ : row)
          for (int k = 0; k < len; ++k) {
            const float u_hat = came_u_hat(*job, factored_u(ri, cj[k], gk[k]));
            const float d = u_hat - came_moment(*job, u_hat, mk[k]);
            const float instability = d * d + eps2;  // (update - exp_avg) ** 2 + eps2
            row += instability;
            col[k] += instability;
          }
          row_acc[i] += row;
        });
      });
}

}  // extern "C"
