// pybind11 module `vla.kernels._core`. Later issues add the fused preprocess/decode kernels here.
#include <pybind11/pybind11.h>

#include <string>

#ifdef VLA_HAVE_CUDA
#include "cuda_runtime_info.h"
#endif

namespace py = pybind11;

namespace {

py::dict cuda_report() {
  py::dict d;
#ifdef VLA_HAVE_CUDA
  const vla::CudaRuntimeInfo info = vla::query_cuda_runtime();
  d["compiled"] = true;
  d["architectures"] = std::string(VLA_CUDA_ARCHS);
  d["runtime_version"] = info.runtime_version;
  d["driver_version"] = info.driver_version;
  d["error_code"] = info.error_code;
  d["error_name"] = std::string(info.error_name);
  d["error_text"] = std::string(info.error_text);
  d["device_count"] = info.device_count;
  d["device_name"] = std::string(info.device_name);
  d["compute_capability"] = py::make_tuple(info.cc_major, info.cc_minor);
#else
  d["compiled"] = false;
  d["device_count"] = 0;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "vla native kernels (C++ always, CUDA when built with nvcc)";
  m.def("cuda_report", &cuda_report,
        "Ask the CUDA runtime what it sees; never raises, even without a driver.");
#ifdef VLA_HAVE_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
}
