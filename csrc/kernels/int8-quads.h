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

// x -> u8 round(min(x * inv + zero, 255)) (one fma; vminps: NaN becomes
// 255), rounded to nearest even, negatives saturated to 0 by the packs. The
// scalar twin computes the same.
struct Quantizer {
  __m512 inv, zero, hi;
  explicit Quantizer(float in_inv, int in_zero)
      : inv(_mm512_set1_ps(in_inv)),
        zero(_mm512_set1_ps(static_cast<float>(in_zero))),
        hi(_mm512_set1_ps(255.0f)) {}
  __m512i operator()(const float* src, __mmask16 lanes) const {
    if (!src) return _mm512_setzero_si512();
    const __m512 x = _mm512_maskz_loadu_ps(lanes, src);
    return _mm512_cvtps_epi32(_mm512_min_ps(_mm512_fmadd_ps(x, inv, zero), hi));
  }
};

// cols quads from floats src[j][0, cols) (src[j] null: byte j is 0) to dst:
// int32 -> int16 -> u8 with saturation (vpackssdw, vpackuswb: 128-bit lane l
// then holds the bytes of pixels 4l..4l + 3 channel by channel), and a byte
// shuffle within each lane into one word per pixel.
// ahead (nullable, its entries nullable): the four rows converted next,
// prefetched line by line meanwhile: the rows come from features far larger
// than the caches, and each starts four new streams.
inline void convert_quads(uint32_t* dst, const float* const* src, int cols, const Quantizer& q,
                          const float* const* ahead = nullptr) {
  const __m512i order = _mm512_broadcast_i32x4(
      _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  for (int j = 0; j < cols; j += 16) {
    if (ahead)
      for (int c = 0; c < 4; ++c)
        if (ahead[c]) _mm_prefetch(reinterpret_cast<const char*>(ahead[c] + j), _MM_HINT_T0);
    const __mmask16 lanes = VecAvx512::range(0, cols - j);
    auto at = [&](int c) { return src[c] ? src[c] + j : nullptr; };
    const __m512i ab = _mm512_packs_epi32(q(at(0), lanes), q(at(1), lanes));
    const __m512i cd = _mm512_packs_epi32(q(at(2), lanes), q(at(3), lanes));
    _mm512_storeu_si512(dst + j, _mm512_shuffle_epi8(_mm512_packus_epi16(ab, cd), order));
  }
}

}  // namespace
}  // namespace sparsr
