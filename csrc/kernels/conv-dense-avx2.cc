// Dense convolution, AVX2+FMA: 4 output channels x 24 pixels per register tile
// (12 accumulators of 16 ymm registers).
#include "conv-dense-tile.h"
#include "simd.h"

namespace sparsr {

void conv3x3_dense_4x24_avx2(const PackedConv& w, const ConvTask& t) {
  conv_dense_simd<VecAvx2, 3, 4, 3>(w, t);
}
void conv1x1_dense_4x24_avx2(const PackedConv& w, const ConvTask& t) {
  conv_dense_simd<VecAvx2, 1, 4, 3>(w, t);
}

}  // namespace sparsr
