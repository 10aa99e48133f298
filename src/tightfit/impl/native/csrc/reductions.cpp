// The factored rules' shared passes (CAME, Adafactor in both conventions).
#include "reductions.h"

extern "C" {

// First pass: row and column sums of S = g^2 + eps1 (c[0]; 0 for the torch convention,
// which adds none) over the matrix, in double (see reduce_rows_cols), into zeroed
// row_sum[rows], col_sum[cols]; with param_sumsq also the sum of theta^2 (Adafactor's
// RMS(theta)). The same read of g checks it: returns 0 (skip the step) when any element
// is NaN, +-Inf or at or above the rule's limit (as any_beyond_limit), so no sum can overflow.
int tf_factored_stats(const TfJob* job, double* row_sum, double* col_sum, double* param_sumsq) {
  using namespace tf;
  const float eps1 = job->c[0];
  const int64_t cols = job->cols;
  const Totals totals = reduce_rows_cols(*job, row_sum, col_sum,
      [&](int64_t start, int n, double* row_acc, double* col_acc, double* total) {
        alignas(64) float g[TILE];
        load_floats(job->grad_dtype, job->grad, start, n, g);
        int beyond = 0;
        for (int k = 0; k < n; ++k) beyond |= (bits_of(g[k]) & 0x7FFFFFFFu) >= job->grad_limit_bits;
        total[0] += beyond;
        if (param_sumsq) {
          alignas(64) float p[TILE];
          load_floats(job->param_dtype, job->param, start, n, p);
          double sum = 0.0;
#pragma omp simd reduction(+ : sum)
          for (int k = 0; k < n; ++k) sum += double(p[k]) * double(p[k]);
          total[1] += sum;
        }
        for_row_runs(start, n, cols, [&](int64_t i, int64_t j0, int k0, int len) {
          double row = 0.0;
          double* col = col_acc + j0;
          const float* gk = g + k0;
#pragma omp simd reduction(+ : row)
          for (int k = 0; k < len; ++k) {
            const float s = gk[k] * gk[k] + eps1;  // grad * grad + eps1, in float32 as the rule
            row += s;
            col[k] += s;
          }
          row_acc[i] += row;
        });
      });
  if (param_sumsq) *param_sumsq = totals.v[1];
  return totals.v[0] == 0.0;
}

// Second pass of CAME / HF Adafactor: sum of u^2, u = (row factor * col factor) * g.
double tf_factored_sumsq(const TfJob* job) {
  return tf::sum_of_u_squared(job, [](float ri, float cj, float g) { return tf::factored_u(ri, cj, g); });
}

}  // extern "C"
