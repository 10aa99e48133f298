// Ways to find 4-bit codes on AVX-512, side by side (benchmarks/encode4_search.py builds and
// runs this): the block encoder of csrc/quant_avx512.h (absmax, exact division, narrowing
// store) around each way of finding code = number of midpoints < y for 16 lanes.
//
//   search, index arithmetic   the binary search as it was: candidate and candidate - 1 per step
//   search, shifted tables     one copy of the midpoints per step, indexed by the code (kept)
//   buckets 64, two look-ups   |y|'s bits >> (23 - k) clamped to 64 buckets; each bucket's
//                              midpoint and lowest code by two-register permutes and a blend
//   buckets 32, two look-ups   the same in 32 buckets (one vpermi2 each): maps that fit
//   buckets 32, packed         one look-up: lowest code | midpoint's key offset << 8
//   division only              no search: the floor of the block loop
//
// Signed maps: the bucket tables hold the nonnegative midpoints; a negative y counts the
// midpoints <= |y| (ties to the lower code) and mirrors. Every way is checked against the
// scalar count on every midpoint, its neighbours, +-0, +-1 and random points before timing.
//
//   encode4_search <signed|unsigned> m0 ... m14   (the map's 15 midpoints, ascending)
#include <immintrin.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

uint32_t bits_of(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
float float_of(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

struct Map {
  float mids[16];  // 15 midpoints, +inf
  int negative;    // midpoints below 0 (they mirror the lowest positive ones)
};

// ---- binary searches ----
struct SearchArith {
  __m512 mid;
  explicit SearchArith(const Map& m) : mid(_mm512_loadu_ps(m.mids)) {}
  __m512i operator()(__m512 y) const {
    __m512i code = _mm512_setzero_si512();
    for (int step = 8; step >= 1; step /= 2) {
      const __m512i candidate = _mm512_add_epi32(code, _mm512_set1_epi32(step));
      const __m512 m = _mm512_permutexvar_ps(_mm512_sub_epi32(candidate, _mm512_set1_epi32(1)), mid);
      code = _mm512_mask_mov_epi32(code, _mm512_cmp_ps_mask(y, m, _CMP_GT_OQ), candidate);
    }
    return code;
  }
};

struct SearchShifted {
  __m512 mid7, from3, from1, from0;
  explicit SearchShifted(const Map& m) {
    float s3[16], s1[16];
    for (int i = 0; i < 16; ++i) s3[i] = m.mids[std::min(i + 3, 15)], s1[i] = m.mids[std::min(i + 1, 15)];
    mid7 = _mm512_set1_ps(m.mids[7]), from3 = _mm512_loadu_ps(s3), from1 = _mm512_loadu_ps(s1);
    from0 = _mm512_loadu_ps(m.mids);
  }
  __m512i operator()(__m512 y) const {
    __m512i code = _mm512_maskz_mov_epi32(_mm512_cmp_ps_mask(y, mid7, _CMP_GT_OQ), _mm512_set1_epi32(8));
    code = _mm512_mask_add_epi32(code, _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(code, from3), _CMP_GT_OQ), code,
                                 _mm512_set1_epi32(4));
    code = _mm512_mask_add_epi32(code, _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(code, from1), _CMP_GT_OQ), code,
                                 _mm512_set1_epi32(2));
    return _mm512_mask_add_epi32(code, _mm512_cmp_ps_mask(y, _mm512_permutexvar_ps(code, from0), _CMP_GT_OQ), code,
                                 _mm512_set1_epi32(1));
  }
};

