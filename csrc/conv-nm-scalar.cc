// Plain scalar twins of the N:M convolution kernels: they walk the packed
// layout of pack_nm (pack.cc) one weight at a time and are the reference the
// vectorised kernels are tested against.
#include "sparsr.h"

namespace sparsr {
namespace {

template <int K>
void conv_nm_scalar(const PackedConv& w, const ConvTask& t) {
  constexpr int taps = K * K;
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  const int per_group = taps * w.n;
  const int groups_read = (t.cin + w.m - 1) / w.m;
  const size_t per_cout = static_cast<size_t>(w.cin / w.m) * per_group;
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    for (int o = 0; o < t.cout; ++o) {
      const float* wo = w.weights.data() + o * per_cout;
      const int32_t* io = w.index.data() + o * per_cout;
      float* dst = t.out[o] + (run.y + 1) * t.ld + 1;
      const float* res = t.residual ? t.residual[o] + (run.y + 1) * t.ld + 1 : nullptr;
      for (int x = run.x0; x < run.x1; ++x) {
        float acc = w.bias[o];
        for (int e = 0; e < groups_read * per_group; ++e) {
          const int ci = io[e] / taps, tap = io[e] % taps;
          if (ci >= t.cin) continue;  // a group straddling the cin prefix
          const int ky = tap / K, kx = tap % K;
          acc += wo[e] * t.in[ci][(run.y + shift + ky) * t.ld + x + shift + kx];
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
