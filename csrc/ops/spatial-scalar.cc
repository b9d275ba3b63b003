// The resize row loops compiled for baseline x86-64 (the compiler may still use SSE2).
#include "spatial-rows.h"

namespace sparsr {
namespace {

void horizontal(const RowTaps& t, const float* padded, float* out) {
  switch (t.taps) {
    case 1: return horizontal_scalar<1>(t, padded, out, 0, t.n);
    case 2: return horizontal_scalar<2>(t, padded, out, 0, t.n);
    default: return horizontal_scalar<4>(t, padded, out, 0, t.n);
  }
}

void vertical(const float* const* rows, const float* weights, int taps, int n, float* dst,
              bool /*stream*/) {
  switch (taps) {
    case 1: return vertical_copy(rows, n, dst);
    case 2: return vertical_scalar<2>(rows, weights, n, dst);
    default: return vertical_scalar<4>(rows, weights, n, dst);
  }
}

}  // namespace

const ResizeRows& resize_rows_scalar() {
  static const ResizeRows rows{1, &horizontal, &vertical};
  return rows;
}

}  // namespace sparsr