// ---- bucket tables over t = |y| ----
// Bucket b >= 1 holds keys [(base + b) << s, (base + b + 1) << s), s = 23 - k; bucket 0 every key
// below; bucket n - 1 starts at 1.0. Fills mid (the one nonnegative midpoint inside, +inf if
// none: key bits), low (nonnegative midpoints below the bucket) and returns false when a
// bucket holds two midpoints.
bool bucket_table(const Map& m, int k, int n, int32_t* mid, int32_t* low, int32_t* lowest_key) {
  const int s = 23 - k, base = (127 << k) - (n - 1);
  for (int b = 0; b < n; ++b) {
    const uint32_t lo = b == 0 ? 0u : uint32_t(base + b) << s;
    const uint32_t hi = b == n - 1 ? 0x7F800000u : uint32_t(base + b + 1) << s;
    int below = 0, inside = 0;
    mid[b] = int32_t(bits_of(INFINITY));
    for (int i = m.negative; i < 15; ++i) {
      const uint32_t key = bits_of(m.mids[i]);
      if (key < lo) ++below;
      else if (key < hi) ++inside, mid[b] = int32_t(key);
    }
    if (inside > 1) return false;
    low[b] = below;
    lowest_key[b] = int32_t(uint32_t(base + b) << s);
  }
  return true;
}

// code from the count of nonnegative midpoints below |y| (at or below for a negative y)
// |y|'s bit pattern and y's sign lanes; on unsigned maps a negative y counts as +0 (code 0,
// as bucketize gives) and no lane is negative.
inline __m512i magnitude(__m512 y, bool is_signed, __mmask16* negative) {
  const __m512i bits = _mm512_castps_si512(y);
  *negative = is_signed ? _mm512_movepi32_mask(bits) : 0;
  return is_signed ? _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF)) : _mm512_max_epi32(bits, _mm512_setzero_si512());
}

inline __m512i signed_code(const Map& m, __m512i count, __mmask16 negative) {
  const __m512i code = _mm512_add_epi32(count, _mm512_set1_epi32(m.negative));
  return _mm512_mask_sub_epi32(code, negative, _mm512_set1_epi32(m.negative),
                               _mm512_min_epi32(count, _mm512_set1_epi32(m.negative)));
}

template <int N>
struct Buckets {
  Map map;
  bool fits;
  __m512i mid[N / 16], low[N / 16];
  int k;
  Buckets(const Map& m, int k_) : map(m), k(k_) {
    int32_t mids[64], lows[64], lowest[64];
    fits = bucket_table(m, k, N, mids, lows, lowest);
    for (int r = 0; r < N / 16; ++r) mid[r] = _mm512_loadu_si512(mids + 16 * r), low[r] = _mm512_loadu_si512(lows + 16 * r);
  }
  __m512i look(const __m512i* t, __m512i b, __mmask16 upper) const {
    if (N == 32) return _mm512_permutex2var_epi32(t[0], b, t[1]);
    return _mm512_mask_blend_epi32(upper, _mm512_permutex2var_epi32(t[0], b, t[1]), _mm512_permutex2var_epi32(t[2], b, t[3]));
  }
  __m512i operator()(__m512 y) const {
    const bool is_signed = map.negative > 0;
    __mmask16 negative;
    const __m512i mag = magnitude(y, is_signed, &negative);
    __m512i b = _mm512_subs_epu16(_mm512_srli_epi32(mag, 23 - k), _mm512_set1_epi32((127 << k) - (N - 1)));
    b = _mm512_min_epu32(b, _mm512_set1_epi32(N - 1));
    const __mmask16 upper = _mm512_test_epi32_mask(b, _mm512_set1_epi32(32));
    const __m512i m = look(mid, b, upper), lo = look(low, b, upper);
    const __m512i key = _mm512_mask_add_epi32(mag, negative, mag, _mm512_set1_epi32(1));  // negatives: |y| >= mid
    const __m512i count = _mm512_mask_add_epi32(lo, _mm512_cmpgt_epi32_mask(key, m), lo, _mm512_set1_epi32(1));
    return is_signed ? signed_code(map, count, negative) : count;
  }
};

