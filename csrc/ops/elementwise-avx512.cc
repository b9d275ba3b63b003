// The elementwise row loops compiled for AVX-512.
#include "elementwise-rows.h"

namespace sparsr {

const ElementwiseRows& elementwise_rows_avx512() {
  static const ElementwiseRows rows = make_elementwise_rows();
  return rows;
}

}  // namespace sparsr
