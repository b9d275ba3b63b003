// Block-sparse (bcsr) convolution, AVX-512; see conv-bcsr-tile.h. Tiles of a
// whole block of kBcsrBlock = 8 output channels x 48 pixels (24 zmm
// accumulators of 32, as the dense 8x48 kernel).
#include "conv-bcsr-tile.h"
#include "simd.h"

namespace sparsr {

void conv3x3_bcsr_8x48_avx512(const PackedConv& w, const ConvTask& t) {
  conv_bcsr_simd<VecAvx512, 3, kBcsrBlock, 8, 3>(w, t);
}
void conv1x1_bcsr_8x48_avx512(const PackedConv& w, const ConvTask& t) {
  conv_bcsr_simd<VecAvx512, 1, kBcsrBlock, 8, 3>(w, t);
}

}  // namespace sparsr
