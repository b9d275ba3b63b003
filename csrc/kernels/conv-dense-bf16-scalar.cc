// Scalar twins of the bf16 dense convolution kernels: weights and activations
// rounded to bf16 (RNE), each pair of channels summed as vdpbf16ps does (the
// odd channel's product first, then the even one's, each added in f32; the
// products of two bf16 are exact in f32). The reference of the AVX512_BF16
// kernels, and the bf16 path at the scalar level.
#include "sparsr.h"

namespace sparsr {
namespace {

template <int K>
void conv_dense_bf16_scalar(const PackedConv& w, const ConvTask& t) {
  constexpr int taps = K * K;
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  const int n_pairs = (w.cin + 1) / 2;
  const int used_pairs = (t.cin + 1) / 2;
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    for (int o = 0; o < t.cout; ++o) {
      const uint32_t* wo = w.pairs.data() + static_cast<size_t>(o) * n_pairs * taps;
      float* dst = t.out[o] + (run.y + 1) * t.ld + 1;
      const float* res = t.residual ? t.residual[o] + (run.y + 1) * t.ld + 1 : nullptr;
      for (int x = run.x0; x < run.x1; ++x) {
        float acc = w.bias[o];
        for (int p = 0; p < used_pairs; ++p) {
          const int even = 2 * p, odd = 2 * p + 1;
          const int64_t at = (run.y + shift) * t.ld + x + shift;
          const float* src0 = t.in[even] + at;
          const float* src1 = odd < t.cin ? t.in[odd] + at : nullptr;  // read as zeros
          for (int ky = 0; ky < K; ++ky)
            for (int kx = 0; kx < K; ++kx) {
              const uint32_t pair = wo[p * taps + ky * K + kx];
              const int64_t i = ky * t.ld + kx;
              const float x0 = bf16_to_float(bf16_round(src0[i]));
              const float x1 = src1 ? bf16_to_float(bf16_round(src1[i])) : 0.0f;
              acc += bf16_to_float(static_cast<uint16_t>(pair >> 16)) * x1;
              acc += bf16_to_float(static_cast<uint16_t>(pair & 0xffffu)) * x0;
            }
        }
        acc = conv_activation(t, o, acc);
        if (res) acc += res[x];
        dst[x] = acc;
      }
    }
  }
}

}  // namespace

void conv3x3_dense_bf16_1x1_scalar(const PackedConv& w, const ConvTask& t) {
  conv_dense_bf16_scalar<3>(w, t);
}
void conv1x1_dense_bf16_1x1_scalar(const PackedConv& w, const ConvTask& t) {
  conv_dense_bf16_scalar<1>(w, t);
}

}  // namespace sparsr
