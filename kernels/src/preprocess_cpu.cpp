// CPU twin of the preprocess kernel: the same preprocess_pixel<> as the CUDA kernel, over rows
// split between threads.
#include <algorithm>
#include <memory>
#include <vector>

#include "parallel.h"
#include "preprocess.h"

namespace vla {

namespace {

constexpr int kChunk = 64;

// One chunk of a row: the shared per-pixel RGB into local arrays (a loop the compiler vectorises
// with gathers), then the shared normalise-and-store per channel, contiguous when the rows are.
template <int FMT, bool BILINEAR, int OUT>
void chunk(const PreprocessParams& q, int oy, int x0, int n) {
  float r[kChunk], g[kChunk], b[kChunk];
  for (int i = 0; i < n; ++i) {
    float rgb[3];
    pixel_rgb<FMT, BILINEAR>(q, x0 + i, oy, rgb);
    r[i] = rgb[0];
    g[i] = rgb[1];
    b[i] = rgb[2];
  }
  const float* first = q.swap_rb ? b : r;
  const float* last = q.swap_rb ? r : b;
  const float* chan[3] = {first, g, last};
  for (int c = 0; c < 3; ++c) {
    const int64_t base = oy * q.os_y + c * q.os_c;
    const float* v = chan[c];
    const float s = q.scale[c], o = q.bias[c];
    if (q.os_x == 1) {
      for (int i = 0; i < n; ++i) store_value<OUT>(q, base + x0 + i, v[i] * s + o);
    } else {
      for (int i = 0; i < n; ++i) store_value<OUT>(q, base + (x0 + i) * q.os_x, v[i] * s + o);
    }
  }
}

// Rows [r0, r1) of one job.
struct CpuRows {
  template <int FMT, bool BILINEAR, int OUT>
  static void run(const PreprocessParams& p, int r0, int r1) {
    // A local copy: stores through the output pointer could alias a shared struct's fields and
    // force the compiler to reload every constant after every pixel.
    const PreprocessParams q = p;
    for (int oy = r0; oy < r1; ++oy) {
      for (int x0 = 0; x0 < q.out_w; x0 += kChunk) chunk<FMT, BILINEAR, OUT>(q, oy, x0, std::min(kChunk, q.out_w - x0));
    }
  }
};

}  // namespace

void preprocess_cpu(const PreprocessParams& p, int threads) {
  preprocess_cpu_start({p}, threads)->finish();
}

std::unique_ptr<RowTeam> preprocess_cpu_start(std::vector<PreprocessParams> ps, int threads) {
  // The rows of all jobs, end to end: one team of threads shares them, so a rig of cameras costs
  // one thread start-up, not one per camera.
  const int n = static_cast<int>(ps.size());
  std::vector<int> first(n + 1, 0);
  long work = 0;
  for (int i = 0; i < n; ++i) {
    first[i + 1] = first[i] + ps[i].out_h;
    work += static_cast<long>(ps[i].out_h) * ps[i].out_w;
  }
  const int rows = first[n];
  const int t = rows > 0 ? useful_threads(threads, rows, 40L * work / rows) : 1;
  return std::make_unique<RowTeam>(rows, t, [ps = std::move(ps), first = std::move(first), n](int g0, int g1) {
    for (int i = 0; i < n && g0 < g1; ++i) {
      const int r0 = std::max(g0, first[i]) - first[i], r1 = std::min(g1, first[i + 1]) - first[i];
      if (r0 < r1) dispatch_preprocess<CpuRows>(ps[i], r0, r1);
    }
  });
}

}  // namespace vla
