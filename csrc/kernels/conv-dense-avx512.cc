// Dense convolution, AVX-512: 8 output channels x 48 pixels per register tile
// (24 accumulators of 32 zmm registers).
#include "conv-dense-tile.h"
#include "simd.h"

namespace sparsr {

void conv3x3_dense_8x48_avx512(const PackedConv& w, const ConvTask& t) {
  conv_dense_simd<VecAvx512, 3, 8, 3>(w, t);
}
void conv1x1_dense_8x48_avx512(const PackedConv& w, const ConvTask& t) {
  conv_dense_simd<VecAvx512, 1, 8, 3>(w, t);
}

}  // namespace sparsr
