// Vector traits for the SIMD kernel templates. Include only from files compiled
// with the matching ISA flags (see CMakeLists.txt).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace sparsr {

#if defined(__AVX512F__)
struct VecAvx512 {
  using T = __m512;
  static constexpr int kWidth = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float v) { return _mm512_set1_ps(v); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  // Stores the first n lanes (1 <= n <= kWidth); loads stay unmasked because
  // feature buffers carry slack.
  static void store_first(float* p, T v, int n) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v);
  }
  static T load_first(const float* p, int n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
  }
  // Lanes [first, end), with first < end, clipped to the vector.
  static __mmask16 range_mask(int first, int end) {
    const uint32_t lo = first <= 0 ? 0u : (1u << first) - 1u;
    const uint32_t hi = end >= 16 ? 0xffffu : (1u << end) - 1u;
    return static_cast<__mmask16>(hi & ~lo);
  }
  static void store_range(float* p, T v, int first, int end) {
    _mm512_mask_storeu_ps(p, range_mask(first, end), v);
  }
  static T load_range(const float* p, int first, int end) {
    return _mm512_maskz_loadu_ps(range_mask(first, end), p);
  }
};
#endif

#if defined(__AVX2__) && defined(__FMA__)
struct VecAvx2 {
  using T = __m256;
  static constexpr int kWidth = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float v) { return _mm256_set1_ps(v); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static __m256i first_mask(int n) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes);
  }
  static void store_first(float* p, T v, int n) { _mm256_maskstore_ps(p, first_mask(n), v); }
  static T load_first(const float* p, int n) { return _mm256_maskload_ps(p, first_mask(n)); }
  // Lanes [first, end), with first < end, clipped to the vector.
  static __m256i range_mask(int first, int end) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(first), lanes),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32(end), lanes));
  }
  static void store_range(float* p, T v, int first, int end) {
    _mm256_maskstore_ps(p, range_mask(first, end), v);
  }
  static T load_range(const float* p, int first, int end) {
    return _mm256_maskload_ps(p, range_mask(first, end));
  }
};
#endif

}  // namespace sparsr
