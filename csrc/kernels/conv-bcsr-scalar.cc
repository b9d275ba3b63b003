// Plain scalar twins of the block-sparse (bcsr) convolution kernels: the
// reference the vectorised ones are tested against. Layout: pack_bcsr.
#include "sparsr.h"

namespace sparsr {
namespace {

template <int K>
void conv_bcsr_scalar(const PackedConv& w, const ConvTask& t) {
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  constexpr int taps = K * K;
  const int block = w.block;
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    for (int o = 0; o < t.cout; ++o) {
      const int b = o / block, lane = o % block;
      const int32_t* prefix = w.counts.data() + static_cast<size_t>(b) * (w.cin + 1);
      float* dst = t.out[o] + (run.y + 1) * t.ld + 1;
      const float* res = t.residual ? t.residual[o] + (run.y + 1) * t.ld + 1 : nullptr;
      for (int x = run.x0; x < run.x1; ++x) {
        float acc = w.bias[o];
        for (int e = prefix[0]; e < prefix[t.cin]; ++e) {
          const int ci = w.index[e] / taps, ky = w.index[e] % taps / K, kx = w.index[e] % K;
          acc += w.weights[static_cast<size_t>(e) * block + lane] *
                 t.in[ci][(run.y + ky + shift) * t.ld + x + kx + shift];
        }
        acc = conv_activation(t, o, acc);
        if (res) acc += res[x];
        dst[x] = acc;
      }
    }
  }
}

}  // namespace

void conv3x3_bcsr_1x1_scalar(const PackedConv& w, const ConvTask& t) { conv_bcsr_scalar<3>(w, t); }
void conv1x1_bcsr_1x1_scalar(const PackedConv& w, const ConvTask& t) { conv_bcsr_scalar<1>(w, t); }

}  // namespace sparsr
