// CUDA build of the preprocess kernel: one thread per output pixel, preprocess_pixel<> from the
// shared header. Launch only; the caller owns the stream and its synchronisation.
#include <cuda_runtime_api.h>

#include "preprocess.h"

namespace vla {

namespace {

template <int FMT, bool BILINEAR, int OUT>
__global__ void preprocess_kernel(const PreprocessParams p) {
  const int ox = blockIdx.x * blockDim.x + threadIdx.x;
  const int oy = blockIdx.y * blockDim.y + threadIdx.y;
  if (ox < p.out_w && oy < p.out_h) preprocess_pixel<FMT, BILINEAR, OUT>(p, ox, oy);
}

struct CudaLauncher {
  template <int FMT, bool BILINEAR, int OUT>
  static int run(const PreprocessParams& p, cudaStream_t stream) {
    const dim3 block(32, 8);
    const dim3 grid((p.out_w + block.x - 1) / block.x, (p.out_h + block.y - 1) / block.y);
    preprocess_kernel<FMT, BILINEAR, OUT><<<grid, block, 0, stream>>>(p);
    return static_cast<int>(cudaGetLastError());
  }
};

}  // namespace

int preprocess_cuda(const PreprocessParams& p, uintptr_t stream) {
  return dispatch_preprocess<CudaLauncher>(p, reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace vla
