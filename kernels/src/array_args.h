// Turning Python arguments into raw views for the kernels: NumPy (buffer protocol) on the host,
// __cuda_array_interface__ (CuPy, PyTorch, Numba, ...) on the device. Every rejection is a
// ValueError that names the argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace vla {

namespace py = pybind11;

struct ArrayArg {
  void* data = nullptr;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // bytes
  char kind = '?';               // 'u' unsigned, 'i' signed, 'f' float, 'b' bool
  int itemsize = 0;
  bool device = false;
  bool readonly = false;
  py::object keepalive;  // holds the buffer while the view is in use

  int ndim() const { return static_cast<int>(shape.size()); }
  std::string dtype() const {
    if (kind == 'b') return "bool";
    const char* base = kind == 'u' ? "uint" : kind == 'i' ? "int" : kind == 'f' ? "float" : "?";
    return std::string(base) + std::to_string(itemsize * 8);
  }
  std::string shape_str() const {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
  }
};

inline py::value_error arg_error(const char* name, const std::string& what) {
  return py::value_error(std::string(name) + ": " + what);
}

inline ArrayArg parse_cuda_array_interface(py::handle obj, const char* name) {
  ArrayArg a;
  py::dict cai = obj.attr("__cuda_array_interface__").cast<py::dict>();
  py::tuple data = cai["data"].cast<py::tuple>();
  a.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  a.readonly = data[1].cast<bool>();
  for (auto d : cai["shape"].cast<py::tuple>()) a.shape.push_back(d.cast<int64_t>());
  std::string typestr = cai["typestr"].cast<std::string>();
  if (typestr.size() < 3) throw arg_error(name, "bad __cuda_array_interface__ typestr '" + typestr + "'");
  a.kind = typestr[1];
  a.itemsize = std::stoi(typestr.substr(2));
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    for (auto s : cai["strides"].cast<py::tuple>()) a.strides.push_back(s.cast<int64_t>());
  } else {  // C-contiguous
    a.strides.assign(a.shape.size(), 0);
    int64_t st = a.itemsize;
    for (int i = static_cast<int>(a.shape.size()) - 1; i >= 0; --i) {
      a.strides[i] = st;
      st *= a.shape[i];
    }
  }
  a.device = true;
  a.keepalive = py::reinterpret_borrow<py::object>(obj);
  return a;
}

// A host array through the buffer protocol (no copy), or a device array through its interface.
inline ArrayArg parse_array(py::handle obj, const char* name, bool writable) {
  if (obj.is_none()) throw arg_error(name, "expected an array, got None");
  if (py::hasattr(obj, "__cuda_array_interface__")) {
    ArrayArg a = parse_cuda_array_interface(obj, name);
    if (writable && a.readonly) throw arg_error(name, "device array is read-only");
    return a;
  }
  if (!PyObject_CheckBuffer(obj.ptr())) {
    throw arg_error(name, std::string("expected a NumPy array or an object with __cuda_array_interface__, got ") +
                              std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  }
  py::buffer buf = py::reinterpret_borrow<py::buffer>(obj);
  py::buffer_info info = buf.request(false);  // writability is checked below, with the argument's name
  ArrayArg a;
  a.data = info.ptr;
  a.shape = info.shape;
  a.strides = info.strides;
  a.itemsize = static_cast<int>(info.itemsize);
  a.readonly = info.readonly;
  if (writable && a.readonly) throw arg_error(name, "array is read-only");
  const std::string& f = info.format;
  const char c = f.empty() ? '?' : f.back();
  if (c == 'B') a.kind = 'u';
  else if (c == 'b' || c == 'h' || c == 'i' || c == 'l' || c == 'q') a.kind = 'i';
  else if (c == 'H' || c == 'I' || c == 'L' || c == 'Q') a.kind = 'u';
  else if (c == 'f' || c == 'd' || c == 'e') a.kind = 'f';
  else if (c == '?') a.kind = 'b';
  a.keepalive = py::reinterpret_borrow<py::object>(obj);
  return a;
}

// Stream argument: None (default stream), an int handle, or an object with .cuda_stream / .ptr.
inline uintptr_t parse_stream(py::handle stream) {
  if (stream.is_none()) return 0;
  if (py::isinstance<py::int_>(stream)) return stream.cast<uintptr_t>();
  if (py::hasattr(stream, "cuda_stream")) return stream.attr("cuda_stream").cast<uintptr_t>();
  if (py::hasattr(stream, "ptr")) return stream.attr("ptr").cast<uintptr_t>();
  throw py::value_error("stream: expected None, an int handle, or an object with .cuda_stream or .ptr");
}

// Raised (as RuntimeError) when a device array reaches a build or machine that cannot run CUDA.
std::string cuda_unavailable_reason();
// The same, asked once per process (devices do not come and go): the launch paths call this, since
// the query behind it (device count and properties) costs more than a kernel launch.
const std::string& cached_cuda_unavailable_reason();

}  // namespace vla
