// CPU twin of the decode_trajectory kernel: the same per-point arithmetic (decode.h), looped over
// the output points. A typical call (M = 64 points) is a few microseconds of work, less than
// starting a thread, so it runs on the caller's thread; parallel_rows only splits very long grids.
// Also the twin of integrate_controls (decode.h's integrate_mode, one mode per row).
#include <atomic>
#include <climits>

#include "decode.h"
#include "parallel.h"

namespace vla {

namespace {

// Rough elementary operations per output point (two samples of finite differences, interpolation,
// checks); with useful_threads' 20,000-operation threshold a second thread starts only from
// ~400 points, where it can pay for itself.
constexpr long kWorkPerPoint = 100;
// Per integration step (a sine, a cosine and a dozen flops): a typical call (a few modes of 64
// steps) stays on the caller's thread.
constexpr long kWorkPerStep = 40;

void atomic_min(std::atomic<int>& target, int v) {
  int cur = target.load(std::memory_order_relaxed);
  while (v < cur && !target.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

}  // namespace

void decode_cpu(const DecodeParams& p, DecodeResult* result, int threads) {
  const ModeChoice choice = choose_mode(p.score, p.K);
  const ModeView m = mode_view(p, choice.mode);

  DecodeResult r{};
  r.mode = choice.mode;
  r.score = choice.score;
  r.bad_score = choice.bad_score;
  r.bad_waypoint = first_nonfinite_waypoint(m, 0, p.T * p.F, 1);
  uint32_t verdict = 0;
  if (r.bad_score >= 0 || r.bad_waypoint >= 0) verdict |= kDecodeNonFinite;

  std::atomic<uint32_t> flags_seen{0};
  std::atomic<int> first[kDecodeFlags];
  for (auto& f : first) f.store(INT_MAX, std::memory_order_relaxed);

  const int n_threads = useful_threads(threads, p.M, kWorkPerPoint);
  parallel_rows(p.M, n_threads, [&](int i0, int i1) {
    uint32_t local = 0;
    int local_first[kDecodeFlags];
    for (int& f : local_first) f = INT_MAX;
    for (int i = i0; i < i1; ++i) {
      const uint32_t f = decode_point(p, m, i);
      local |= f;
      for (int b = 0; b < kDecodeFlags; ++b) {
        if ((f >> b & 1u) && local_first[b] == INT_MAX) local_first[b] = i;
      }
    }
    flags_seen.fetch_or(local, std::memory_order_relaxed);
    for (int b = 0; b < kDecodeFlags; ++b) atomic_min(first[b], local_first[b]);
  });

  r.verdict = verdict | flags_seen.load();
  for (int b = 0; b < kDecodeFlags; ++b) {
    const int f = first[b].load();
    r.first[b] = f == INT_MAX ? -1 : f;
  }
  finish_result(p, &r);
  *result = r;
}

void integrate_cpu(const IntegrateParams& p, int threads) {
  // Each mode is a sequential chain of T steps; modes are independent, so they are the rows.
  const int n_threads = useful_threads(threads, p.K, kWorkPerStep * p.T);
  parallel_rows(p.K, n_threads, [&](int k0, int k1) {
    for (int k = k0; k < k1; ++k) integrate_mode(p, k);
  });
}

}  // namespace vla