// one look-up: lowest code | (midpoint key - bucket's lowest key) << 8, the offset of bucket 0
// counted from its nominal lowest key (negative when the midpoint lies below it)
struct Packed32 {
  Map map;
  bool fits;
  int k;
  __m512i t0, t1;
  Packed32(const Map& m, int k_) : map(m), k(k_) {
    int32_t mids[64], lows[64], lowest[64], packed[32];
    fits = bucket_table(m, k, 32, mids, lows, lowest);
    for (int b = 0; b < 32; ++b) {
      const int64_t offset = mids[b] == int32_t(bits_of(INFINITY)) ? (1 << (23 - k)) : int64_t(mids[b]) - lowest[b];
      if (offset < -(1 << 23) || offset >= (1 << 23)) fits = false;
      packed[b] = int32_t(uint32_t(lows[b]) | uint32_t(offset << 8));
    }
    t0 = _mm512_loadu_si512(packed), t1 = _mm512_loadu_si512(packed + 16);
  }
  __m512i operator()(__m512 y) const {
    const bool is_signed = map.negative > 0;
    __mmask16 negative;
    const __m512i mag = magnitude(y, is_signed, &negative);
    const int base = (127 << k) - 31;
    __m512i b = _mm512_subs_epu16(_mm512_srli_epi32(mag, 23 - k), _mm512_set1_epi32(base));
    b = _mm512_min_epu32(b, _mm512_set1_epi32(31));
    const __m512i entry = _mm512_permutex2var_epi32(t0, b, t1);
    const __m512i lowest = _mm512_slli_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(base)), 23 - k);
    __m512i within = _mm512_sub_epi32(mag, lowest);
    within = _mm512_mask_add_epi32(within, negative, within, _mm512_set1_epi32(1));
    const __m512i lo = _mm512_and_si512(entry, _mm512_set1_epi32(0xFF));
    const __m512i count = _mm512_mask_add_epi32(lo, _mm512_cmpgt_epi32_mask(within, _mm512_srai_epi32(entry, 8)), lo,
                                                _mm512_set1_epi32(1));
    return is_signed ? signed_code(map, count, negative) : count;
  }
};

struct DivisionOnly {
  __m512i operator()(__m512 y) const { return _mm512_castps_si512(y); }
};

// ---- the block loop of csrc/quant_avx512.h (4-bit, block 128, finite blocks) ----
inline __mmask16 tail_mask(int left) { return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1); }

template <class Codes>
void encode(const Codes& codes_of, const float* x, int n, float* absmax, uint8_t* codes) {
  for (int b0 = 0, blk = 0; b0 < n; b0 += 128, ++blk) {
    const int m = std::min(128, n - b0);
    __m512i amax = _mm512_setzero_si512();
    for (int i = 0; i < m; i += 16) {
      const __m512i v = _mm512_castps_si512(_mm512_maskz_loadu_ps(tail_mask(m - i), x + b0 + i));
      amax = _mm512_max_epu32(amax, _mm512_and_si512(v, _mm512_set1_epi32(0x7FFFFFFF)));
    }
    const float a = float_of(_mm512_reduce_max_epu32(amax));
    absmax[blk] = a;
    const __m512 scale = _mm512_set1_ps(a > 0 ? a : 1.0f);
    for (int i = 0; i < m; i += 16) {
      const __mmask16 k = tail_mask(m - i);
      const __m512 y = _mm512_div_ps(_mm512_maskz_loadu_ps(k, x + b0 + i), scale);
      _mm_mask_storeu_epi8(codes + b0 + i, k, _mm512_cvtepi32_epi8(codes_of(y)));
    }
  }
}

int reference(const Map& m, float y) {
  int c = 0;
  for (int i = 0; i < 15; ++i) c += m.mids[i] < y;
  return c;
}

template <class Codes>
long mismatches(const Codes& codes_of, const Map& m) {
  std::vector<float> y = {0.0f, -0.0f, 1.0f, -1.0f, 1e-45f, -1e-45f, 1e-30f, -1e-30f};
  for (int i = 0; i < 15; ++i)
    for (int d = -3; d <= 3; ++d) {
      const float v = float_of(bits_of(m.mids[i]) + d);
      if (std::isfinite(v) && std::fabs(v) <= 1) y.push_back(v), y.push_back(-v);
    }
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> u(-1, 1), e(-20, 0);
  for (int i = 0; i < 200000; ++i) y.push_back(u(rng)), y.push_back(std::copysign(std::pow(10.0f, e(rng)), u(rng)));
  while (y.size() % 16) y.push_back(0.0f);
  long bad = 0;
  for (size_t i = 0; i < y.size(); i += 16) {
    int32_t out[16];
    _mm512_storeu_si512(out, codes_of(_mm512_loadu_ps(&y[i])));
    for (int j = 0; j < 16; ++j) bad += out[j] != reference(m, y[i + j]);
  }
  return bad;
}

