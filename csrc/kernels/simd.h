// Vector traits for the SIMD kernel templates: arithmetic, lane masks with
// masked loads and stores, and one-column shifts across a pair of vectors.
// Include only from files compiled with the matching ISA flags (see
// CMakeLists.txt).
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace sparsr {

// Brings the floats [p, p + n) into L2. A hint: it never faults.
inline void prefetch_l2(const float* p, int64_t n) {
  for (int64_t f = 0; f < n; f += 16)
    _mm_prefetch(reinterpret_cast<const char*>(p + f), _MM_HINT_T1);
}

// Stores a whole vector, past the caches when stream (p then aligned to the
// vector width).
template <class V>
inline void store_whole(float* p, typename V::T v, bool stream) {
  if (stream)
    V::stream(p, v);
  else
    V::store(p, v);
}

// r >= 0 ? r : slope * r per lane (leaky ReLU, PReLU), as max(r, 0) +
// slope * min(r, 0): one FMA rounds slope * r once, as the scalar twins do.
template <class V>
inline typename V::T negative_slope(typename V::T r, typename V::T slope) {
  return V::fmadd(slope, V::min(r, V::zero()), V::max(r, V::zero()));
}

#if defined(__AVX512F__)
struct VecAvx512 {
  using T = __m512;
  using Mask = __mmask16;
  static constexpr int kWidth = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float v) { return _mm512_set1_ps(v); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T min(T a, T b) { return _mm512_min_ps(a, b); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  // A whole 64-byte line past the caches; p must be 64-byte aligned.
  static void stream(float* p, T v) { _mm512_stream_ps(p, v); }

  // Lanes [lo, hi) of a vector, clamped to [0, 16).
  static Mask range(int lo, int hi) {
    lo = lo < 0 ? 0 : lo;
    hi = hi > 16 ? 16 : hi;
    if (hi <= lo) return 0;
    return static_cast<Mask>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
  }
  // The lanes whose bit is set (bit i: lane i).
  static Mask from_bits(uint32_t bits) { return static_cast<Mask>(bits); }
  static Mask all(bool on) { return on ? 0xffff : 0; }
  static bool none(Mask m) { return m == 0; }
  static bool full(Mask m) { return m == 0xffff; }
  // Masked-off lanes are neither read nor faulted on.
  static T load(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, T v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }

  // Lanes 1..15 of lo then lane 0 of hi: the vector one column to the right.
  static T next_column(T lo, T hi) {
    return _mm512_castsi512_ps(
        _mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 1));
  }
  // Lane 15 of lo then lanes 0..14 of hi: the vector one column to the left.
  static T previous_column(T lo, T hi) {
    return _mm512_castsi512_ps(
        _mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(lo), 15));
  }
};
#endif

#if defined(__AVX2__) && defined(__FMA__)
struct VecAvx2 {
  using T = __m256;
  using Mask = __m256i;
  static constexpr int kWidth = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float v) { return _mm256_set1_ps(v); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T min(T a, T b) { return _mm256_min_ps(a, b); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  // Half a line past the caches; p must be 32-byte aligned.
  static void stream(float* p, T v) { _mm256_stream_ps(p, v); }

  // Lanes [lo, hi) of a vector, clamped to [0, 8).
  static Mask range(int lo, int hi) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(lo), lanes),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), lanes));
  }
  // The lanes whose bit is set (bit i: lane i).
  static Mask from_bits(uint32_t bits) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i set = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), lane_bit);
    return _mm256_cmpeq_epi32(set, lane_bit);
  }
  static Mask all(bool on) { return _mm256_set1_epi32(on ? -1 : 0); }
  static bool none(Mask m) { return _mm256_testz_si256(m, m); }
  static bool full(Mask m) { return _mm256_movemask_ps(_mm256_castsi256_ps(m)) == 0xff; }
  static T load(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, T v, Mask m) { _mm256_maskstore_ps(p, m, v); }

  // A 128-bit lane swap, then a byte shift.
  static T next_column(T lo, T hi) {
    const __m256 mid = _mm256_permute2f128_ps(lo, hi, 0x21);  // lo[4..7], hi[0..3]
    return _mm256_castsi256_ps(
        _mm256_alignr_epi8(_mm256_castps_si256(mid), _mm256_castps_si256(lo), 4));
  }
  static T previous_column(T lo, T hi) {
    const __m256 mid = _mm256_permute2f128_ps(lo, hi, 0x21);
    return _mm256_castsi256_ps(
        _mm256_alignr_epi8(_mm256_castps_si256(hi), _mm256_castps_si256(mid), 12));
  }
};
#endif

}  // namespace sparsr
