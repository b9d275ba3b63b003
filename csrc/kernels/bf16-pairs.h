// Activations as bf16 pairs: the f32 planes of two channels converted (round
// to nearest even) into one 32-bit word per pixel, channel 2p in the low half:
// the operand layout of vdpbf16ps (and of an AMX B tile, one row per pair).
// Include only from files compiled with AVX512_BF16 (CMakeLists.txt).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "simd.h"

namespace sparsr {
// Internal linkage: the files including this are built for different levels.
namespace {

// Words of the two halves of cvtne2ps(b, a) (a in words 0..15, b in 16..31)
// interleaved: pixel j becomes the pair (a[j], b[j]).
inline __m512i bf16_interleave_index() {
  return _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                          22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
}

// cols pairs from floats a[0, cols) and b[0, cols) (b null: zeros) to dst.
inline void convert_pairs(uint32_t* dst, const float* a, const float* b, int cols,
                          __m512i index) {
  for (int j = 0; j < cols; j += 16) {
    const __mmask16 lanes = VecAvx512::range(0, cols - j);
    const __m512 lo = _mm512_maskz_loadu_ps(lanes, a + j);
    const __m512 hi = b ? _mm512_maskz_loadu_ps(lanes, b + j) : _mm512_setzero_ps();
    const __m512i halves = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
    _mm512_storeu_si512(dst + j, _mm512_permutexvar_epi16(index, halves));
  }
}

}  // namespace
}  // namespace sparsr
