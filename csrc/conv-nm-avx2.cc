// N:M sparse convolution, AVX2+FMA: one output channel x 48 pixels per tile
// (6 accumulators, 7 more for the shifted kx sums; see conv-nm-tile.h).
#include "conv-nm-tile.h"
#include "simd.h"

namespace sparsr {

void conv3x3_nm_1x48_avx2(const PackedConv& w, const ConvTask& t) {
  conv_nm_dispatch<VecAvx2, 3, 6>(w, t);
}
void conv1x1_nm_1x48_avx2(const PackedConv& w, const ConvTask& t) {
  conv_nm_dispatch<VecAvx2, 1, 6>(w, t);
}

}  // namespace sparsr
