// General and transposed convolutions, portable: the same row kernel over
// one-float "vectors", 4 output channels x 2 outputs or 1 x 8 per tile
// (conv_general_block). Runs on any x86-64 CPU.
#include "conv-general-impl.h"

namespace sparsr {

void conv_general_scalar(const PackedGeneralConv& w, const Channels& src, const Channels& dst,
                         bool relu, const float* slopes, const Channels* residual) {
  if (w.block == 4) return conv_general_rows<VecScalar, 4, 2>(w, src, dst, relu, slopes, residual);
  conv_general_rows<VecScalar, 1, 8>(w, src, dst, relu, slopes, residual);
}

void conv_transpose_scalar(const PackedGeneralConv& w, const Channels& src, const Channels& dst) {
  if (w.block == 4) return conv_transpose_rows<VecScalar, 4, 2>(w, src, dst);
  conv_transpose_rows<VecScalar, 1, 8>(w, src, dst);
}

}  // namespace sparsr
