// Row-parallel loops for the CPU twins: the caller's thread and std::threads share the rows.
#pragma once

#include <algorithm>
#include <atomic>
#include <functional>
#include <utility>
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
//
// A RowTeam starts its helper threads at once; the caller may do other work first (the loop fills
// its other inputs meanwhile) and then joins in with finish(), which returns when every row is done.
class RowTeam {
 public:
  RowTeam(int rows, int threads, std::function<void(int, int)> fn)
      : fn_(std::move(fn)), rows_(rows), block_(std::max(1, rows / (8 * std::max(1, threads)))),
        blocks_((rows + block_ - 1) / block_) {
    if (rows_ > 1) {
      for (int t = 1; t < threads; ++t) pool_.emplace_back([this] { work(); });
    }
  }
  RowTeam(const RowTeam&) = delete;
  RowTeam& operator=(const RowTeam&) = delete;
  ~RowTeam() { finish(); }

  // The caller takes the blocks left, then waits for the helpers (idempotent).
  void finish() {
    if (finished_) return;
    finished_ = true;
    work();
    for (auto& th : pool_) th.join();
  }

 private:
  void work() {
    for (int b = next_.fetch_add(1, std::memory_order_relaxed); b < blocks_;
         b = next_.fetch_add(1, std::memory_order_relaxed)) {
      fn_(b * block_, std::min(rows_, (b + 1) * block_));
    }
  }

  std::function<void(int, int)> fn_;
  const int rows_, block_, blocks_;
  std::atomic<int> next_{0};
  std::vector<std::thread> pool_;
  bool finished_ = false;
};

template <class Fn>
void parallel_rows(int rows, int threads, Fn&& fn) {
  if (threads <= 1 || rows <= 1) {
    fn(0, rows);
    return;
  }
  RowTeam(rows, threads, std::forward<Fn>(fn)).finish();
}

}  // namespace vla
