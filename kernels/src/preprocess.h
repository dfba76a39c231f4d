// One-pass camera preprocessing: raw frame -> engine input slot, read once, written once.
//
// For every output pixel: map its centre to the source (an affine ROI/resize or a 3x3 homography),
// fetch the source pixels it needs (nearest, or the 2x2 for bilinear) in their raw format,
// convert each to RGB (BT.601/BT.709, limited or full range, clamped to [0, 255] like OpenCV's
// cvtColor), blend, normalise ((v - mean) / std as v * scale + bias), and store as uint8, float32
// or float16 at any strides (planar CHW or interleaved HWC, a slot of a batched tensor).
//
// This header is the only place the arithmetic exists: preprocess_cpu.cpp (the CPU twin) and
// preprocess_cuda.cu (the CUDA kernel) both instantiate preprocess_pixel<> from it.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "hd.h"

namespace vla {

enum PixelFormat : int { FMT_YUYV = 0, FMT_UYVY, FMT_NV12, FMT_I420, FMT_RGB, FMT_BGR, FMT_GRAY, FMT_COUNT };
enum OutType : int { OUT_U8 = 0, OUT_F32, OUT_F16 };

struct PreprocessParams {
  int fmt = FMT_YUYV;
  int src_w = 0, src_h = 0;
  const uint8_t* plane0 = nullptr;  // Y plane, or the packed/interleaved image
  int64_t pitch0 = 0;               // bytes between rows
  const uint8_t* plane1 = nullptr;  // NV12: interleaved UV; I420: U
  int64_t pitch1 = 0;
  const uint8_t* plane2 = nullptr;  // I420: V
  int64_t pitch2 = 0;
  float m[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};  // output pixel (x, y, 1) -> source pixel, row-major
  int bilinear = 1;
  float border[3] = {0, 0, 0};  // RGB for samples outside the frame (only a homography gets there)
  // YUV -> RGB: Y' = ys * (Y - yo); R = Y' + rv V'; G = Y' + gu U' + gv V'; B = Y' + bu U' (U' = U - 128)
  float yo = 16.f, ys = 255.f / 219.f, rv = 0, gu = 0, gv = 0, bu = 0;
  int out_w = 0, out_h = 0;
  int out_type = OUT_F32;
  int swap_rb = 0;                        // write channels in BGR order
  float scale[3] = {1, 1, 1}, bias[3] = {0, 0, 0};  // per output channel: v * scale + bias
  void* out = nullptr;
  int64_t os_c = 0, os_y = 0, os_x = 0;  // output strides in elements
};

VLA_HD void yuv_to_rgb(const PreprocessParams& p, float y, float u, float v, float* rgb) {
  const float yy = p.ys * (y - p.yo);
  u -= 128.f;
  v -= 128.f;
  rgb[0] = clampf(yy + p.rv * v, 0.f, 255.f);
  rgb[1] = clampf(yy + p.gu * u + p.gv * v, 0.f, 255.f);
  rgb[2] = clampf(yy + p.bu * u, 0.f, 255.f);
}

// The 4 bytes of a YUYV/UYVY pixel pair, byte k in bits 8k..8k+7. On the CPU one 32-bit load
// (x86 gathers 32-bit words, not bytes, so this is what lets the row loop vectorise); on the GPU
// byte loads, since a padded row pitch can leave the word unaligned. A pair never crosses its row.
VLA_HD uint32_t load_pair(const uint8_t* pair) {
#if defined(__CUDA_ARCH__)
  return pair[0] | (pair[1] << 8) | (pair[2] << 16) | (static_cast<uint32_t>(pair[3]) << 24);
#else
  typedef uint32_t __attribute__((may_alias, aligned(1))) unaligned_u32;
  uint32_t word = *reinterpret_cast<const unaligned_u32*>(pair);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  word = __builtin_bswap32(word);
#endif
  return word;
#endif
}

// Byte `off` of a plane, via a 32-bit load that stays inside its row of `row_bytes` (>= 4) bytes:
// x86 gathers words, not bytes. `off` is a 32-bit offset from the plane (frames are far below
// 2 GiB), the form gathers take. On the GPU: a plain byte load.
VLA_HD uint32_t plane_byte(const uint8_t* plane, int row_start, int col, int row_bytes) {
#if defined(__CUDA_ARCH__)
  (void)row_bytes;
  return plane[row_start + col];
#else
  const int start = col < row_bytes - 4 ? col : row_bytes - 4;
  return (load_pair(plane + (row_start + start)) >> (8 * (col - start))) & 0xffu;
#endif
}

// The RGB value of source pixel (x, y), which must be inside the frame. Chroma is taken from the
// pixel's own 2x1 (4:2:2) or 2x2 (4:2:0) block, as cvtColor and V4L2 consumers do.
template <int FMT>
VLA_HD void fetch_rgb(const PreprocessParams& p, int x, int y, float* rgb) {
  const int row0 = y * static_cast<int>(p.pitch0);
  if (FMT == FMT_YUYV || FMT == FMT_UYVY) {
    // A 32-bit offset from the plane (frames are far below 2 GiB): the form x86 gathers take.
    const uint32_t w = load_pair(p.plane0 + (row0 + 4 * (x >> 1)));
    const int yi = FMT == FMT_YUYV ? 2 * (x & 1) : 2 * (x & 1) + 1;
    const int ui = FMT == FMT_YUYV ? 1 : 0;
    yuv_to_rgb(p, static_cast<float>((w >> (8 * yi)) & 0xffu), static_cast<float>((w >> (8 * ui)) & 0xffu),
               static_cast<float>((w >> (8 * (ui + 2))) & 0xffu), rgb);
  } else if (FMT == FMT_NV12) {
    const int w = p.src_w, c0 = (y >> 1) * static_cast<int>(p.pitch1);
    yuv_to_rgb(p, static_cast<float>(plane_byte(p.plane0, row0, x, w)),
               static_cast<float>(plane_byte(p.plane1, c0, 2 * (x >> 1), w)),
               static_cast<float>(plane_byte(p.plane1, c0, 2 * (x >> 1) + 1, w)), rgb);
  } else if (FMT == FMT_I420) {
    const int w = p.src_w, half = p.src_w >> 1;
    const int c1 = (y >> 1) * static_cast<int>(p.pitch1), c2 = (y >> 1) * static_cast<int>(p.pitch2);
    // Chroma rows are half a row wide; below 4 bytes a word would not fit: read the byte itself.
    const float u = half >= 4 ? static_cast<float>(plane_byte(p.plane1, c1, x >> 1, half)) : p.plane1[c1 + (x >> 1)];
    const float v = half >= 4 ? static_cast<float>(plane_byte(p.plane2, c2, x >> 1, half)) : p.plane2[c2 + (x >> 1)];
    yuv_to_rgb(p, static_cast<float>(plane_byte(p.plane0, row0, x, w)), u, v, rgb);
  } else if (FMT == FMT_RGB || FMT == FMT_BGR) {
#if defined(__CUDA_ARCH__)
    const uint8_t* px = p.plane0 + row0 + 3 * x;  // byte loads on the GPU
    const float c0 = px[0], c1 = px[1], c2 = px[2];
#else
    // One word that holds the pixel's 3 bytes and stays inside the row (a row has >= 3 bytes;
    // below 4 the word would not fit, so such tiny frames read bytes).
    const int w3 = 3 * p.src_w;
    float c0, c1, c2;
    if (w3 >= 4) {
      const int start = 3 * x < w3 - 4 ? 3 * x : w3 - 4;
      const uint32_t word = load_pair(p.plane0 + (row0 + start));
      const int sh = 8 * (3 * x - start);
      c0 = static_cast<float>((word >> sh) & 0xffu);
      c1 = static_cast<float>((word >> (sh + 8)) & 0xffu);
      c2 = static_cast<float>((word >> (sh + 16)) & 0xffu);
    } else {
      const uint8_t* px = p.plane0 + row0 + 3 * x;
      c0 = px[0], c1 = px[1], c2 = px[2];
    }
#endif
    rgb[0] = FMT == FMT_RGB ? c0 : c2;
    rgb[1] = c1;
    rgb[2] = FMT == FMT_RGB ? c2 : c0;
  } else {  // GRAY: full-range luma, as a mono sensor gives it
    rgb[0] = rgb[1] = rgb[2] = p.src_w >= 4 ? static_cast<float>(plane_byte(p.plane0, row0, x, p.src_w))
                                            : static_cast<float>(p.plane0[row0 + x]);
  }
}

// Samples at (sx, sy), which the caller has clamped into [-0.5, size - 0.5]: edge pixels repeat
// (OpenCV's resize does the same). Branch-free, so the CPU loop over a row vectorises.
template <int FMT, bool BILINEAR>
VLA_HD void sample_rgb(const PreprocessParams& p, float sx, float sy, float* rgb) {
  if (!BILINEAR) {
    fetch_rgb<FMT>(p, clampi(static_cast<int>(floorf(sx + 0.5f)), 0, p.src_w - 1),
                   clampi(static_cast<int>(floorf(sy + 0.5f)), 0, p.src_h - 1), rgb);
    return;
  }
  const float fx = floorf(sx), fy = floorf(sy);
  const float ax = sx - fx, ay = sy - fy;
  const int x0 = clampi(static_cast<int>(fx), 0, p.src_w - 1), x1 = clampi(static_cast<int>(fx) + 1, 0, p.src_w - 1);
  const int y0 = clampi(static_cast<int>(fy), 0, p.src_h - 1), y1 = clampi(static_cast<int>(fy) + 1, 0, p.src_h - 1);
  float a[3], b[3], c[3], d[3];
  fetch_rgb<FMT>(p, x0, y0, a);
  fetch_rgb<FMT>(p, x1, y0, b);
  fetch_rgb<FMT>(p, x0, y1, c);
  fetch_rgb<FMT>(p, x1, y1, d);
  for (int k = 0; k < 3; ++k) {
    const float top = a[k] + ax * (b[k] - a[k]);
    const float bot = c[k] + ax * (d[k] - c[k]);
    rgb[k] = top + ay * (bot - top);
  }
}

template <int OUT>
VLA_HD void store_value(const PreprocessParams& p, int64_t i, float v) {
  if (OUT == OUT_U8) {
    static_cast<uint8_t*>(p.out)[i] = static_cast<uint8_t>(clampf(v, 0.f, 255.f) + 0.5f);
  } else if (OUT == OUT_F32) {
    static_cast<float*>(p.out)[i] = v;
  } else {
    static_cast<uint16_t*>(p.out)[i] = float_to_half_bits(v);
  }
}

template <int OUT>
VLA_HD void store_pixel(const PreprocessParams& p, int ox, int oy, const float* rgb) {
  const int64_t base = oy * p.os_y + ox * p.os_x;
  const float first = p.swap_rb ? rgb[2] : rgb[0], last = p.swap_rb ? rgb[0] : rgb[2];
  store_value<OUT>(p, base, first * p.scale[0] + p.bias[0]);
  store_value<OUT>(p, base + p.os_c, rgb[1] * p.scale[1] + p.bias[1]);
  store_value<OUT>(p, base + 2 * p.os_c, last * p.scale[2] + p.bias[2]);
}

// The RGB (0..255, before normalisation) of output pixel (ox, oy).
template <int FMT, bool BILINEAR>
VLA_HD void pixel_rgb(const PreprocessParams& p, int ox, int oy, float* rgb) {
  const float x = static_cast<float>(ox), y = static_cast<float>(oy);
  // For an affine map w is exactly 1, so the divide changes nothing; doing it always keeps the
  // code branch-free. w <= 0 is behind the camera: border.
  const float w = p.m[6] * x + p.m[7] * y + p.m[8];
  const bool front = w > 1e-12f;
  const float inv = 1.f / (front ? w : 1.f);
  const float sx = (p.m[0] * x + p.m[1] * y + p.m[2]) * inv;
  const float sy = (p.m[3] * x + p.m[4] * y + p.m[5]) * inv;
  // Beyond half a pixel outside the frame there is nothing to sample (a homography looking past
  // the image): sample the clamped position, then replace it with the border colour.
  const float lim_x = p.src_w - 0.5f, lim_y = p.src_h - 0.5f;
  const bool inside = front & (sx >= -0.5f) & (sy >= -0.5f) & (sx <= lim_x) & (sy <= lim_y);  // no short circuit: no branch
  sample_rgb<FMT, BILINEAR>(p, clampf(sx, -0.5f, lim_x), clampf(sy, -0.5f, lim_y), rgb);
  rgb[0] = inside ? rgb[0] : p.border[0];
  rgb[1] = inside ? rgb[1] : p.border[1];
  rgb[2] = inside ? rgb[2] : p.border[2];
}

// Everything one output pixel needs; the CUDA kernel calls exactly this, and the CPU twin the same
// two steps over a chunk of a row (pixel_rgb for each pixel, then store_value per channel).
template <int FMT, bool BILINEAR, int OUT>
VLA_HD void preprocess_pixel(const PreprocessParams& p, int ox, int oy) {
  float rgb[3];
  pixel_rgb<FMT, BILINEAR>(p, ox, oy, rgb);
  store_pixel<OUT>(p, ox, oy, rgb);
}

// Calls Launcher::template run<FMT, BILINEAR, OUT>(p, args...) for the run-time choices, so each
// combination is its own instantiation with no per-pixel switch.
template <class Launcher, class... Args>
auto dispatch_preprocess(const PreprocessParams& p, Args&&... args) {
#define VLA_OUT(F, B)                                                                  \
  switch (p.out_type) {                                                                \
    case OUT_U8: return Launcher::template run<F, B, OUT_U8>(p, args...);              \
    case OUT_F16: return Launcher::template run<F, B, OUT_F16>(p, args...);            \
    default: return Launcher::template run<F, B, OUT_F32>(p, args...);                 \
  }
#define VLA_FMT(F)    \
  if (p.bilinear) {   \
    VLA_OUT(F, true)  \
  } else {            \
    VLA_OUT(F, false) \
  }
  switch (p.fmt) {
    case FMT_YUYV: VLA_FMT(FMT_YUYV)
    case FMT_UYVY: VLA_FMT(FMT_UYVY)
    case FMT_NV12: VLA_FMT(FMT_NV12)
    case FMT_I420: VLA_FMT(FMT_I420)
    case FMT_RGB: VLA_FMT(FMT_RGB)
    case FMT_BGR: VLA_FMT(FMT_BGR)
    default: VLA_FMT(FMT_GRAY)
  }
#undef VLA_FMT
#undef VLA_OUT
}

class RowTeam;  // parallel.h

// Host entry points (defined in preprocess_cpu.cpp / preprocess_cuda.cu).
void preprocess_cpu(const PreprocessParams& p, int threads);
// Several jobs, started: their rows are shared by one team whose helper threads begin now; the
// caller joins in with finish() (parallel.h).
std::unique_ptr<RowTeam> preprocess_cpu_start(std::vector<PreprocessParams> ps, int threads);
int preprocess_cuda(const PreprocessParams& p, uintptr_t stream);  // returns a cudaError_t

}  // namespace vla
