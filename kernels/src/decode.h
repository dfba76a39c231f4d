// decode_trajectory: pick the best of K modes, resample it onto the publish times, derive speed,
// longitudinal acceleration and curvature, and check them against plausibility limits, in one pass.
//
// The arithmetic is written once here, as VLA_HD inline functions, and compiled by g++ (the CPU
// twin, decode_cpu.cpp) and nvcc (the CUDA kernel, decode_cuda.cu), so both give the same numbers
// up to float rounding (nvcc may fuse multiply-adds).
// Nothing in this header needs CUDA or pybind11 headers.
//
// Definitions (ego frame, x forward, y left; the ego is at (0, 0, 0) at t = 0):
//   samples      j = 0..T at t_j = j*dt: j = 0 is the implicit origin, j >= 1 is waypoint j-1;
//   velocity     central difference inside, second-order one-sided at j = 0 and j = T (as
//                np.gradient(..., edge_order=2)); exact for constant acceleration;
//   second deriv (P[j+1] - 2 P[j] + P[j-1]) / dt^2 inside; the ends reuse their neighbour's value
//                (the one-sided 3-point stencil), also exact for constant acceleration;
//   speed        |v|;
//   accel        d|v|/dt: the velocity stencil applied to the speed samples (longitudinal, signed:
//                negative when braking);
//   curvature    (x'y'' - y'x'') / |v|^3 while moving, 0 at a standstill (positive = turning left);
//   yaw          the model's yaw as given (F >= 3) or, for F == 2, the path heading atan2(y', x') in
//                [-pi, pi], held while standing; yaw(0) = 0 in both cases;
//   resampling   linear interpolation between the two samples around each requested time (yaw along
//                the shorter way round, so a +-pi wrap does not sweep through zero);
//   checks       non-finite score, any non-finite value in any channel of the chosen mode or in an
//                output row -> NONFINITE; per output row: |curvature| > max while speed >= kMinSpeed
//                -> CURVATURE, |accel| > max -> ACCEL, speed > max -> SPEED.
//
// integrate_controls: some action experts (Alpamayo-style) output per-step controls instead of
// poses: controls[k, i] = (a, c), longitudinal acceleration (m/s²) and curvature (1/m, positive =
// left) held over step i of dt seconds. Each mode k is integrated on its own, from x = y = yaw = 0
// and v = v0 (the ego's current speed, >= 0), into out[k, i] = (x, y, yaw, v) at t = (i + 1) * dt,
// which is the [K, T, F = 4] trajectory decode_trajectory takes:
//   v_next  = max(0, v + a dt)          the vehicle brakes to a standstill, it does not reverse
//   v_mid   = (v + v_next) / 2          mean speed over the step (exact unless it stops mid-step)
//   dyaw    = c v_mid dt                heading change over the distance travelled
//   yaw_mid = yaw + dyaw / 2            midpoint heading (second order in dyaw)
//   x += v_mid dt cos(yaw_mid)
//   y += v_mid dt sin(yaw_mid)
//   yaw += dyaw; v = v_next
// A constant curvature c at constant speed gives points on a circle through the origin whose
// radius is 1/c times (h/2)/sin(h/2), h = dyaw per step: 0.01 % more than 1/c at h = 0.05 rad.
// Non-finite inputs propagate to every later row of their mode instead of being hidden, so the
// decode after this reports NONFINITE: a NaN passes the clamp (fmaxf(0, NaN) would give 0), and so
// does an infinite speed (-inf from a = -inf must not become a standstill). A NaN curvature leaves
// the speed column finite (speed does not depend on it) but poisons x, y and yaw.
#pragma once

#include <cmath>
#include <cstdint>

#include "hd.h"

