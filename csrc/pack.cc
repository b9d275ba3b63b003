#include <algorithm>

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

// N:M format ("nm"): every group of M consecutive input channels at one
// (output channel, ky, kx) keeps exactly N weights; groups with fewer nonzeros
// are padded with zero weights at their lowest unused positions.
//   weights: [cout][kx][cin / M groups][ky][N] kept values, in increasing
//            channel order within a group. kx outermost: the kernels sum the
//            taps of one kx over aligned pixel vectors, then shift the sum by
//            kx once (conv-nm-tile.h);
//   index:   same shape, int32 ci * ksize + ky: the input row the weight reads,
//            an entry of the kernels' per-tile table of row pointers;
//   counts:  unused (every output channel keeps cin * ksize^2 * N / M weights);
//   bias:    cout values, block = 1.
// Throws std::invalid_argument if the weights are not N:M sparse or the
// pattern is not supported (M in {4, 8, 16, 32}, 1 <= N <= M, M divides cin).
PackedConv pack_nm(const float* weight_oihw, const float* bias, int cout, int cin, int ksize,
                   int n, int m) {
  if (m != 4 && m != 8 && m != 16 && m != 32)
    throw std::invalid_argument("N:M sparsity needs M in {4, 8, 16, 32}, got M = " +
                                std::to_string(m));
  if (n < 1 || n > m)
    throw std::invalid_argument("N:M sparsity needs 1 <= N <= M, got " + std::to_string(n) +
                                ":" + std::to_string(m));
  if (cin % m != 0)
    throw std::invalid_argument("N:M sparsity " + std::to_string(n) + ":" + std::to_string(m) +
                                " needs the input channels (" + std::to_string(cin) +
                                ") to be a multiple of M");
  PackedConv p;
  p.cout = cout;
  p.cin = cin;
  p.ksize = ksize;
  p.block = 1;
  p.n = n;
  p.m = m;
  const int taps = ksize * ksize;
  const int groups = cin / m;
  p.bias.assign(static_cast<size_t>(cout), 0.0f);
  if (bias)
    for (int o = 0; o < cout; ++o) p.bias[o] = bias[o];
  const size_t entries = static_cast<size_t>(cout) * groups * taps * n;
  p.weights.assign(entries, 0.0f);
  p.index.assign(entries, 0);
  std::vector<int> kept(n);
  std::vector<bool> used(m);
  size_t e = 0;
  for (int o = 0; o < cout; ++o)
    for (int kx = 0; kx < ksize; ++kx)
      for (int g = 0; g < groups; ++g)
        for (int ky = 0; ky < ksize; ++ky) {
          const int t = ky * ksize + kx;
          int count = 0;
          std::fill(used.begin(), used.end(), false);
          for (int j = 0; j < m; ++j) {
            const int ci = g * m + j;
            if (weight_oihw[(static_cast<size_t>(o) * cin + ci) * taps + t] == 0.0f) continue;
            if (count == n)
              throw std::invalid_argument(
                  "weights are not " + std::to_string(n) + ":" + std::to_string(m) +
                  " sparse: output channel " + std::to_string(o) + ", input channels " +
                  std::to_string(g * m) + ".." + std::to_string(g * m + m - 1) + ", tap (" +
                  std::to_string(ky) + ", " + std::to_string(kx) + ") has more than " +
                  std::to_string(n) + " nonzeros");
            kept[count++] = j;
            used[j] = true;
          }
          for (int j = 0; count < n; ++j)
            if (!used[j]) kept[count++] = j;
          std::sort(kept.begin(), kept.end());
          for (int k = 0; k < n; ++k, ++e) {
            const int ci = g * m + kept[k];
            p.weights[e] = weight_oihw[(static_cast<size_t>(o) * cin + ci) * taps + t];
            p.index[e] = ci * ksize + ky;
          }
        }
  return p;
}

PackedConv pack_for(const KernelInfo& kernel, const float* weight_oihw, const float* bias,
                    int cout, int cin, int ksize, const FormatOptions& options) {
  const std::string format = kernel.format;
  if (format == "dense") return pack_dense(weight_oihw, bias, cout, cin, ksize, kernel.block);
  if (format == "nm") return pack_nm(weight_oihw, bias, cout, cin, ksize, options.n, options.m);
  throw std::invalid_argument("unknown weight format '" + format + "'");
}

}  // namespace sparsr
