// What the CUDA runtime says about this machine, in plain C types so the pybind11 side needs no
// CUDA headers.
#pragma once

namespace vla {

struct CudaRuntimeInfo {
  int error_code;        // cudaError_t of cudaGetDeviceCount (0 = success)
  int device_count;      // 0 when error_code != 0
  int runtime_version;   // e.g. 13000
  int driver_version;    // 0 when no driver is installed
  char error_name[64];   // cudaGetErrorName
  char error_text[160];  // cudaGetErrorString
  char device_name[128]; // device 0, when there is one
  int cc_major, cc_minor;
};

// Never throws and never aborts: on a machine without a GPU or driver it reports the error.
CudaRuntimeInfo query_cuda_runtime();

}  // namespace vla
