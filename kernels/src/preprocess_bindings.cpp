// Python face of the preprocess kernel. Everything that could make the kernel read or write out of
// bounds is checked here, against the arrays' own shapes and strides, before any pointer is used;
// the friendlier checks (ROI inside the frame, mean/std, colour space names) are in kernels/preprocess.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "array_args.h"
#include "parallel.h"
#include "preprocess.h"

namespace py = pybind11;

namespace vla {

namespace {

const char* kFormatNames[FMT_COUNT] = {"yuyv", "uyvy", "nv12", "i420", "rgb", "bgr", "gray"};

// Fill the source part of the params from the frame array; reject what the format cannot be.
void bind_source(const ArrayArg& s, int fmt, PreprocessParams& p) {
  const std::string F = kFormatNames[fmt];
  if (s.kind != 'u' || s.itemsize != 1) throw arg_error("src", "dtype must be uint8, got " + s.dtype());
  const int nd = s.ndim();
  if (nd < 2 || nd > 3) throw arg_error("src", F + " frame must be 2-D or 3-D, got shape " + s.shape_str());
  const int64_t rows = s.shape[0], pitch = s.strides[0];
  int64_t width = 0, row_bytes = 0;
  auto need_inner = [&](int64_t inner_stride, int64_t pixel_stride) {
    if (s.strides[nd - 1] != inner_stride || (nd == 3 && s.strides[1] != pixel_stride)) {
      throw arg_error("src", F + " rows must be contiguous bytes (strides " + std::to_string(s.strides[0]) + ", " +
                                 std::to_string(s.strides[1]) + (nd == 3 ? ", " + std::to_string(s.strides[2]) : "") +
                                 " are not); only the row pitch may differ");
    }
  };
  switch (fmt) {
    case FMT_YUYV:
    case FMT_UYVY:
      if (nd == 3) {
        if (s.shape[2] != 2) throw arg_error("src", F + " frame must be (H, W, 2) or (H, 2*W), got " + s.shape_str());
        need_inner(1, 2);
        width = s.shape[1];
      } else {
        need_inner(1, 1);
        if (s.shape[1] % 2) throw arg_error("src", F + " rows must hold 2 bytes per pixel, got " + s.shape_str());
        width = s.shape[1] / 2;
      }
      if (width % 2) throw arg_error("src", F + " width " + std::to_string(width) + " is odd: pixels come in pairs");
      row_bytes = 2 * width;
      break;
    case FMT_NV12:
    case FMT_I420:
      if (nd != 2) throw arg_error("src", F + " frame must be (H*3/2, W) bytes, got " + s.shape_str());
      need_inner(1, 1);
      width = s.shape[1];
      if (rows % 3 || width % 2) {  // rows = H * 3/2 makes H even
        throw arg_error("src", F + " frame must be (H*3/2, W) with H and W even, got " + s.shape_str());
      }
      if (fmt == FMT_I420 && pitch % 2) throw arg_error("src", "i420 row pitch must be even, got " + std::to_string(pitch));
      row_bytes = width;
      break;
    case FMT_RGB:
    case FMT_BGR:
      if (nd != 3 || s.shape[2] != 3) throw arg_error("src", F + " frame must be (H, W, 3), got " + s.shape_str());
      need_inner(1, 3);
      width = s.shape[1];
      row_bytes = 3 * width;
      break;
    default:
      if (nd != 2) throw arg_error("src", "gray frame must be (H, W), got " + s.shape_str());
      need_inner(1, 1);
      width = s.shape[1];
      row_bytes = width;
  }
  const int64_t height = (fmt == FMT_NV12 || fmt == FMT_I420) ? rows / 3 * 2 : rows;
  if (width < 1 || height < 1) throw arg_error("src", "frame is empty: " + s.shape_str());
  if (pitch < row_bytes) {
    throw arg_error("src", "row pitch " + std::to_string(pitch) + " is smaller than a row (" +
                               std::to_string(row_bytes) + " bytes)");
  }
  p.fmt = fmt;
  p.src_w = static_cast<int>(width);
  p.src_h = static_cast<int>(height);
  p.plane0 = static_cast<const uint8_t*>(s.data);
  p.pitch0 = pitch;
  if (fmt == FMT_NV12) {
    p.plane1 = p.plane0 + height * pitch;
    p.pitch1 = pitch;
  } else if (fmt == FMT_I420) {
    p.plane1 = p.plane0 + height * pitch;
    p.pitch1 = pitch / 2;
    p.plane2 = p.plane1 + (height / 2) * p.pitch1;
    p.pitch2 = pitch / 2;
  }
}

void bind_output(const ArrayArg& o, const std::string& layout, PreprocessParams& p) {
  if (o.kind == 'u' && o.itemsize == 1) p.out_type = OUT_U8;
  else if (o.kind == 'f' && o.itemsize == 4) p.out_type = OUT_F32;
  else if (o.kind == 'f' && o.itemsize == 2) p.out_type = OUT_F16;
  else throw arg_error("out", "dtype must be uint8, float32 or float16, got " + o.dtype());
  if (o.ndim() != 3) throw arg_error("out", "must be 3-D ((3, H, W) or (H, W, 3)), got " + o.shape_str());
  for (int i = 0; i < 3; ++i) {
    if (o.strides[i] % o.itemsize) throw arg_error("out", "strides are not a multiple of the element size");
  }
  const int c = layout == "chw" ? 0 : 2, y = layout == "chw" ? 1 : 0, x = layout == "chw" ? 2 : 1;
  if (o.shape[c] != 3) {
    throw arg_error("out", "layout '" + layout + "' needs 3 channels on axis " + std::to_string(c) + ", got shape " +
                               o.shape_str());
  }
  if (o.shape[y] < 1 || o.shape[x] < 1) throw arg_error("out", "is empty: " + o.shape_str());
  p.out = o.data;
  p.out_h = static_cast<int>(o.shape[y]);
  p.out_w = static_cast<int>(o.shape[x]);
  p.os_c = o.strides[c] / o.itemsize;
  p.os_y = o.strides[y] / o.itemsize;
  p.os_x = o.strides[x] / o.itemsize;
}

// A job's arrays, checked and turned into kernel parameters (`src` and `out` keep the arrays referenced).
struct BoundJob {
  PreprocessParams p;
  ArrayArg src, out;
};

BoundJob bind_job(py::handle src, int fmt, py::handle out, const std::string& layout,
                  const std::array<float, 9>& matrix, bool bilinear, const std::array<float, 6>& yuv, bool swap_rb,
                  const std::array<float, 3>& scale, const std::array<float, 3>& bias,
                  const std::array<float, 3>& border) {
  if (fmt < 0 || fmt >= FMT_COUNT) throw arg_error("fmt", "unknown pixel format code " + std::to_string(fmt));
  if (layout != "chw" && layout != "hwc") throw arg_error("layout", "must be 'chw' or 'hwc', got '" + layout + "'");
  BoundJob j{PreprocessParams{}, parse_array(src, "src", false), parse_array(out, "out", true)};
  if (j.src.device != j.out.device) {
    throw arg_error("out", std::string("is in ") + (j.out.device ? "device" : "host") + " memory but src is in " +
                               (j.src.device ? "device" : "host") + " memory; put both on the same side");
  }
  PreprocessParams& p = j.p;
  bind_source(j.src, fmt, p);
  bind_output(j.out, layout, p);
  for (int i = 0; i < 9; ++i) p.m[i] = matrix[i];
  p.bilinear = bilinear;
  p.yo = yuv[0], p.ys = yuv[1], p.rv = yuv[2], p.gu = yuv[3], p.gv = yuv[4], p.bu = yuv[5];
  p.swap_rb = swap_rb;
  for (int i = 0; i < 3; ++i) p.scale[i] = scale[i], p.bias[i] = bias[i], p.border[i] = border[i];
  return j;
}

// Device jobs: launches in order on one stream, nothing waited for.
void launch_cuda(const std::vector<PreprocessParams>& ps, py::handle stream) {
  const std::string& why = cached_cuda_unavailable_reason();
  if (!why.empty()) throw std::runtime_error("preprocess: CUDA unavailable: " + why);
  const uintptr_t st = parse_stream(stream);
#ifdef VLA_HAVE_CUDA
  for (const PreprocessParams& p : ps) {
    const int err = preprocess_cuda(p, st);
    if (err != 0) throw std::runtime_error("preprocess: CUDA launch failed with cudaError " + std::to_string(err));
  }
#else
  (void)ps;
  (void)st;
#endif
}

void preprocess_py(py::handle src, int fmt, py::handle out, const std::string& layout, std::array<float, 9> matrix,
                   bool bilinear, std::array<float, 6> yuv, bool swap_rb, std::array<float, 3> scale,
                   std::array<float, 3> bias, std::array<float, 3> border, py::handle stream, int threads) {
  const BoundJob j = bind_job(src, fmt, out, layout, matrix, bilinear, yuv, swap_rb, scale, bias, border);
  if (j.src.device) {
    launch_cuda({j.p}, stream);
    return;
  }
  py::gil_scoped_release nogil;
  preprocess_cpu(j.p, threads);
}

// Several frames, started: every job is checked before any runs; host jobs are handed to one team
// of threads whose helpers start at once (the caller joins in with wait()), device jobs are
// launched in order on `stream` and wait() has nothing to do. The run keeps the arrays alive.
class PreprocessRun {
 public:
  PreprocessRun(const py::list& jobs, py::handle stream, int threads) {
    bound_.reserve(jobs.size());
    for (size_t i = 0; i < jobs.size(); ++i) {
      try {
        const py::tuple t = jobs[i].cast<py::tuple>();
        if (t.size() != 11) throw py::value_error("expected an 11-tuple of preprocess arguments");
        bound_.push_back(bind_job(t[0], t[1].cast<int>(), t[2], t[3].cast<std::string>(),
                                  t[4].cast<std::array<float, 9>>(), t[5].cast<bool>(),
                                  t[6].cast<std::array<float, 6>>(), t[7].cast<bool>(),
                                  t[8].cast<std::array<float, 3>>(), t[9].cast<std::array<float, 3>>(),
                                  t[10].cast<std::array<float, 3>>()));
      } catch (const py::value_error& e) {
        throw py::value_error("jobs[" + std::to_string(i) + "]: " + e.what());
      } catch (const py::cast_error& e) {
        throw py::value_error("jobs[" + std::to_string(i) + "]: " + e.what());
      }
      if (bound_.back().src.device != bound_.front().src.device) {
        throw py::value_error("jobs[" + std::to_string(i) + "]: mixes host and device arrays with jobs[0]; "
                              "run host and device frames in separate calls");
      }
    }
    std::vector<PreprocessParams> ps;
    ps.reserve(bound_.size());
    for (const BoundJob& j : bound_) ps.push_back(j.p);
    if (ps.empty()) return;
    if (bound_.front().src.device) {
      launch_cuda(ps, stream);
      return;
    }
    team_ = preprocess_cpu_start(std::move(ps), threads);
  }
  PreprocessRun(const PreprocessRun&) = delete;
  PreprocessRun& operator=(const PreprocessRun&) = delete;
  ~PreprocessRun() { team_.reset(); }  // an unwaited run still finishes before its arrays go

  void wait() {
    if (!team_) return;
    py::gil_scoped_release nogil;
    team_->finish();
  }

 private:
  std::vector<BoundJob> bound_;
  std::unique_ptr<RowTeam> team_;
};

}  // namespace

void bind_preprocess(py::module_& m) {
  m.def("preprocess", &preprocess_py, py::arg("src"), py::arg("fmt"), py::arg("out"), py::arg("layout"),
        py::arg("matrix"), py::arg("bilinear"), py::arg("yuv"), py::arg("swap_rb"), py::arg("scale"), py::arg("bias"),
        py::arg("border"), py::arg("stream"), py::arg("threads"),
        "Low-level preprocess; use vla.kernels.preprocess, which computes these arguments.");
  py::class_<PreprocessRun>(m, "PreprocessRun", "Low-level started batch; use vla.kernels.preprocess_start.")
      .def(py::init<const py::list&, py::handle, int>(), py::arg("jobs"), py::arg("stream"), py::arg("threads"))
      .def("wait", &PreprocessRun::wait, "Take part in the remaining rows and return when all are done.");
  py::list names;
  for (const char* n : kFormatNames) names.append(n);
  m.attr("PIXEL_FORMATS") = names;
}

}  // namespace vla
