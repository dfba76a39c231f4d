// Row-parallel loops for the CPU twins: the caller's thread takes one share, std::threads the rest.
#pragma once

#include <algorithm>
#include <thread>
#include <vector>

namespace vla {

// Threads worth using for `rows` rows of `work_per_row` elementary operations (small jobs stay on
// one thread: starting a thread costs more than converting a few thousand pixels).
inline int useful_threads(int requested, long rows, long work_per_row) {
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int want = requested > 0 ? requested : hw;
  const long by_work = std::max(1L, rows * work_per_row / 20000L);
  return static_cast<int>(std::max(1L, std::min({static_cast<long>(want), rows, by_work})));
}

template <class Fn>
void parallel_rows(int rows, int threads, Fn&& fn) {
  if (threads <= 1 || rows <= 1) {
    fn(0, rows);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int chunk = (rows + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    const int r0 = t * chunk, r1 = std::min(rows, r0 + chunk);
    if (r0 < r1) pool.emplace_back([&fn, r0, r1] { fn(r0, r1); });
  }
  fn(0, std::min(rows, chunk));
  for (auto& th : pool) th.join();
}

}  // namespace vla
