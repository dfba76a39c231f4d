#include "cuda_runtime_info.h"

#include <cstdio>

#include <cuda_runtime_api.h>

namespace vla {

namespace {
void copy_text(char* dst, std::size_t n, const char* src) {
  std::snprintf(dst, n, "%.*s", static_cast<int>(n - 1), src ? src : "");  // truncation is intended
}
}  // namespace

CudaRuntimeInfo query_cuda_runtime() {
  CudaRuntimeInfo info{};
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaDriverGetVersion(&info.driver_version);  // sets 0 when no driver is present
  const cudaError_t err = cudaGetDeviceCount(&info.device_count);
  info.error_code = static_cast<int>(err);
  copy_text(info.error_name, sizeof info.error_name, cudaGetErrorName(err));
  copy_text(info.error_text, sizeof info.error_text, cudaGetErrorString(err));
  if (err != cudaSuccess) {
    info.device_count = 0;
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return info;
  }
  if (info.device_count > 0) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
      copy_text(info.device_name, sizeof info.device_name, prop.name);
      info.cc_major = prop.major;
      info.cc_minor = prop.minor;
    }
  }
  return info;
}

}  // namespace vla
