// General and transposed convolutions, AVX-512: 8 output channels x 48
// outputs, 4 x 96 or 1 x 128 per register tile (conv_general_block).
#include "conv-general-impl.h"
#include "simd.h"

namespace sparsr {

void conv_general_avx512(const PackedGeneralConv& w, const Channels& src, const Channels& dst,
                         bool relu, const float* slopes, const Channels* residual) {
  switch (w.block) {
    case 8: return conv_general_rows<VecAvx512, 8, 3>(w, src, dst, relu, slopes, residual);
    case 4: return conv_general_rows<VecAvx512, 4, 6>(w, src, dst, relu, slopes, residual);
    default: return conv_general_rows<VecAvx512, 1, 8>(w, src, dst, relu, slopes, residual);
  }
}

void conv_transpose_avx512(const PackedGeneralConv& w, const Channels& src, const Channels& dst) {
  switch (w.block) {
    case 8: return conv_transpose_rows<VecAvx512, 8, 3>(w, src, dst);
    case 4: return conv_transpose_rows<VecAvx512, 4, 6>(w, src, dst);
    default: return conv_transpose_rows<VecAvx512, 1, 8>(w, src, dst);
  }
}

}  // namespace sparsr
