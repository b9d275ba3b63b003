// The elementwise row loops compiled for baseline x86-64 (the compiler may still use SSE2).
#include "elementwise-rows.h"

namespace sparsr {

const ElementwiseRows& elementwise_rows_scalar() {
  static const ElementwiseRows rows = make_elementwise_rows();
  return rows;
}

}  // namespace sparsr
