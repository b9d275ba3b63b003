// The row loops of resize (spatial.h), compiled once per ISA from this header:
// spatial-scalar.cc (baseline x86-64: plain loops), spatial-avx2.cc and
// spatial-avx512.cc (intrinsics). resize is separable: each source row it
// needs is resized along the row once (horizontal), then every output row is
// a weighted sum of a few of those rows (vertical), summed in PyTorch's order:
// within a row first, then across the rows, each sum from its first tap.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace sparsr {

// The taps along a row, laid out for one ISA's vector width. The source row
// is first padded by replicating its end pixels (left floats before it), so
// that the clamped taps of output x are the consecutive floats
// padded[start[x] + k], k < taps.
struct RowTaps {
  int taps = 1;    // 1 (nearest: a copy, no weights), 2 (bilinear) or 4 (bicubic)
  int n = 0;       // outputs
  int stride = 0;  // n rounded up to whole vectors: the length of each array below
  const int32_t* start = nullptr;
  const float* weight = nullptr;  // taps x stride, tap k of x at [k * stride + x]; null for 1 tap
  // Per block of `width` outputs from x = b * width: where its taps begin in
  // the padded row, or -1 when they span more than two vectors (then the block
  // runs the scalar loop). A vector block picks tap k of lane x out of the two
  // vectors at padded + block_base[b] by lane[k * stride + x] =
  // start[x] + k - block_base[b]. Null for the scalar rows.
  const int32_t* block_base = nullptr;
  const int32_t* lane = nullptr;
};

struct ResizeRows {
  int width;  // floats per vector (1: scalar)
  // out[x] for every x < t.stride (out holds t.stride floats) from the padded row.
  void (*horizontal)(const RowTaps& t, const float* padded, float* out);
  // dst[x] = rows[0][x] w[0] + rows[1][x] w[1] + ... for x < n, summed in that
  // order; one row is copied. The rows may be read up to a whole vector past n.
  // stream: dst is not read soon, store it past the caches.
  void (*vertical)(const float* const* rows, const float* weights, int taps, int n, float* dst,
                   bool stream);
};

const ResizeRows& resize_rows_scalar();
const ResizeRows& resize_rows_avx2();
const ResizeRows& resize_rows_avx512();

namespace {

template <int kTaps>
inline void horizontal_scalar(const RowTaps& t, const float* padded, float* out, int x0, int x1) {
  for (int x = x0; x < x1; ++x) {
    const float* s = padded + t.start[x];
    if (kTaps == 1) {
      out[x] = s[0];
      continue;
    }
    float v = s[0] * t.weight[x];
    for (int k = 1; k < kTaps; ++k) v += s[k] * t.weight[k * t.stride + x];
    out[x] = v;
  }
}

template <int kTaps>
inline void vertical_scalar(const float* const* rows, const float* w, int n, float* dst) {
  for (int x = 0; x < n; ++x) {
    float v = rows[0][x] * w[0];
    for (int k = 1; k < kTaps; ++k) v += rows[k][x] * w[k];
    dst[x] = v;
  }
}

inline void vertical_copy(const float* const* rows, int n, float* dst) {
  std::memcpy(dst, rows[0], sizeof(float) * static_cast<size_t>(n));
}

}  // namespace
}  // namespace sparsr

#if defined(__AVX2__) && defined(__FMA__)
#include "simd.h"

namespace sparsr {
namespace {

// Lane i of the result: lane idx[i] of the 2 * width floats lo, hi. Lanes
// are in [0, 2 * width) by construction of RowTaps::lane.
#if defined(__AVX512F__)
inline __m512 pick(__m512 lo, __m512 hi, const int32_t* idx) {
  return _mm512_permutex2var_ps(lo, _mm512_loadu_si512(idx), hi);
}
inline __m512 mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
#endif
inline __m256 pick(__m256 lo, __m256 hi, const int32_t* idx) {
  const __m256i i = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx));
  // Bit 3 of the lane (past the first vector) moved to the sign bit selects hi.
  const __m256 from_hi = _mm256_castsi256_ps(_mm256_slli_epi32(i, 28));
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, i), _mm256_permutevar8x32_ps(hi, i),
                          from_hi);
}
inline __m256 mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }

// A gather from two vector loads and a permute per tap: the taps of `width`
// neighbouring outputs lie within 2 * width floats whenever the row is
// enlarged, or shrunk by less than about half.
template <class V, int kTaps>
inline void horizontal_vector(const RowTaps& t, const float* padded, float* out) {
  constexpr int W = V::kWidth;
  for (int x = 0; x < t.stride; x += W) {
    const int32_t base = t.block_base[x / W];
    if (base < 0) {
      horizontal_scalar<kTaps>(t, padded, out, x, x + W);
      continue;
    }
    const typename V::T lo = V::load(padded + base), hi = V::load(padded + base + W);
    typename V::T v = pick(lo, hi, t.lane + x);
    if (kTaps > 1) v = mul(v, V::load(t.weight + x));
    for (int k = 1; k < kTaps; ++k)
      v = V::fmadd(pick(lo, hi, t.lane + k * t.stride + x), V::load(t.weight + k * t.stride + x),
                   v);
    V::store(out + x, v);
  }
}

template <class V>
inline void horizontal_vector_any(const RowTaps& t, const float* padded, float* out) {
  switch (t.taps) {
    case 1: return horizontal_vector<V, 1>(t, padded, out);
    case 2: return horizontal_vector<V, 2>(t, padded, out);
    default: return horizontal_vector<V, 4>(t, padded, out);
  }
}

template <class V, int kTaps>
inline void vertical_vector(const float* const* rows, const float* w, int n, float* dst,
                            bool stream) {
  constexpr int W = V::kWidth;
  typename V::T weight[kTaps];
  for (int k = 0; k < kTaps; ++k) weight[k] = V::set1(w[k]);
  auto sum = [&](int x) {
    typename V::T v = mul(V::load(rows[0] + x), weight[0]);
    for (int k = 1; k < kTaps; ++k) v = V::fmadd(V::load(rows[k] + x), weight[k], v);
    return v;
  };
  // Floats [x, x + count) alone: a source row may end where its buffer's
  // mapping does, so no load reaches past the row.
  auto part = [&](int x, int count) {
    const auto m = V::range(0, count);
    typename V::T v = mul(V::load(rows[0] + x, m), weight[0]);
    for (int k = 1; k < kTaps; ++k) v = V::fmadd(V::load(rows[k] + x, m), weight[k], v);
    V::store(dst + x, v, m);
  };
  int x = 0;
  if (stream) {
    // Up to the first aligned vector of dst, then whole lines past the caches.
    const int head = static_cast<int>((W - reinterpret_cast<uintptr_t>(dst) / 4 % W) % W);
    if (head > 0) part(0, std::min(head, n));
    x = std::min(head, n);
    for (; x + W <= n; x += W) V::stream(dst + x, sum(x));
    _mm_sfence();
  }
  for (; x + W <= n; x += W) V::store(dst + x, sum(x));
  if (x < n) part(x, n - x);
}

template <class V>
inline void vertical_vector_any(const float* const* rows, const float* w, int taps, int n,
                                float* dst, bool stream) {
  switch (taps) {
    case 1: return vertical_copy(rows, n, dst);
    case 2: return vertical_vector<V, 2>(rows, w, n, dst, stream);
    default: return vertical_vector<V, 4>(rows, w, n, dst, stream);
  }
}

}  // namespace
}  // namespace sparsr
#endif
