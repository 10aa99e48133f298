// Deterministic reductions over a (rows x cols) matrix for the factored rules: row and
// column sums and sums of squares in double, independent of the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "abi.h"
#include "dtypes.h"

namespace tf {

// A tile [start, start+n) of a row-major matrix is a few runs that each lie in one row;
// f(i, j0, k0, len) gets row i and tile elements k0..k0+len-1 = columns j0..j0+len-1, so
// inner loops run over contiguous columns with the row factor hoisted (they vectorize).
template <class F>
inline void for_row_runs(int64_t start, int n, int64_t cols, F&& f) {
  int64_t i = start / cols, j = start - i * cols;
  for (int k = 0; k < n; ++i, j = 0) {
    const int len = int(std::min<int64_t>(cols - j, n - k));
    f(i, j, k, len);
    k += len;
  }
}

// u = factored_rsqrt(R, C) * g, as PyTorch evaluates it: (row factor * col factor) * g
// (CAME and Adafactor's HF convention).
inline float factored_u(float row_factor, float col_factor, float g) { return (row_factor * col_factor) * g; }

// Row and column sums over a rows x cols matrix. The elements are cut into at most 64
// chunks of whole tiles, chosen from the shape alone (never the thread count); each chunk
// sums into its own double arrays, and the chunks are added in order afterwards, so the
// sums do not depend on scheduling or on the number of threads. Column partials cost
// chunks x cols doubles, kept at most 1/4 of the matrix's floats.
// tile_fn(start, n, row_acc, col_acc, totals) adds a tile's contributions to row_acc[row],
// col_acc[col] and totals[0..1] (per-chunk scalars, returned summed in chunk order);
// row_out, col_out (zeroed by the caller, summed into) may be null, and so then are the
// accumulators.
struct Totals { double v[2] = {0.0, 0.0}; };

template <class TileFn>
Totals reduce_rows_cols(const TfJob& job, double* row_out, double* col_out, TileFn&& tile_fn) {
  const int64_t n = job.numel, cols = job.cols, rows = n / cols;
  const int64_t tiles = (n + TILE - 1) / TILE;
  int64_t chunks = std::max<int64_t>(1, std::min<int64_t>({64, tiles / 8, rows / 4}));
  const int64_t tiles_per_chunk = (tiles + chunks - 1) / chunks;
  chunks = (tiles + tiles_per_chunk - 1) / tiles_per_chunk;
  const int64_t chunk_elems = tiles_per_chunk * TILE;
  // chunk c touches rows first(c)..last(c) and keeps them at row_part[c + i]: slots
  // first(c)+c..last(c)+c, disjoint from the next chunk's since first(c+1) >= last(c)
  std::vector<double> row_part(row_out ? rows + chunks : 0), col_part(col_out ? chunks * cols : 0);
  std::vector<Totals> totals(chunks);
#pragma omp parallel for schedule(dynamic, 1) num_threads(job.n_threads) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t e0 = c * chunk_elems, e1 = std::min(n, e0 + chunk_elems);
    double* row_acc = row_out ? row_part.data() + c : nullptr;  // indexed by the global row
    double* col_acc = col_out ? col_part.data() + c * cols : nullptr;
    for (int64_t start = e0; start < e1; start += TILE)
      tile_fn(start, int(std::min<int64_t>(TILE, e1 - start)), row_acc, col_acc, totals[c].v);
  }
  Totals total;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t e0 = c * chunk_elems, e1 = std::min(n, e0 + chunk_elems);
    total.v[0] += totals[c].v[0];
    total.v[1] += totals[c].v[1];
    if (row_out) {
      const int64_t first = e0 / cols, last = (e1 - 1) / cols;
      const double* part = row_part.data() + first + c;
      for (int64_t i = first; i <= last; ++i) row_out[i] += part[i - first];
    }
    if (col_out) {
      const double* part = col_part.data() + c * cols;
      for (int64_t j = 0; j < cols; ++j) col_out[j] += part[j];
    }
  }
  return total;
}

// Sum of u^2 over a matrix for RMS(u) clipping, u = u_of(row stat, col stat, g) per
// element, in double, deterministic (chunked as reduce_rows_cols). The caller has checked
// the gradient is finite.
template <class U>
double sum_of_u_squared(const TfJob* job, U u_of) {
  const int64_t cols = job->cols;
  return reduce_rows_cols(*job, nullptr, nullptr,
      [&](int64_t start, int n, double*, double*, double* total) {
        alignas(64) float g[TILE];
        load_floats(job->grad_dtype, job->grad, start, n, g);
        for_row_runs(start, n, cols, [&](int64_t i, int64_t j0, int k0, int len) {
          const float ri = job->row[i];
          const float* cj = job->col + j0;
          const float* gk = g + k0;
          double sum = 0.0;
#pragma omp simd reduction(+ : sum)
          for (int k = 0; k < len; ++k) {
            const float u = u_of(ri, cj[k], gk[k]);
            sum += double(u) * double(u);
          }
          total[0] += sum;
        });
      }).v[0];
}

}  // namespace tf
