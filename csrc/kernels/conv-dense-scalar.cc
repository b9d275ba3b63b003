// Plain scalar twins of the dense convolution kernels: the reference every
// vectorised kernel is tested against, and the path for any x86-64 CPU.
#include "sparsr.h"

namespace sparsr {
namespace {

template <int K>
void conv_dense_scalar(const PackedConv& w, const ConvTask& t) {
  constexpr int taps = K * K;
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    for (int o = 0; o < t.cout; ++o) {
      const float* wo = w.weights.data() + static_cast<size_t>(o) * w.cin * taps;
      float* dst = t.out[o] + (run.y + 1) * t.ld + 1;
      const float* res = t.residual ? t.residual[o] + (run.y + 1) * t.ld + 1 : nullptr;
      for (int x = run.x0; x < run.x1; ++x) {
        float acc = w.bias[o];
        for (int i = 0; i < t.cin; ++i) {
          const float* src = t.in[i] + (run.y + shift) * t.ld + x + shift;
          const float* wi = wo + i * taps;
          for (int ky = 0; ky < K; ++ky)
            for (int kx = 0; kx < K; ++kx) acc += wi[ky * K + kx] * src[ky * t.ld + kx];
        }
        acc = conv_activation(t, o, acc);
        if (res) acc += res[x];
        dst[x] = acc;
      }
    }
  }
}

}  // namespace

void conv3x3_dense_1x1_scalar(const PackedConv& w, const ConvTask& t) { conv_dense_scalar<3>(w, t); }
void conv1x1_dense_1x1_scalar(const PackedConv& w, const ConvTask& t) { conv_dense_scalar<1>(w, t); }

}  // namespace sparsr
