// Scalar twins of the int8 dense convolution kernels: every input quantized to
// u8 as the vector kernels do (int8-quads.h: fma(x, in_inv, zero), at most
// 255, rounded to nearest even, negatives 0), s8 weights (pack_dense_int8), exact int32 sums and the same
// dequantization (one fma of the corrected sum): bit-identical to the AVX512
// kernels. The reference of the vector kernels, and the int8 path at the
// scalar level.
#include <algorithm>
#include <cmath>

#include "sparsr.h"

namespace sparsr {
namespace {

inline int32_t quantize_u8(float x, float inv, int zero) {
  float v = std::fma(x, inv, static_cast<float>(zero));
  v = v < 255.0f ? v : 255.0f;  // vminps(v, 255): 255 when v is NaN
  if (!(v > -1.0f)) return 0;   // the packs saturate negatives (and -inf)
  return std::max(0, static_cast<int32_t>(std::nearbyint(v)));
}

template <int K>
void conv_dense_int8_scalar(const PackedConv& w, const ConvTask& t) {
  constexpr int taps = K * K;
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  const int n_quads = (w.cin + 3) / 4;
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    for (int o = 0; o < t.cout; ++o) {
      const int b = o / w.block, lane = o % w.block;
      const uint32_t* wo = w.pairs.data() + static_cast<size_t>(b) * n_quads * taps * w.block;
      const int32_t zs = w.in_zero * w.counts[static_cast<size_t>(o) * (w.cin + 1) + t.cin];
      float* dst = t.out[o] + (run.y + 1) * t.ld + 1;
      const float* res = t.residual ? t.residual[o] + (run.y + 1) * t.ld + 1 : nullptr;
      for (int x = run.x0; x < run.x1; ++x) {
        int32_t acc = 0;
        for (int i = 0; i < t.cin; ++i) {
          const float* src = t.in[i] + (run.y + shift) * t.ld + x + shift;
          for (int ky = 0; ky < K; ++ky)
            for (int kx = 0; kx < K; ++kx) {
              const uint32_t quad = wo[((i / 4) * taps + ky * K + kx) * w.block + lane];
              const int32_t wq = static_cast<int8_t>(static_cast<uint8_t>(quad >> (8 * (i % 4))));
              acc += wq * quantize_u8(src[ky * t.ld + kx], w.in_inv, w.in_zero);
            }
        }
        float v = std::fma(static_cast<float>(acc - zs), w.scales[o], w.bias[o]);
        v = conv_activation(t, o, v);
        if (res) v += res[x];
        dst[x] = v;
      }
    }
  }
}

}  // namespace

void conv3x3_dense_int8_1x1_scalar(const PackedConv& w, const ConvTask& t) {
  conv_dense_int8_scalar<3>(w, t);
}
void conv1x1_dense_int8_1x1_scalar(const PackedConv& w, const ConvTask& t) {
  conv_dense_int8_scalar<1>(w, t);
}

}  // namespace sparsr
