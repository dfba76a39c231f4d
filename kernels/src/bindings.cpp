// pybind11 module `vla.kernels._core`: the CUDA runtime report, and each kernel's bindings.
#include <pybind11/pybind11.h>

#include <string>

#include "array_args.h"

#ifdef VLA_HAVE_CUDA
#include "cuda_runtime_info.h"
#endif

namespace py = pybind11;

namespace vla {

void bind_preprocess(py::module_& m);
void bind_decode(py::module_& m);

std::string cuda_unavailable_reason() {
#ifdef VLA_HAVE_CUDA
  const CudaRuntimeInfo info = query_cuda_runtime();
  if (info.error_code == 35) return "no NVIDIA driver on this machine (cudaErrorInsufficientDriver, 35)";
  if (info.error_code == 100) return "the driver reports no CUDA device (cudaErrorNoDevice, 100)";
  if (info.error_code != 0) {
    return std::string(info.error_name) + " (" + std::to_string(info.error_code) + "): " + info.error_text;
  }
  if (info.device_count == 0) return "no CUDA device";
  return "";
#else
  return "this build has no CUDA code (nvcc was not found when it was built)";
#endif
}

const std::string& cached_cuda_unavailable_reason() {
  static const std::string reason = cuda_unavailable_reason();
  return reason;
}

}  // namespace vla

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
  m.def("cuda_unavailable_reason", &vla::cuda_unavailable_reason,
        "Why CUDA kernels cannot run here, or '' when they can (the text device-array errors use).");
#ifdef VLA_HAVE_CUDA
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  vla::bind_preprocess(m);
  vla::bind_decode(m);
}
