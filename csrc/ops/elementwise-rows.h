// The row loops of the elementwise operators (elementwise.h), one plain loop
// per kind so that the compiler vectorises each for the ISA of the file that
// includes this header: elementwise-scalar.cc (baseline x86-64),
// elementwise-avx2.cc, elementwise-avx512.cc. Rows are the interior pixels of
// one plane row; src and dst may be the same row.
#pragma once

#include "elementwise-math.h"
#include "elementwise.h"

namespace sparsr {

struct ElementwiseRows {
  void (*unary)(UnaryKind kind, const float* src, float* dst, int n, float alpha, float beta);
  void (*binary)(BinaryKind kind, const float* a, const float* b, float* dst, int n);
  // dst = a op value, or value op a when reverse.
  void (*binary_scalar)(BinaryKind kind, const float* a, float value, bool reverse, float* dst,
                        int n);
  // sum += x - shift, sum_squares += (x - shift)^2 over the row, in double.
  void (*moments)(const float* src, int n, double shift, double* sum, double* sum_squares);
};

const ElementwiseRows& elementwise_rows_scalar();
const ElementwiseRows& elementwise_rows_avx2();
const ElementwiseRows& elementwise_rows_avx512();

namespace {

// A loop per kind: the switch stays outside the loops.
template <class F>
inline void map_row(const float* src, float* dst, int n, F f) {
  for (int i = 0; i < n; ++i) dst[i] = f(src[i]);
}

inline void unary_row(UnaryKind kind, const float* src, float* dst, int n, float alpha,
                      float beta) {
  switch (kind) {
    // x < 0 ? 0 : x (not x > 0 ? x : 0) lets NaN through, as PyTorch does.
    case UnaryKind::kRelu: return map_row(src, dst, n, [](float x) { return x < 0.0f ? 0.0f : x; });
    case UnaryKind::kLeakyRelu:
    case UnaryKind::kPrelu:
      return map_row(src, dst, n, [alpha](float x) { return select(x > 0.0f, x, x * alpha); });
    case UnaryKind::kSigmoid: return map_row(src, dst, n, [](float x) { return sigmoid_approx(x); });
    case UnaryKind::kSilu:
      return map_row(src, dst, n, [](float x) { return x * sigmoid_approx(x); });
    case UnaryKind::kGelu: return map_row(src, dst, n, [](float x) { return gelu_approx(x); });
    case UnaryKind::kGeluTanh:
      return map_row(src, dst, n, [](float x) { return gelu_tanh_approx(x); });
    case UnaryKind::kTanh: return map_row(src, dst, n, [](float x) { return tanh_approx(x); });
    case UnaryKind::kClamp:
      return map_row(src, dst, n, [alpha, beta](float x) {
        const float lo = select(x < alpha, alpha, x);
        return select(lo > beta, beta, lo);
      });
  }
}

inline void binary_row(BinaryKind kind, const float* a, const float* b, float* dst, int n) {
  switch (kind) {
    case BinaryKind::kAdd: for (int i = 0; i < n; ++i) dst[i] = a[i] + b[i]; return;
    case BinaryKind::kSub: for (int i = 0; i < n; ++i) dst[i] = a[i] - b[i]; return;
    case BinaryKind::kMul: for (int i = 0; i < n; ++i) dst[i] = a[i] * b[i]; return;
  }
}

inline void binary_scalar_row(BinaryKind kind, const float* a, float value, bool reverse,
                              float* dst, int n) {
  switch (kind) {
    case BinaryKind::kAdd: return map_row(a, dst, n, [value](float x) { return x + value; });
    case BinaryKind::kMul: return map_row(a, dst, n, [value](float x) { return x * value; });
    case BinaryKind::kSub:
      if (reverse) return map_row(a, dst, n, [value](float x) { return value - x; });
      return map_row(a, dst, n, [value](float x) { return x - value; });
  }
}

// Independent lanes: a vector of double accumulators without reassociating.
inline void moments_row(const float* src, int n, double shift, double* sum, double* sum_squares) {
  constexpr int kLanes = 16;
  double s[kLanes] = {}, q[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double d = static_cast<double>(src[i + l]) - shift;
      s[l] += d;
      q[l] += d * d;
    }
  for (; i < n; ++i) {
    const double d = static_cast<double>(src[i]) - shift;
    s[0] += d;
    q[0] += d * d;
  }
  for (int l = 0; l < kLanes; ++l) {
    *sum += s[l];
    *sum_squares += q[l];
  }
}

inline ElementwiseRows make_elementwise_rows() {
  return ElementwiseRows{&unary_row, &binary_row, &binary_scalar_row, &moments_row};
}

}  // namespace
}  // namespace sparsr
