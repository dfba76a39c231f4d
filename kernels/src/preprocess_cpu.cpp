// CPU twin of the preprocess kernel: the same preprocess_pixel<> as the CUDA kernel, over rows
// split between threads.
#include "parallel.h"
#include "preprocess.h"

namespace vla {

namespace {

struct CpuLauncher {
  template <int FMT, bool BILINEAR, int OUT>
  static void run(const PreprocessParams& p, int threads) {
    parallel_rows(p.out_h, threads, [&p](int r0, int r1) {
      // A local copy: stores through the output pointer could alias a shared struct's fields and
      // force the compiler to reload every constant after every pixel.
      const PreprocessParams q = p;
      for (int oy = r0; oy < r1; ++oy) {
        for (int ox = 0; ox < q.out_w; ++ox) preprocess_pixel<FMT, BILINEAR, OUT>(q, ox, oy);
      }
    });
  }
};

}  // namespace

void preprocess_cpu(const PreprocessParams& p, int threads) {
  dispatch_preprocess<CpuLauncher>(p, useful_threads(threads, p.out_h, 40L * p.out_w));
}

}  // namespace vla