namespace vla {

// Verdict bits. TIMES is only ever set by the CUDA path: host times are validated before the call
// (ValueError), but device times cannot be read without a synchronisation, so the kernel clamps
// them and reports the problem instead.
constexpr uint32_t kDecodeNonFinite = 1u;
constexpr uint32_t kDecodeCurvature = 2u;
constexpr uint32_t kDecodeAccel = 4u;
constexpr uint32_t kDecodeSpeed = 8u;
constexpr uint32_t kDecodeTimes = 16u;
constexpr int kDecodeFlags = 5;  // bit b of the verdict <-> first[b], value[b], time[b]

constexpr int kDecodeColumns = 6;    // x, y, yaw, speed, accel, curvature
constexpr float kMinSpeed = 0.5f;    // m/s: below it the vehicle counts as standing
constexpr int kDecodeMaxThreads = 256;  // CUDA block size cap (one block; outputs loop beyond it)

struct DecodeParams {
  const float* trajectory;  // [K, T, F] C-contiguous (a batch item already selected)
  const float* score;       // [K], or nullptr: mode 0
  const float* times;       // [M], or nullptr: the native grid t_i = (i + 1) * dt
  float* out;               // [M, 6] C-contiguous
  int K, T, F, M;
  float dt, max_curvature, max_accel, max_speed;
};

// What one call reports, besides the points. Plain 4-byte words so the host reads it as int32[20]
// (Python views it with a structured dtype; see kernels/decode.py).
struct DecodeResult {
  int32_t mode;          // chosen mode
  float score;           // its score (NaN when no score was given)
  uint32_t verdict;      // bit flags, 0 = plausible
  int32_t bad_score;     // first mode whose score is not finite, -1 if none
  int32_t bad_waypoint;  // first waypoint of the chosen mode holding a non-finite value, -1 if none
  int32_t first[kDecodeFlags];  // per verdict bit: first offending output index, -1 if none
  float value[kDecodeFlags];    // the offending value there (for TIMES: the requested time)
  float time[kDecodeFlags];     // the requested time there (s)
};
constexpr int kDecodeResultWords = 20;
static_assert(sizeof(DecodeResult) == 4 * kDecodeResultWords, "DecodeResult must be 20 plain words");

// ---------------------------------------------------------------------------------------------
// Scalar helpers.

// Finite test on the bits, so it holds under any fast-math flag (x - x == 0 would not).
VLA_HD bool finitef(float v) {
  union {
    float f;
    uint32_t u;
  } b{v};
  return (b.u & 0x7f800000u) != 0x7f800000u;
}

VLA_HD float quiet_nanf() {
  union {
    uint32_t u;
    float f;
  } b{0x7fc00000u};
  return b.f;
}

VLA_HD float absf(float v) { return v < 0.0f ? -v : v; }

// Angle difference folded into [-pi, pi).
VLA_HD float wrap_pi(float a) {
  const float two_pi = 6.28318530717958647692f;
  const float pi = 3.14159265358979323846f;
  if (a >= -pi && a < pi) return a;  // the common case, and exact
  float r = fmodf(a + pi, two_pi);
  if (r < 0.0f) r += two_pi;
  return r - pi;
}

// Requested times may overshoot the horizon by float32 rounding (np.arange(1, 65) * 0.1 ends at
// 6.4000001); this slack accepts that and nothing a caller could mean.
VLA_HD float time_slack(int T, float dt) { return 1e-4f * dt + 1e-6f * static_cast<float>(T) * dt; }

VLA_HD bool time_in_range(float t, int T, float dt) {
  const float slack = time_slack(T, dt);
  return t >= -slack && t <= static_cast<float>(T) * dt + slack;  // false for NaN
}

VLA_HD float point_time(const DecodeParams& p, int i) {
  return p.times ? p.times[i] : static_cast<float>(i + 1) * p.dt;
}

// ---------------------------------------------------------------------------------------------
// Mode choice: argmax of the finite scores, ties to the lowest index. A non-finite score makes the
// output implausible (reported through bad_score), but the best finite mode is still decoded so a
// log shows what the model proposed. No score: mode 0.

struct ModeChoice {
  int mode;
  float score;
  int bad_score;
};

VLA_HD ModeChoice choose_mode(const float* score, int K) {
  ModeChoice c{0, quiet_nanf(), -1};
  if (!score) return c;
  int best = -1;
  float best_score = 0.0f;
  for (int k = 0; k < K; ++k) {
    const float s = score[k];
    if (!finitef(s)) {
      if (c.bad_score < 0) c.bad_score = k;
      continue;
    }
    if (best < 0 || s > best_score) {
      best = k;
      best_score = s;
    }
  }
  c.mode = best < 0 ? 0 : best;
  c.score = score[c.mode];
  return c;
}

// ---------------------------------------------------------------------------------------------
// Per-sample kinematics of one mode.

struct ModeView {
  const float* p;  // [T, F] of the chosen mode
  int T, F;
  float dt, inv_dt;
};

VLA_HD ModeView mode_view(const DecodeParams& p, int mode) {
  return ModeView{p.trajectory + static_cast<int64_t>(mode) * p.T * p.F, p.T, p.F, p.dt, 1.0f / p.dt};
}

// Sample j (0 = origin) of channel c.
VLA_HD float sample(const ModeView& m, int j, int c) { return j == 0 ? 0.0f : m.p[(j - 1) * m.F + c]; }

struct Derivs {
  float vx, vy, ax, ay;
};

// First-derivative stencil at sample j over samples i0, i0+1, i0+2 (weights in units of 1/(2 dt)):
// central inside; second-order one-sided at the ends (np.gradient's edge_order=2), exact for
// constant acceleration, so a vehicle starting from rest reads speed 0 at t = 0, not a*dt/2.
struct Stencil {
  int i0;
  float w0, w1, w2;
};

VLA_HD Stencil first_stencil(int j, int T) {
  if (j == 0) return Stencil{0, -3.0f, 4.0f, -1.0f};
  if (j == T) return Stencil{T - 2, 1.0f, -4.0f, 3.0f};
  return Stencil{j - 1, -1.0f, 0.0f, 1.0f};
}

VLA_HD float first_diff(const ModeView& m, int j, int ch) {
  const Stencil s = first_stencil(j, m.T);
  float d = s.w0 * sample(m, s.i0, ch) + s.w2 * sample(m, s.i0 + 2, ch);
  if (s.w1 != 0.0f) d += s.w1 * sample(m, s.i0 + 1, ch);
  return d * (0.5f * m.inv_dt);
}

// Second derivative: the 3-point stencil centred inside; the ends reuse their neighbour's stencil.
VLA_HD float second_diff(const ModeView& m, int j, int ch) {
  const int c = clampi(j, 1, m.T - 1);  // T >= 2, so samples c-1..c+1 exist
  return (sample(m, c + 1, ch) - 2.0f * sample(m, c, ch) + sample(m, c - 1, ch)) * (m.inv_dt * m.inv_dt);
}

VLA_HD Derivs derivs(const ModeView& m, int j) {
  return Derivs{first_diff(m, j, 0), first_diff(m, j, 1), second_diff(m, j, 0), second_diff(m, j, 1)};
}

VLA_HD float speed_at(const ModeView& m, int j) {
  const float vx = first_diff(m, j, 0), vy = first_diff(m, j, 1);
  return sqrtf(vx * vx + vy * vy);
}

// Longitudinal acceleration: the rate of change of speed, by the same stencil on the speed samples.
// Why not (v . a) / |v|: that needs a special case at a standstill (no direction of travel), and its
// 3-point second difference amplifies waypoint noise four times more than this wider stencil
// inside the horizon. Both read up to a_lat * yaw_rate * dt on a steady turn at the two end samples
// (one-sided stencils), e.g. 0.25 m/s² for 10 m/s on a 20 m radius at dt = 0.1 s.
VLA_HD float accel_at(const ModeView& m, int j) {
  const Stencil s = first_stencil(j, m.T);
  float d = s.w0 * speed_at(m, s.i0) + s.w2 * speed_at(m, s.i0 + 2);
  if (s.w1 != 0.0f) d += s.w1 * speed_at(m, s.i0 + 1);
  return d * (0.5f * m.inv_dt);
}

VLA_HD float speed_of(const Derivs& d) { return sqrtf(d.vx * d.vx + d.vy * d.vy); }

// Heading of sample j: the model's yaw, or (F == 2) the direction of travel at the latest sample
// <= j where the vehicle moves; a standing vehicle keeps its heading, and the origin has yaw 0.
VLA_HD float sample_yaw(const ModeView& m, int j) {
  if (m.F >= 3) return sample(m, j, 2);
  for (int i = j; i > 0; --i) {
    const float vx = first_diff(m, i, 0), vy = first_diff(m, i, 1);
    if (sqrtf(vx * vx + vy * vy) >= kMinSpeed) return atan2f(vy, vx);
  }
  return 0.0f;
}

struct Sample {
  float x, y, yaw, speed, accel, curvature;
};

VLA_HD Sample sample_state(const ModeView& m, int j) {
  const Derivs d = derivs(m, j);
  Sample s;
  s.x = sample(m, j, 0);
  s.y = sample(m, j, 1);
  s.yaw = sample_yaw(m, j);
  s.speed = speed_of(d);
  s.accel = accel_at(m, j);
  // Standing (or NaN speed): no direction of travel, so no curvature.
  s.curvature = s.speed >= kMinSpeed ? (d.vx * d.ay - d.vy * d.ax) / (s.speed * s.speed * s.speed) : 0.0f;
  return s;
}

// ---------------------------------------------------------------------------------------------
// One output point: resample at its time, write the row, and return the verdict bits it raises.

VLA_HD float lerp(float a, float b, float w) { return a + w * (b - a); }

VLA_HD uint32_t decode_point(const DecodeParams& p, const ModeView& m, int i) {
  uint32_t flags = 0;
  float u;  // position in sample units
  if (p.times) {
    const float t = p.times[i];
    if (!time_in_range(t, p.T, p.dt)) flags |= kDecodeTimes;
    u = t * m.inv_dt;
  } else {
    u = static_cast<float>(i + 1);
  }
  const float horizon = static_cast<float>(p.T);
  if (!(u >= 0.0f)) u = 0.0f;  // also NaN
  if (u > horizon) u = horizon;
  const int j0 = clampi(static_cast<int>(floorf(u)), 0, p.T - 1);
  const float w = clampf(u - static_cast<float>(j0), 0.0f, 1.0f);

  const Sample a = sample_state(m, j0);
  const Sample b = sample_state(m, j0 + 1);
  float* row = p.out + static_cast<int64_t>(i) * kDecodeColumns;
  row[0] = lerp(a.x, b.x, w);
  row[1] = lerp(a.y, b.y, w);
  row[2] = a.yaw + w * wrap_pi(b.yaw - a.yaw);
  row[3] = lerp(a.speed, b.speed, w);
  row[4] = lerp(a.accel, b.accel, w);
  row[5] = lerp(a.curvature, b.curvature, w);

  bool finite = true;
  for (int c = 0; c < kDecodeColumns; ++c) finite = finite && finitef(row[c]);
  if (!finite) flags |= kDecodeNonFinite;
  if (row[3] >= kMinSpeed && absf(row[5]) > p.max_curvature) flags |= kDecodeCurvature;
  if (absf(row[4]) > p.max_accel) flags |= kDecodeAccel;
  if (row[3] > p.max_speed) flags |= kDecodeSpeed;
  return flags;
}

// The value a flag reports at output i (read back from the row already written).
VLA_HD float flag_value(const DecodeParams& p, int bit, int i) {
  const float* row = p.out + static_cast<int64_t>(i) * kDecodeColumns;
  switch (bit) {
    case 1: return row[5];  // curvature
    case 2: return row[4];  // accel
    case 3: return row[3];  // speed
    case 4: return point_time(p, i);
    default: return quiet_nanf();
  }
}

// First non-finite value among elements [e0, e1) of the chosen mode, as a waypoint index; -1 if none.
VLA_HD int first_nonfinite_waypoint(const ModeView& m, int e0, int e1, int stride) {
  for (int e = e0; e < e1; e += stride) {
    if (!finitef(m.p[e])) return e / m.F;
  }
  return -1;
}

// Fill the result's per-flag value/time from first[], once all rows are written.
VLA_HD void finish_result(const DecodeParams& p, DecodeResult* r) {
  for (int b = 0; b < kDecodeFlags; ++b) {
    const int i = r->first[b];
    r->value[b] = i >= 0 ? flag_value(p, b, i) : quiet_nanf();
    r->time[b] = i >= 0 ? point_time(p, i) : quiet_nanf();
  }
}

// ---------------------------------------------------------------------------------------------
// integrate_controls (see the header comment for the scheme).

constexpr int kControlChannels = 2;  // accel, curvature
constexpr int kPoseColumns = 4;      // x, y, yaw, speed

struct IntegrateParams {
  const float* controls;  // [K, T, 2] C-contiguous (a batch item already selected)
  float* out;             // [K, T, 4] C-contiguous
  int K, T;
  float v0, dt;
};

struct Pose {
  float x, y, yaw, v;
};

// One step of dt under acceleration a and curvature c.
VLA_HD Pose integrate_step(const Pose& s, float a, float c, float dt) {
  const float v_raw = s.v + a * dt;
  // Clamp finite negatives only: NaN compares false, and -inf stays -inf (see the header comment).
  const float v_next = (v_raw < 0.0f && finitef(v_raw)) ? 0.0f : v_raw;
  const float v_mid = 0.5f * (s.v + v_next);
  const float dyaw = c * v_mid * dt;
  const float yaw_mid = s.yaw + 0.5f * dyaw;
  const float step = v_mid * dt;
  return Pose{s.x + step * cosf(yaw_mid), s.y + step * sinf(yaw_mid), s.yaw + dyaw, v_next};
}

// Mode k, sequentially over its T steps (each step needs the one before).
VLA_HD void integrate_mode(const IntegrateParams& p, int k) {
  const float* ctl = p.controls + static_cast<int64_t>(k) * p.T * kControlChannels;
  float* row = p.out + static_cast<int64_t>(k) * p.T * kPoseColumns;
  Pose s{0.0f, 0.0f, 0.0f, p.v0};
  for (int i = 0; i < p.T; ++i, ctl += kControlChannels, row += kPoseColumns) {
    s = integrate_step(s, ctl[0], ctl[1], p.dt);
    row[0] = s.x;
    row[1] = s.y;
    row[2] = s.yaw;
    row[3] = s.v;
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points (no CUDA types: the stream is the raw cudaStream_t as an integer).

// CPU twin; `threads` <= 0 means "decide" (small jobs stay on the caller's thread).
void decode_cpu(const DecodeParams& p, DecodeResult* result, int threads = 0);

// Enqueues the kernel on `stream`; returns the cudaError_t of the launch (0 = queued). `result`
// is a device pointer; it is complete once the stream reaches this point. No synchronisation.
int decode_cuda_launch(const DecodeParams& p, DecodeResult* result, uintptr_t stream);
const char* decode_cuda_error_text(int code);

// integrate_controls: the CPU twin (`threads` as decode_cpu), and the CUDA launch (one thread per
// mode; returns the cudaError_t of the launch, 0 = queued; `out` is complete once the stream
// reaches this point; no synchronisation). Error text: decode_cuda_error_text.
void integrate_cpu(const IntegrateParams& p, int threads = 0);
int integrate_cuda_launch(const IntegrateParams& p, uintptr_t stream);

}  // namespace vla
