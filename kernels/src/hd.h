// Shared by the CPU and CUDA builds of every kernel: the per-element arithmetic is written once,
// as VLA_HD inline functions, and compiled by g++ (CPU twin) and nvcc (CUDA kernel).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define VLA_HD __host__ __device__ __forceinline__
#else
#define VLA_HD inline
#endif

namespace vla {

// Written as min-then-max so each half is one instruction on x86 (MINPS/MAXPS return their second
// operand for NaN, exactly as these comparisons do; for lo <= hi the result equals the textbook
// "v < lo ? lo : v > hi ? hi : v" bit for bit, NaN and signed zeros included).
VLA_HD float clampf(float v, float lo, float hi) {
  const float t = hi < v ? hi : v;
  return lo > t ? lo : t;
}
VLA_HD int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// IEEE float -> half bits, round to nearest even (same as NumPy's astype(float16)). The CUDA
// kernel and CPUs without F16C use this function; CPUs with F16C use the hardware conversion,
// which follows the same IEEE rule (so results are bit-identical) and vectorises.
VLA_HD uint16_t float_to_half_bits_soft(float f) {
  union {
    float f;
    uint32_t u;
  } v{f};
  const uint32_t x = v.u;
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) {  // inf or NaN
    return static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
  }
  if (absx >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (absx < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 rounds to 0
    const uint32_t e = absx >> 23;
    const uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = ((absx - 0x38000000u) >> 13);  // rebias exponent 127 -> 15
  const uint32_t rem = absx & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

VLA_HD uint16_t float_to_half_bits(float f) {
#if !defined(__CUDA_ARCH__) && defined(__F16C__) && defined(__FLT16_MAX__)
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t bits;
  __builtin_memcpy(&bits, &h, 2);
  return bits;
#else
  return float_to_half_bits_soft(f);
#endif
}

}  // namespace vla
