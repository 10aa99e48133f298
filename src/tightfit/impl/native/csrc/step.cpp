// The fused step driver: one pass per tile of TILE elements.
//
// Per tile: load param + grad as floats, decode each state into a float buffer, apply
// the rule's tile, store the param, encode each state (float32 tensors are used in
// place). Every stage is a short loop over L1-resident floats, so the compiler
// vectorizes it and the stages compose: one decode/encode per codec (codecs.cpp), one
// tile per rule (rules/<name>.h), chosen per tensor, never per element.
//
// The tiles mirror tightfit/rules/*.py operation by operation (built with
// -ffp-contract=off); their coefficients are Rule.scalars(...), computed in Python
// exactly as the rule computes them, arriving here as floats.
//
// tiles.gen.h is written by build.py from the files in rules/: it includes each and
// lists them as TF_TILES(X) = X(adam) X(lion) ...; a tile's id is its place in that list.

#include <algorithm>
#include <cstring>
#include <vector>

#include "abi.h"
#include "codecs.h"
#include "dtypes.h"
#include "tiles.gen.h"

namespace tf {
namespace {

struct NamedTile {
  const char* name;
  TileFn fn;
};

#define TF_TILE_ENTRY(name) {#name, &name##_tile},
constexpr NamedTile TILES[] = {TF_TILES(TF_TILE_ENTRY)};
#undef TF_TILE_ENTRY
constexpr int N_TILES = int(sizeof(TILES) / sizeof(TILES[0]));

// Float32 tensors are updated in place (no copy); others go through the tile buffers.
void process_tile(const TfJob& job, TileFn tile, int64_t start, int n) {
  alignas(64) float p_buf[TILE];
  alignas(64) float g_buf[TILE];
  alignas(64) float s_buf[MAX_STATES][TILE];
  const bool p_direct = job.param_dtype == F32, g_direct = job.grad_dtype == F32;
  float* p = p_direct ? static_cast<float*>(job.param) + start : p_buf;
  const float* g = g_direct ? static_cast<const float*>(job.grad) + start : g_buf;
  float* s[MAX_STATES];
  if (!p_direct) load_floats(job.param_dtype, job.param, start, n, p_buf);
  if (!g_direct) load_floats(job.grad_dtype, job.grad, start, n, g_buf);
  for (int k = 0; k < job.n_states; ++k) {
    const TfState& st = job.states[k];
    s[k] = st.codec == C_FP32 ? static_cast<float*>(st.data) + start : s_buf[k];
    if (st.codec != C_FP32) decode_state(st, start, n, s_buf[k]);
  }
  for (int k = job.n_states; k < MAX_STATES; ++k) s[k] = s_buf[k];  // a rule may use a state it does not keep
  tile(job, start, p, g, s, n);
  if (!p_direct) store_floats(job.param_dtype, job.param, start, n, p_buf);
  for (int k = 0; k < job.n_states; ++k)
    if (job.states[k].codec != C_FP32) encode_state(job.states[k], start, n, s_buf[k]);
}

bool refused(const TfJob& job) {
  return job.tile < 0 || job.tile >= N_TILES || job.n_states < 0 || job.n_states > MAX_STATES;
}

// Work items of several tensors as one index space: item i belongs to the job whose
// [first[j], first[j+1]) holds it.
struct ItemSpace {
  std::vector<int64_t> first;
  int64_t total() const { return first.back(); }
  int job_of(int64_t item) const {
    return int(std::upper_bound(first.begin(), first.end(), item) - first.begin()) - 1;
  }
};

}  // namespace
}  // namespace tf

