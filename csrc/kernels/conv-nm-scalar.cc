// Plain scalar twins of the N:M convolution kernels: they walk the packed
// layouts of pack_nm (pack.cc) one weight at a time and are the reference the
// vectorised kernels are tested against.
#include "sparsr.h"

namespace sparsr {
namespace {

// 1x1: exactly N entries per group of M input channels.
void conv1x1_nm_scalar(const PackedConv& w, const ConvTask& t) {
  const int groups_read = (t.cin + w.m - 1) / w.m;
  const size_t per_cout = static_cast<size_t>((w.cin + w.m - 1) / w.m) * w.n;
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    const int64_t row = (run.y + 1) * t.ld + 1;
    for (int o = 0; o < t.cout; ++o) {
      const float* wo = w.weights.data() + o * per_cout;
      const int32_t* io = w.index.data() + o * per_cout;
      float* dst = t.out[o] + row;
      const float* res = t.residual ? t.residual[o] + row : nullptr;
      for (int x = run.x0; x < run.x1; ++x) {
        float acc = w.bias[o];
        for (int e = 0; e < groups_read * w.n; ++e)
          if (io[e] < t.cin) acc += wo[e] * t.in[io[e]][row + x];  // a group may straddle cin
        acc = conv_activation(t, o, acc);
        if (res) acc += res[x];
        dst[x] = acc;
      }
    }
  }
}

// 3x3: per chunk of input channels, input rows grouped by their kept kx set.
void conv3x3_nm_scalar(const PackedConv& w, const ConvTask& t) {
  const int chunks = (w.cin + kNmChunkChannels - 1) / kNmChunkChannels;
  const int chunks_read = (t.cin + kNmChunkChannels - 1) / kNmChunkChannels;
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    for (int o = 0; o < t.cout; ++o) {
      float* dst = t.out[o] + (run.y + 1) * t.ld + 1;
      const float* res = t.residual ? t.residual[o] + (run.y + 1) * t.ld + 1 : nullptr;
      for (int x = run.x0; x < run.x1; ++x) {
        float acc = w.bias[o];
        for (int c = 0; c < chunks_read; ++c) {
          const int32_t* count = w.counts.data() + (static_cast<size_t>(o) * chunks + c) * kNmCountStride;
          size_t e = count[7], k = count[8];
          for (int s = 1; s < 8; ++s)
            for (int j = 0; j < count[s - 1]; ++j, ++e) {
              const int ci = w.index[e] / 3, ky = w.index[e] % 3;
              const float* src = ci < t.cin ? t.in[ci] + (run.y + ky) * t.ld + x : nullptr;
              for (int kx = 0; kx < 3; ++kx)
                if (s >> kx & 1) {
                  const float wv = w.weights[k++];
                  if (src) acc += wv * src[kx];
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

void conv3x3_nm_1x1_scalar(const PackedConv& w, const ConvTask& t) { conv3x3_nm_scalar(w, t); }
void conv1x1_nm_1x1_scalar(const PackedConv& w, const ConvTask& t) { conv1x1_nm_scalar(w, t); }

}  // namespace sparsr
