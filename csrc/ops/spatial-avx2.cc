// The resize row loops for AVX2 + FMA: 8 outputs a vector.
#include "spatial-rows.h"

namespace sparsr {

const ResizeRows& resize_rows_avx2() {
  static const ResizeRows rows{VecAvx2::kWidth, &horizontal_vector_any<VecAvx2>,
                               &vertical_vector_any<VecAvx2>};
  return rows;
}

}  // namespace sparsr