extern "C" {

int tf_abi_version() { return TF_ABI_VERSION; }
int tf_job_size() { return int(sizeof(TfJob)); }

// The id of the rule tile built from rules/<name>.h, or -1 when there is none.
int tf_rule_tile(const char* name) {
  for (int i = 0; i < tf::N_TILES; ++i)
    if (std::strcmp(tf::TILES[i].name, name) == 0) return i;
  return -1;
}

// One parameter's step. Unusable gradient (NaN/Inf, or an element at or above the
// rule's limit): a first pass over the gradient finds it and the step is skipped
// entirely (param and states untouched, *skips += 1), unless F_GRAD_CHECKED says the
// caller's own earlier pass found it usable.
// Returns 1 when the update happened, 0 when skipped, -1 for an unknown tile or too
// many states (nothing touched).
int tf_step(const TfJob* job) {
  using namespace tf;
  if (refused(*job)) return -1;
  const int64_t n = job->numel;
  if (!(job->flags & F_GRAD_CHECKED) &&
      any_beyond_limit(job->grad_dtype, job->grad, n, job->grad_limit_bits, job->n_threads)) {
    *job->skips += 1;
    return 0;
  }
  const TileFn tile = TILES[job->tile].fn;
  const int64_t tiles = (n + TILE - 1) / TILE;
  // dynamic chunks of 16 tiles: on a shared CPU a descheduled thread's work is taken over
#pragma omp parallel for schedule(dynamic, 16) num_threads(job->n_threads) if (tiles > 8)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t start = t * TILE;
    process_tile(*job, tile, start, int(n - start < TILE ? n - start : TILE));
  }
  *job->step += 1.0f;
  return 1;
}

// The steps of n_jobs parameters (each as tf_step) in two parallel loops over work items
// of all tensors at once: gradient-scan chunks, then tiles of the usable ones. One
// fork/join per call rather than two per tensor, and small tensors share the threads.
// Each tile is still processed whole by one thread, so results do not depend on the
// schedule. results[i]: as tf_step's return value for job i.
void tf_step_many(const TfJob* jobs, int n_jobs, int n_threads, int32_t* results) {
  using namespace tf;
  std::vector<int32_t> bad(n_jobs, 0);
  ItemSpace scan{{0}}, tiles{{0}};
  int64_t scanned_elements = 0;
  for (int j = 0; j < n_jobs; ++j) {
    const bool scanned = !refused(jobs[j]) && !(jobs[j].flags & F_GRAD_CHECKED);
    scan.first.push_back(scan.total() + (scanned ? (jobs[j].numel + SCAN_CHUNK - 1) / SCAN_CHUNK : 0));
    scanned_elements += scanned ? jobs[j].numel : 0;
  }
  // Threads only for work worth waking them for: on a busy CPU a sleeping thread can take
  // milliseconds to start, longer than stepping a few small tensors on one.
#pragma omp parallel for schedule(dynamic, 4) num_threads(n_threads) if (scanned_elements >= (1 << 18))
  for (int64_t c = 0; c < scan.total(); ++c) {
    const int j = scan.job_of(c);
    const TfJob& job = jobs[j];
    const int64_t start = (c - scan.first[j]) * SCAN_CHUNK;
    const int64_t n = std::min<int64_t>(SCAN_CHUNK, job.numel - start);
    if (beyond_limit_in(job.grad_dtype, job.grad, start, n, job.grad_limit_bits)) {
#pragma omp atomic write
      bad[j] = 1;
    }
  }
  for (int j = 0; j < n_jobs; ++j) {
    results[j] = refused(jobs[j]) ? -1 : bad[j] ? 0 : 1;
    tiles.first.push_back(tiles.total() + (results[j] == 1 ? (jobs[j].numel + TILE - 1) / TILE : 0));
  }
#pragma omp parallel for schedule(dynamic, 16) num_threads(n_threads) if (tiles.total() >= 256)
  for (int64_t t = 0; t < tiles.total(); ++t) {
    const int j = tiles.job_of(t);
    const TfJob& job = jobs[j];
    const int64_t start = (t - tiles.first[j]) * TILE;
    process_tile(job, TILES[job.tile].fn, start, int(std::min<int64_t>(TILE, job.numel - start)));
  }
  for (int j = 0; j < n_jobs; ++j) {
    if (results[j] == 1) *jobs[j].step += 1.0f;
    if (results[j] == 0) *jobs[j].skips += 1;
  }
}

}  // extern "C"
