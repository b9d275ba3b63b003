// Plain scalar twins of the CSR (unstructured-sparse) convolution kernels: the
// reference the vectorised CSR kernels are tested against. Layout: pack_csr.
#include "sparsr.h"

namespace sparsr {
namespace {

template <int K>
void conv_csr_scalar(const PackedConv& w, const ConvTask& t) {
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  constexpr int masks = K == 3 ? 7 : 1;
  const int row = w.cin + 1;
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    for (int o = 0; o < t.cout; ++o) {
      float* dst = t.out[o] + (run.y + 1) * t.ld + 1;
      const float* res = t.residual ? t.residual[o] + (run.y + 1) * t.ld + 1 : nullptr;
      for (int x = run.x0; x < run.x1; ++x) {
        float acc = w.bias[o];
        for (int m = 0; m < masks; ++m) {
          const int32_t* prefix = w.counts.data() + (static_cast<size_t>(o) * masks + m) * row;
          for (int e = prefix[0]; e < prefix[t.cin]; ++e) {
            const int ci = w.index[e] / K, ky = w.index[e] % K;
            const float* src = t.in[ci] + (run.y + ky + shift) * t.ld + x + shift;
            if (K == 1) {
              acc += w.weights[e] * src[0];
            } else {
              for (int kx = 0; kx < K; ++kx)
                if ((m + 1) >> kx & 1) acc += w.weights[3 * e + kx] * src[kx];
            }
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

void conv3x3_csr_1x1_scalar(const PackedConv& w, const ConvTask& t) { conv_csr_scalar<3>(w, t); }
void conv1x1_csr_1x1_scalar(const PackedConv& w, const ConvTask& t) { conv_csr_scalar<1>(w, t); }

}  // namespace sparsr
