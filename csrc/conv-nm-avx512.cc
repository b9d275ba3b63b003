// N:M sparse convolution, AVX-512: one output channel x 128 pixels per tile
// (8 accumulators, 9 more for the shifted kx sums; see conv-nm-tile.h).
#include "conv-nm-tile.h"
#include "simd.h"

namespace sparsr {

void conv3x3_nm_1x128_avx512(const PackedConv& w, const ConvTask& t) {
  conv_nm_dispatch<VecAvx512, 3, 8>(w, t);
}
void conv1x1_nm_1x128_avx512(const PackedConv& w, const ConvTask& t) {
  conv_nm_dispatch<VecAvx512, 1, 8>(w, t);
}

}  // namespace sparsr
