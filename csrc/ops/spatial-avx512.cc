// The resize row loops for AVX-512: 16 outputs a vector.
#include "spatial-rows.h"

namespace sparsr {

const ResizeRows& resize_rows_avx512() {
  static const ResizeRows rows{VecAvx512::kWidth, &horizontal_vector_any<VecAvx512>,
                               &vertical_vector_any<VecAvx512>};
  return rows;
}

}  // namespace sparsr
