// Row-parallel loops for the CPU twins: the caller's thread and std::threads share the rows.
#pragma once

#include <algorithm>
#include <atomic>
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

// Rows are handed out in blocks from a shared counter rather than split up front: a thread that
// starts late (waking an idle core takes ~0.1 ms on a VM, as long as converting 100 rows) takes
// fewer blocks instead of holding everyone up, so the caller's thread is never left waiting idle.
template <class Fn>
void parallel_rows(int rows, int threads, Fn&& fn) {
  if (threads <= 1 || rows <= 1) {
    fn(0, rows);
    return;
  }
  const int block = std::max(1, rows / (8 * threads));
  const int blocks = (rows + block - 1) / block;
  std::atomic<int> next{0};
  auto work = [&] {
    for (int b = next.fetch_add(1, std::memory_order_relaxed); b < blocks;
         b = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(b * block, std::min(rows, (b + 1) * block));
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
}

}  // namespace vla
