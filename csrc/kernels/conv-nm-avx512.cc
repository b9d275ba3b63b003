// N:M sparse convolution, AVX-512 (see conv-nm-tile.h): one output channel x
// 128 pixels per tile; 3x3 keeps 8 accumulators and 17 more for the
// kx-shifted sums in the 32 zmm registers.
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
