#include "sparsr.h"

namespace sparsr {

PackedConv pack_dense(const float* weight_oihw, const float* bias, int cout, int cin, int ksize,
                      int block) {
  PackedConv p;
  p.cout = cout;
  p.cin = cin;
  p.ksize = ksize;
  p.block = block;
  const int taps = ksize * ksize;
  const int blocks = (cout + block - 1) / block;
  p.bias.assign(static_cast<size_t>(blocks) * block, 0.0f);
  if (bias)
    for (int o = 0; o < cout; ++o) p.bias[o] = bias[o];
  p.weights.assign(static_cast<size_t>(blocks) * cin * taps * block, 0.0f);
  for (int o = 0; o < cout; ++o) {
    const int b = o / block, lane = o % block;
    for (int i = 0; i < cin; ++i)
      for (int t = 0; t < taps; ++t)
        p.weights[((static_cast<size_t>(b) * cin + i) * taps + t) * block + lane] =
            weight_oihw[(static_cast<size_t>(o) * cin + i) * taps + t];
  }
  return p;
}

// csr: the nonzeros of each output channel as entries, one per (ci, ky)
// input row with at least one nonzero, grouped by kx mask so that the kernels
// load a row once for all its kx (see conv-csr-tile.h). A 1x1 has one mask.
//   index[e]     the entry's input row, ci * ksize + ky: the entry of the
//                per-tile table of row pointers the kernels build;
//   weights      3x3: weights[3 e + kx], zero where kx is not in the mask;
//                1x1: weights[e];
//   counts       [cout][masks][cin + 1] prefix offsets, masks = 7 for a 3x3
//                (mask m = 1..7 at m - 1, bit kx set when kx is nonzero), 1
//                for a 1x1: counts[(o * masks + m) * (cin + 1) + c] is the first
//                entry of (o, m) with channel >= c, so the entries of channels
//                [c0, c1) are [.. c0], .. c1]) and a call that reads a prefix of
//                the input channels needs no search.
// A zero output channel has empty ranges (bias only); block is 1.
PackedConv pack_csr(const float* weight_oihw, const float* bias, int cout, int cin, int ksize) {
  PackedConv p;
  p.cout = cout;
  p.cin = cin;
  p.ksize = ksize;
  p.block = 1;
  const int taps = ksize * ksize;
  const int masks = ksize == 3 ? 7 : 1;
  p.bias.assign(cout, 0.0f);
  if (bias)
    for (int o = 0; o < cout; ++o) p.bias[o] = bias[o];
  p.counts.resize(static_cast<size_t>(cout) * masks * (cin + 1));
  for (int o = 0; o < cout; ++o) {
    for (int m = 0; m < masks; ++m) {
      int32_t* prefix = p.counts.data() + (static_cast<size_t>(o) * masks + m) * (cin + 1);
      for (int i = 0; i < cin; ++i) {
        prefix[i] = static_cast<int32_t>(p.index.size());
        const float* w = weight_oihw + (static_cast<size_t>(o) * cin + i) * taps;
        for (int ky = 0; ky < ksize; ++ky) {
          const float* wr = w + ky * ksize;
          if (ksize == 1) {
            if (wr[0] == 0.0f) continue;
            p.weights.push_back(wr[0]);
          } else {
            const int mask = (wr[0] != 0.0f) | (wr[1] != 0.0f) << 1 | (wr[2] != 0.0f) << 2;
            if (mask != m + 1) continue;
            for (int kx = 0; kx < 3; ++kx) p.weights.push_back(wr[kx] != 0.0f ? wr[kx] : 0.0f);
          }
          p.index.push_back(i * ksize + ky);
        }
      }
      prefix[cin] = static_cast<int32_t>(p.index.size());
    }
  }
  return p;
}

PackedConv pack_for(const KernelInfo& kernel, const float* weight_oihw, const float* bias,
                    int cout, int cin, int ksize, const FormatOptions& options) {
  const std::string format = kernel.format;
  (void)options;
  if (format == "dense") return pack_dense(weight_oihw, bias, cout, cin, ksize, kernel.block);
  if (format == "csr") return pack_csr(weight_oihw, bias, cout, cin, ksize);
  throw std::invalid_argument("unknown weight format '" + format + "'");
}

}  // namespace sparsr
