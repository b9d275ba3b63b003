// The elementwise row loops compiled for AVX2 + FMA.
#include "elementwise-rows.h"

namespace sparsr {

const ElementwiseRows& elementwise_rows_avx2() {
  static const ElementwiseRows rows = make_elementwise_rows();
  return rows;
}

}  // namespace sparsr