double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 17) {
    std::fprintf(stderr, "usage: %s signed|unsigned m0 ... m14\n", argv[0]);
    return 2;
  }
  Map map{};
  for (int i = 0; i < 15; ++i) map.mids[i] = std::strtof(argv[2 + i], nullptr);
  map.mids[15] = INFINITY;
  map.negative = int(std::count_if(map.mids, map.mids + 15, [](float v) { return v < 0; }));
  const bool is_signed = std::strcmp(argv[1], "signed") == 0;

  // a tile of state values like the step's: normal (m) or squared normal (v), mixed block scales
  const int n = 16384, reps = 300;
  std::vector<float> x(n), absmax(n / 128);
  std::vector<uint8_t> codes(n);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  for (int i = 0; i < n; ++i) {
    const float g = normal(rng) * std::pow(10.0f, -float(i / 128 % 5));
    x[i] = is_signed ? g : g * g;
  }
  const SearchArith arith(map);
  const SearchShifted shifted(map);
  // k: the fewest mantissa bits that leave each bucket at most one midpoint
  int k64 = 1, k32 = 1;
  while (k64 < 6 && !Buckets<64>(map, k64).fits) ++k64;
  while (k32 < 6 && !Buckets<32>(map, k32).fits) ++k32;
  const Buckets<64> b64(map, k64);
  const Buckets<32> b32(map, k32);
  const Packed32 p32(map, k32);
  const DivisionOnly none;

  struct Way { const char* name; bool fits; long bad; void (*run)(const void*, const float*, int, float*, uint8_t*); const void* t; };
  auto runner = [](auto* t) { return [](const void* p, const float* x, int n, float* a, uint8_t* c) {
    encode(*static_cast<decltype(t)>(p), x, n, a, c); }; };
  std::vector<Way> ways = {
      {"search, index arithmetic", true, mismatches(arith, map), runner(&arith), &arith},
      {"search, shifted tables", true, mismatches(shifted, map), runner(&shifted), &shifted},
      {"buckets 64, two look-ups", b64.fits, b64.fits ? mismatches(b64, map) : 0, runner(&b64), &b64},
      {"buckets 32, two look-ups", b32.fits, b32.fits ? mismatches(b32, map) : 0, runner(&b32), &b32},
      {"buckets 32, packed", p32.fits, p32.fits ? mismatches(p32, map) : 0, runner(&p32), &p32},
      {"division only (no codes)", true, 0, runner(&none), &none},
  };
  std::vector<std::vector<double>> times(ways.size());
  for (int round = 0; round < 10; ++round)  // interleaved; round 0 warms up
    for (size_t w = 0; w < ways.size(); ++w) {
      const size_t v = round % 2 ? ways.size() - 1 - w : w;
      if (!ways[v].fits) continue;
      const double t0 = cpu_seconds();
      for (int r = 0; r < reps; ++r) {
        ways[v].run(ways[v].t, x.data(), n, absmax.data(), codes.data());
        asm volatile("" ::: "memory");
      }
      if (round) times[v].push_back((cpu_seconds() - t0) * 1e9 / (double(reps) * n));
    }
  for (size_t w = 0; w < ways.size(); ++w) {
    if (!ways[w].fits) {
      std::printf("%s\t-\t-\tno table: a bucket holds two midpoints at every k\n", ways[w].name);
      continue;
    }
    std::sort(times[w].begin(), times[w].end());
    const int kk = w == 2 ? k64 : (w == 3 || w == 4) ? k32 : 0;
    char table[32] = "-";
    if (kk) std::snprintf(table, sizeof table, "%d buckets, k=%d", w == 2 ? 64 : 32, kk);
    std::printf("%s\t%.3f\t%ld\t%s\n", ways[w].name, times[w][times[w].size() / 2], ways[w].bad, table);
  }
  return 0;
}
