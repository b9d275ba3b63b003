// General and transposed convolutions, AVX2+FMA: 4 output channels x 24
// outputs or 1 x 64 per register tile (conv_general_block).
#include "conv-general-impl.h"
#include "simd.h"

namespace sparsr {

void conv_general_avx2(const PackedGeneralConv& w, const Channels& src, const Channels& dst,
                       bool relu, const float* slopes, const Channels* residual) {
  if (w.block == 4) return conv_general_rows<VecAvx2, 4, 3>(w, src, dst, relu, slopes, residual);
  conv_general_rows<VecAvx2, 1, 8>(w, src, dst, relu, slopes, residual);
}

void conv_transpose_avx2(const PackedGeneralConv& w, const Channels& src, const Channels& dst) {
  if (w.block == 4) return conv_transpose_rows<VecAvx2, 4, 3>(w, src, dst);
  conv_transpose_rows<VecAvx2, 1, 8>(w, src, dst);
}

}  // namespace sparsr
