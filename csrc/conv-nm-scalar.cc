// Plain scalar twins of the N:M convolution kernels: they walk the packed
// layout of pack_nm (pack.cc) one weight at a time and are the reference the
// vectorised kernels are tested against.
#include "sparsr.h"

namespace sparsr {
namespace {

template <int K>
void conv_nm_scalar(const PackedConv& w, const ConvTask& t) {
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  const int groups = w.cin / w.m;
  const int groups_read = (t.cin + w.m - 1) / w.m;
  const int per_group = K * w.n;  // entries of one (kx, group): ky x N
  const size_t per_kx = static_cast<size_t>(groups) * per_group;
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    for (int o = 0; o < t.cout; ++o) {
      float* dst = t.out[o] + (run.y + 1) * t.ld + 1;
      const float* res = t.residual ? t.residual[o] + (run.y + 1) * t.ld + 1 : nullptr;
      for (int x = run.x0; x < run.x1; ++x) {
        float acc = w.bias[o];
        for (int kx = 0; kx < K; ++kx) {
          const size_t first = (static_cast<size_t>(o) * K + kx) * per_kx;
          for (size_t e = first; e < first + static_cast<size_t>(groups_read) * per_group; ++e) {
            const int ci = w.index[e] / K, ky = w.index[e] % K;
            if (ci >= t.cin) continue;  // a group straddling the cin prefix
            acc += w.weights[e] * t.in[ci][(run.y + shift + ky) * t.ld + x + shift + kx];
          }
        }
        if (t.relu && acc < 0.0f) acc = 0.0f;
        if (res) acc += res[x];
        dst[x] = acc;
      }
    }
  }
}

}  // namespace

void conv3x3_nm_1x1_scalar(const PackedConv& w, const ConvTask& t) { conv_nm_scalar<3>(w, t); }
void conv1x1_nm_1x1_scalar(const PackedConv& w, const ConvTask& t) { conv_nm_scalar<1>(w, t); }

}  // namespace sparsr
