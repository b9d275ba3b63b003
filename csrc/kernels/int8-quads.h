// Activations as int8 quads: the f32 planes of four channels quantized to u8
// (pack_dense_int8's rule) into one 32-bit word per pixel, channel 4q + j in
// byte j: the u8 operand layout of vpdpbusd. Include only from files compiled
// with AVX-512 (CMakeLists.txt).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "simd.h"

namespace sparsr {
// Internal linkage: the files including this are built for different levels.
namespace {

// x -> clamp(round(x * inv) + zero, 0, 255): the product clamped to
// [-zero, 255 - zero] in f32 first (vmaxps/vminps: NaN becomes -zero), then
// rounded to nearest even. The scalar twin computes the same.
struct Quantizer {
  __m512 inv, lo, hi;
  __m512i zero;
  explicit Quantizer(float in_inv, int in_zero)
      : inv(_mm512_set1_ps(in_inv)),
        lo(_mm512_set1_ps(static_cast<float>(-in_zero))),
        hi(_mm512_set1_ps(static_cast<float>(255 - in_zero))),
        zero(_mm512_set1_epi32(in_zero)) {}
  __m512i operator()(__m512 x) const {
    const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x, inv), lo), hi);
    return _mm512_add_epi32(_mm512_cvtps_epi32(v), zero);
  }
};

// cols quads from floats src[j][0, cols) (src[j] null: byte j is 0) to dst.
inline void convert_quads(uint32_t* dst, const float* const* src, int cols, const Quantizer& q) {
  for (int j = 0; j < cols; j += 16) {
    const __mmask16 lanes = VecAvx512::range(0, cols - j);
    __m512i word = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      if (!src[c]) continue;
      const __m512i byte = q(_mm512_maskz_loadu_ps(lanes, src[c] + j));
      word = _mm512_or_si512(word, _mm512_slli_epi32(byte, 8 * c));
    }
    _mm512_storeu_si512(dst + j, word);
  }
}

}  // namespace
}  // namespace sparsr
