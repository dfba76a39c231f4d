// Python bindings of decode_trajectory and integrate_controls: validate every argument (a ValueError
// naming it), then run the CPU twin with the GIL released (host arrays) or enqueue the CUDA kernel
// on the given stream (device arrays). The Python wrapper (kernels/decode.py) allocates host outputs
// and turns decode's result words into a DecodedTrajectory.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

#include "array_args.h"
#include "decode.h"

namespace py = pybind11;

namespace vla {

namespace {

// float32 array, C-contiguous, 4-byte aligned, non-null when non-empty: the kernels index raw
// pointers, so anything else would read out of bounds or misaligned.
void require_layout(const ArrayArg& a, const char* name, char kind) {
  if (a.kind != kind || a.itemsize != 4) {
    throw arg_error(name, std::string("expected ") + (kind == 'f' ? "float32" : "int32") + ", got " + a.dtype());
  }
  int64_t expect = a.itemsize;
  int64_t size = 1;
  for (int d = a.ndim() - 1; d >= 0; --d) {
    if (a.shape[d] < 0) throw arg_error(name, "negative dimension in shape " + a.shape_str());
    if (a.shape[d] != 1 && a.strides[d] != expect) {
      throw arg_error(name, "must be C-contiguous (shape " + a.shape_str() + "; use np.ascontiguousarray)");
    }
    expect *= a.shape[d];
    size *= a.shape[d];
  }
  if (size > std::numeric_limits<int32_t>::max() / 8) throw arg_error(name, "array too large");
  if (size > 0 && a.data == nullptr) throw arg_error(name, "null data pointer");
  if (reinterpret_cast<uintptr_t>(a.data) % 4 != 0) throw arg_error(name, "data is not 4-byte aligned");
}

// `device`: the side of the call's main input, `main` (trajectory for decode, controls for integrate).
void require_same_side(const ArrayArg& a, const char* name, bool device, const char* main = "trajectory") {
  if (a.device != device) {
    throw arg_error(name, std::string("is a ") + (a.device ? "device" : "host") + " array but " + main + " is a " +
                              (device ? "device" : "host") + " array (do not mix host and device arrays)");
  }
}

int64_t byte_size(const ArrayArg& a) {
  int64_t n = a.itemsize;
  for (int64_t d : a.shape) n *= d;
  return n;
}

bool overlaps(const ArrayArg& a, const ArrayArg& b) {
  const auto a0 = reinterpret_cast<uintptr_t>(a.data), b0 = reinterpret_cast<uintptr_t>(b.data);
  const int64_t na = byte_size(a), nb = byte_size(b);
  return na > 0 && nb > 0 && a0 < b0 + static_cast<uint64_t>(nb) && b0 < a0 + static_cast<uint64_t>(na);
}

// A number as iostreams print it by default (%g), without iostreams: on an H200 machine (CuPy and PyTorch
// loaded in the same process) the errors formatted through std::ostringstream crashed the process, the
// others did not; snprintf keeps no locale state that another C++ runtime could disagree with.
std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

float positive_limit(double v, const char* name) {
  if (!(v > 0.0)) {  // also NaN
    throw arg_error(name, "must be > 0, got " + num(v));
  }
  return static_cast<float>(v);
}

void decode_trajectory_py(py::handle trajectory, py::handle score, py::handle times, py::handle out,
                          py::handle result, double dt, double max_curvature, double max_accel,
                          double max_speed, int batch, py::handle stream) {
  // trajectory [K, T, F] or [B, K, T, F]
  const ArrayArg traj = parse_array(trajectory, "trajectory", false);
  require_layout(traj, "trajectory", 'f');
  const bool device = traj.device;
  if (traj.ndim() != 3 && traj.ndim() != 4) {
    throw arg_error("trajectory", "expected [K, T, F] or [B, K, T, F], got shape " + traj.shape_str());
  }
  const int lead = traj.ndim() - 3;
  const int64_t B = lead ? traj.shape[0] : 1;
  const int64_t K = traj.shape[lead], T = traj.shape[lead + 1], F = traj.shape[lead + 2];
  if (K < 1) throw arg_error("trajectory", "needs at least one mode (K >= 1), got shape " + traj.shape_str());
  if (T < 2) throw arg_error("trajectory", "needs at least 2 waypoints (T >= 2), got shape " + traj.shape_str());
  if (F < 2) throw arg_error("trajectory", "needs x and y (F >= 2), got shape " + traj.shape_str());
  if (batch < 0 || batch >= B) {
    throw arg_error("batch", "must be in [0, " + std::to_string(B) + ") for trajectory shape " + traj.shape_str() +
                                 ", got " + std::to_string(batch));
  }

  if (!(dt > 0.0) || !std::isfinite(dt)) {
    throw arg_error("dt", "must be a finite number > 0 (seconds between waypoints), got " + num(dt));
  }

  DecodeParams p{};
  p.K = static_cast<int>(K);
  p.T = static_cast<int>(T);
  p.F = static_cast<int>(F);
  p.dt = static_cast<float>(dt);
  p.max_curvature = positive_limit(max_curvature, "max_curvature");
  p.max_accel = positive_limit(max_accel, "max_accel");
  p.max_speed = positive_limit(max_speed, "max_speed");
  p.trajectory = static_cast<const float*>(traj.data) + static_cast<int64_t>(batch) * K * T * F;

  // score [K] ([B, K] with a batched trajectory) or None
  ArrayArg sc;
  if (!score.is_none()) {
    sc = parse_array(score, "score", false);
    require_same_side(sc, "score", device);
    require_layout(sc, "score", 'f');
    const bool ok = lead ? (sc.ndim() == 2 && sc.shape[0] == B && sc.shape[1] == K)
                         : (sc.ndim() == 1 && sc.shape[0] == K);
    if (!ok) {
      throw arg_error("score", std::string("expected shape ") + (lead ? "[B, K]" : "[K]") + " matching trajectory " +
                                   traj.shape_str() + ", got " + sc.shape_str());
    }
    p.score = static_cast<const float*>(sc.data) + static_cast<int64_t>(batch) * K;
  }

  // times [M] or None (native grid)
  ArrayArg tm;
  int64_t M = T;
  if (!times.is_none()) {
    tm = parse_array(times, "times", false);
    require_same_side(tm, "times", device);
    require_layout(tm, "times", 'f');
    if (tm.ndim() != 1) throw arg_error("times", "expected a 1-D array [M], got shape " + tm.shape_str());
    M = tm.shape[0];
    p.times = static_cast<const float*>(tm.data);
    if (!device) {  // device times are checked by the kernel (verdict bit TIMES) to avoid a sync
      const float horizon = static_cast<float>(T) * p.dt;
      for (int64_t i = 0; i < M; ++i) {
        const float t = p.times[i];
        if (!time_in_range(t, p.T, p.dt)) {
          throw arg_error("times", "times[" + std::to_string(i) + "] = " + num(t) +
                                       " s is outside the trajectory [0, " + num(horizon) + "] s");
        }
      }
    }
  }
  p.M = static_cast<int>(M);

  // out [M, 6] float32, writable
  // Parsed read-only, then checked: asking NumPy for a writable buffer of a read-only array would
  // raise BufferError instead of a ValueError naming the argument.
  const ArrayArg o = parse_array(out, "out", false);
  require_same_side(o, "out", device);
  require_layout(o, "out", 'f');
  if (o.readonly) throw arg_error("out", "must be writable");
  if (o.ndim() != 2 || o.shape[0] != M || o.shape[1] != kDecodeColumns) {
    throw arg_error("out", "expected shape (" + std::to_string(M) + ", 6) float32, got " + o.shape_str());
  }
  p.out = static_cast<float*>(o.data);

  // result int32 [20], writable
  const ArrayArg res = parse_array(result, "result", false);
  require_same_side(res, "result", device);
  require_layout(res, "result", 'i');
  if (res.readonly) throw arg_error("result", "must be writable");
  if (res.ndim() != 1 || res.shape[0] != kDecodeResultWords) {
    throw arg_error("result", "expected shape (" + std::to_string(kDecodeResultWords) + ",) int32, got " +
                                  res.shape_str());
  }
  const ArrayArg* inputs[] = {&traj, &sc, &tm};
  for (const ArrayArg* in : inputs) {
    if (in->data && overlaps(o, *in)) throw arg_error("out", "overlaps an input array");
    if (in->data && overlaps(res, *in)) throw arg_error("result", "overlaps an input array");
  }
  if (overlaps(o, res)) throw arg_error("result", "overlaps out");
  auto* r = static_cast<DecodeResult*>(res.data);

  if (!device) {
    py::gil_scoped_release release;
    decode_cpu(p, r);
    return;
  }
  const uintptr_t s = parse_stream(stream);
  const std::string& reason = cached_cuda_unavailable_reason();
  if (!reason.empty()) throw std::runtime_error("decode_trajectory: CUDA unavailable: " + reason);
#ifdef VLA_HAVE_CUDA
  const int err = decode_cuda_launch(p, r, s);
  if (err != 0) {
    throw std::runtime_error(std::string("decode_trajectory: CUDA launch failed: ") + decode_cuda_error_text(err) +
                             " (" + std::to_string(err) + ")");
  }
#else
  (void)s;  // unreachable: cuda_unavailable_reason() is never empty without CUDA
#endif
}

// controls [K, T, 2] (or [1, K, T, 2]) -> out [K, T, 4]: validated, then the CPU twin with the GIL
// released (host) or the kernel enqueued on `stream` (device).
void integrate_controls_py(py::handle controls, py::handle out, double v0, double dt, py::handle stream) {
  const ArrayArg ctl = parse_array(controls, "controls", false);
  require_layout(ctl, "controls", 'f');
  const bool device = ctl.device;
  if (ctl.ndim() != 3 && ctl.ndim() != 4) {
    throw arg_error("controls", "expected [K, T, 2] or [1, K, T, 2], got shape " + ctl.shape_str());
  }
  const int lead = ctl.ndim() - 3;
  if (lead && ctl.shape[0] != 1) {
    throw arg_error("controls", "expected one batch item [1, K, T, 2], got shape " + ctl.shape_str() +
                                    " (select the item first)");
  }
  const int64_t K = ctl.shape[lead], T = ctl.shape[lead + 1], C = ctl.shape[lead + 2];
  if (C != kControlChannels) {
    throw arg_error("controls", "expected 2 channels (accel, curvature) in the last dimension, got shape " +
                                    ctl.shape_str());
  }
  if (K < 1) throw arg_error("controls", "needs at least one mode (K >= 1), got shape " + ctl.shape_str());
  if (T < 1) throw arg_error("controls", "needs at least one step (T >= 1), got shape " + ctl.shape_str());

  // The float casts must stay finite too: 1e300 is a finite double but an infinite float.
  if (!(dt > 0.0) || !std::isfinite(static_cast<float>(dt))) {
    throw arg_error("dt", "must be a finite number > 0 (seconds per control step), got " + num(dt));
  }
  if (!(v0 >= 0.0) || !std::isfinite(static_cast<float>(v0))) {
    throw arg_error("v0", "must be a finite number >= 0 (the ego's current speed, m/s), got " + num(v0));
  }

  IntegrateParams p{};
  p.controls = static_cast<const float*>(ctl.data);
  p.K = static_cast<int>(K);
  p.T = static_cast<int>(T);
  p.v0 = static_cast<float>(v0);
  p.dt = static_cast<float>(dt);

  // out [K, T, 4] float32, writable (parsed read-only, then checked: see decode_trajectory_py).
  const ArrayArg o = parse_array(out, "out", false);
  require_same_side(o, "out", device, "controls");
  require_layout(o, "out", 'f');
  if (o.readonly) throw arg_error("out", "must be writable");
  if (o.ndim() != 3 || o.shape[0] != K || o.shape[1] != T || o.shape[2] != kPoseColumns) {
    throw arg_error("out", "expected shape (" + std::to_string(K) + ", " + std::to_string(T) +
                               ", 4) float32 (x, y, yaw, speed), got " + o.shape_str());
  }
  if (overlaps(o, ctl)) throw arg_error("out", "overlaps controls");
  p.out = static_cast<float*>(o.data);

  if (!device) {
    py::gil_scoped_release release;
    integrate_cpu(p);
    return;
  }
  const uintptr_t s = parse_stream(stream);
  const std::string& reason = cached_cuda_unavailable_reason();
  if (!reason.empty()) throw std::runtime_error("integrate_controls: CUDA unavailable: " + reason);
#ifdef VLA_HAVE_CUDA
  const int err = integrate_cuda_launch(p, s);
  if (err != 0) {
    throw std::runtime_error(std::string("integrate_controls: CUDA launch failed: ") + decode_cuda_error_text(err) +
                             " (" + std::to_string(err) + ")");
  }
#else
  (void)s;  // unreachable: cuda_unavailable_reason() is never empty without CUDA
#endif
}

}  // namespace

void bind_decode(py::module_& m) {
  m.attr("DECODE_RESULT_WORDS") = kDecodeResultWords;
  m.attr("DECODE_MIN_SPEED") = kMinSpeed;
  m.def("decode_trajectory", &decode_trajectory_py, py::arg("trajectory"), py::arg("score"), py::arg("times"),
        py::arg("out"), py::arg("result"), py::arg("dt"), py::arg("max_curvature"), py::arg("max_accel"),
        py::arg("max_speed"), py::arg("batch") = 0, py::arg("stream") = py::none(),
        "Best mode, resampled with speed/accel/curvature and a plausibility verdict, written into `out` "
        "[M, 6] float32 and `result` int32[20]. Host arrays: CPU, GIL released, done on return. Device "
        "arrays: enqueued on `stream`, complete when the stream reaches it. Use vla.kernels.decode.");
  m.attr("INTEGRATE_POSE_COLUMNS") = kPoseColumns;
  m.def("integrate_controls", &integrate_controls_py, py::arg("controls"), py::arg("out"), py::arg("v0"),
        py::arg("dt"), py::arg("stream") = py::none(),
        "Integrate per-step (accel, curvature) controls [K, T, 2] float32 from speed v0 into poses (x, y, yaw, "
        "speed) written into `out` [K, T, 4] float32. Host arrays: CPU, GIL released, done on return. Device "
        "arrays: enqueued on `stream`. Use vla.kernels.decode.integrate_controls.");
}

}  // namespace vla
