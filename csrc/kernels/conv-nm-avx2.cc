// N:M sparse convolution, AVX2+FMA (see conv-nm-tile.h). 3x3: one output
// channel x 24 pixels per tile (3 accumulators, 7 more for the kx-shifted
// sums: 16 ymm registers); 1x1: one output channel x 48 pixels.
#include "conv-nm-tile.h"
#include "simd.h"

namespace sparsr {

void conv3x3_nm_1x24_avx2(const PackedConv& w, const ConvTask& t) {
  conv_nm_dispatch<VecAvx2, 3, 3>(w, t);
}
void conv1x1_nm_1x48_avx2(const PackedConv& w, const ConvTask& t) {
  conv_nm_dispatch<VecAvx2, 1, 6>(w, t);
}

}  // namespace sparsr
