// Block-sparse (bcsr) convolution, AVX2+FMA; see conv-bcsr-tile.h. Tiles of
// half a block, 4 output channels x 24 pixels (12 ymm accumulators of 16, as
// the dense 4x24 kernel): each block walks its positions twice.
#include "conv-bcsr-tile.h"
#include "simd.h"

namespace sparsr {

void conv3x3_bcsr_4x24_avx2(const PackedConv& w, const ConvTask& t) {
  conv_bcsr_simd<VecAvx2, 3, kBcsrBlock, 4, 3>(w, t);
}
void conv1x1_bcsr_4x24_avx2(const PackedConv& w, const ConvTask& t) {
  conv_bcsr_simd<VecAvx2, 1, kBcsrBlock, 4, 3>(w, t);
}

}  // namespace sparsr
