// N:M sparse convolution, AVX-512: one output channel x 96 pixels per tile
// (6 accumulators; see conv-nm-tile.h).
#include "conv-nm-tile.h"
#include "simd.h"

namespace sparsr {

void conv3x3_nm_1x96_avx512(const PackedConv& w, const ConvTask& t) {
  conv_nm_dispatch<VecAvx512, 3, 6>(w, t);
}
void conv1x1_nm_1x96_avx512(const PackedConv& w, const ConvTask& t) {
  conv_nm_dispatch<VecAvx512, 1, 6>(w, t);
}

}  // namespace sparsr
