#include <algorithm>
#include <cmath>

#include "sparsr.h"

namespace sparsr {

namespace {

// The fields every dense packing shares: shape, block and the bias padded to
// whole blocks.
PackedConv dense_header(const float* bias, int cout, int cin, int ksize, int block) {
  PackedConv p;
  p.cout = cout;
  p.cin = cin;
  p.ksize = ksize;
  p.block = block;
  const int blocks = (cout + block - 1) / block;
  p.bias.assign(static_cast<size_t>(blocks) * block, 0.0f);
  if (bias)
    for (int o = 0; o < cout; ++o) p.bias[o] = bias[o];
  return p;
}

}  // namespace

PackedConv pack_dense(const float* weight_oihw, const float* bias, int cout, int cin, int ksize,
                      int block) {
  PackedConv p = dense_header(bias, cout, cin, ksize, block);
  const int taps = ksize * ksize;
  const int blocks = (cout + block - 1) / block;
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

// Dense bf16: pack_dense's layout over pairs of input channels, each weight
// rounded to bf16 (RNE), channel 2p in the low half of pair p; an odd last
// channel pairs with a zero weight. The kernels read the activations of the
// same two channels as one pair per pixel (vdpbf16ps).
PackedConv pack_dense_bf16(const float* weight_oihw, const float* bias, int cout, int cin,
                           int ksize, int block) {
  PackedConv p = dense_header(bias, cout, cin, ksize, block);
  const int taps = ksize * ksize;
  const int blocks = (cout + block - 1) / block;
  const int n_pairs = (cin + 1) / 2;
  p.pairs.assign(static_cast<size_t>(blocks) * n_pairs * taps * block, 0u);
  for (int o = 0; o < cout; ++o) {
    const int b = o / block, lane = o % block;
    for (int i = 0; i < cin; ++i)
      for (int t = 0; t < taps; ++t) {
        const size_t at = (static_cast<size_t>(o) * cin + i) * taps + t;
        const uint32_t half = bf16_round(weight_oihw[at]);
        p.pairs[((static_cast<size_t>(b) * n_pairs + i / 2) * taps + t) * block + lane] |=
            half << (16 * (i % 2));
      }
  }
  return p;
}

// Dense int8: symmetric s8 weights, one scale per output channel (its largest
// |w| / 127; 1 for an all-zero channel), w_q = round(w / scale) (ties to
// even) in [-127, 127], in pack_dense_bf16's layout over quads of input
// channels: channel 4q + j in byte j of quad q, missing channels zero.
//   pairs:  [cout / block][(cin + 3) / 4][ksize * ksize][block] quads;
//   scales: quant.scale * weight scale of o, zero padded to the blocks;
//   counts: [cout rounded to blocks][cin + 1], counts[o * (cin + 1) + c] the sum
//           of w_q of output o over input channels < c and every tap.
// An input x is the u8 q = clamp(round(x / quant.scale + zero_point), 0, 255)
// (so the zero border is zero_point, exactly 0), and output o is
//   (sum w_q q - zero_point * counts[o][cin]) * scales[o] + bias[o].
// No int32 sum can overflow: vpdpbusd adds its four u8 x s8 products (each
// within 255 * 127) in int32, with no int16 intermediate and no saturation, and
// at most kInt8MaxTerms of them make one output.
PackedConv pack_dense_int8(const float* weight_oihw, const float* bias, int cout, int cin,
                           int ksize, int block, const Int8Input& quant) {
  if (!(quant.scale > 0.0f) || !std::isfinite(quant.scale) || !std::isfinite(1.0f / quant.scale))
    throw std::invalid_argument("int8 convolution needs a positive finite input scale, got " +
                                std::to_string(quant.scale));
  if (quant.zero_point != 0 && quant.zero_point != 128)
    throw std::invalid_argument("int8 convolution needs an input zero point of 0 or 128, got " +
                                std::to_string(quant.zero_point));
  const int taps = ksize * ksize;
  if (static_cast<int64_t>(cin) * taps > kInt8MaxTerms)
    throw std::invalid_argument("int8 convolution of " + std::to_string(cin) + " input channels x " +
                                std::to_string(taps) + " taps could overflow its int32 sums");
  PackedConv p = dense_header(bias, cout, cin, ksize, block);
  const int blocks = (cout + block - 1) / block;
  const int n_quads = (cin + 3) / 4;
  p.in_inv = 1.0f / quant.scale;
  p.in_zero = quant.zero_point;
  p.pairs.assign(static_cast<size_t>(blocks) * n_quads * taps * block, 0u);
  p.scales.assign(static_cast<size_t>(blocks) * block, 0.0f);
  p.counts.assign(static_cast<size_t>(blocks) * block * (cin + 1), 0);
  for (int o = 0; o < cout; ++o) {
    const float* wo = weight_oihw + static_cast<size_t>(o) * cin * taps;
    float peak = 0.0f;
    for (int i = 0; i < cin * taps; ++i) peak = std::max(peak, std::fabs(wo[i]));
    const float scale = peak > 0.0f ? peak / 127.0f : 1.0f;
    p.scales[o] = quant.scale * scale;
    const int b = o / block, lane = o % block;
    int32_t* prefix = p.counts.data() + static_cast<size_t>(o) * (cin + 1);
    for (int i = 0; i < cin; ++i) {
      int32_t sum = 0;
      for (int t = 0; t < taps; ++t) {
        const float q = std::nearbyint(wo[i * taps + t] / scale);
        const int32_t v = static_cast<int32_t>(std::min(127.0f, std::max(-127.0f, q)));
        sum += v;
        const uint32_t byte = static_cast<uint8_t>(static_cast<int8_t>(v));
        p.pairs[((static_cast<size_t>(b) * n_quads + i / 4) * taps + t) * block + lane] |=
            byte << (8 * (i % 4));
      }
      prefix[i + 1] = prefix[i] + sum;
    }
  }
  return p;
}

// Dense bf16 for AMX: one 16 x 16 tile of weight pairs per (block of 16
// output channels, chunk of kAmxChunkChannels input channels, tap), row m
// the block's output channel m, column k the pair of channels (2k, 2k + 1) of
// the chunk, 2k in the low half (the A operand of tdpbf16ps):
//   pairs: [blocks][chunks][ksize * ksize][16][16], blocks a multiple of 2
//          (the kernel runs two at a time), missing channels zero;
//   bias:  cout, zero padded to the blocks.
PackedConv pack_dense_amx(const float* weight_oihw, const float* bias, int cout, int cin,
                          int ksize) {
  constexpr int kRows = 16, kPairs = kAmxChunkChannels / 2;
  PackedConv p;
  p.cout = cout;
  p.cin = cin;
  p.ksize = ksize;
  p.block = 2 * kRows;
  const int taps = ksize * ksize;
  const int blocks = (cout + 2 * kRows - 1) / (2 * kRows) * 2;
  const int chunks = (cin + kAmxChunkChannels - 1) / kAmxChunkChannels;
  p.bias.assign(static_cast<size_t>(blocks) * kRows, 0.0f);
  if (bias)
    for (int o = 0; o < cout; ++o) p.bias[o] = bias[o];
  p.pairs.assign(static_cast<size_t>(blocks) * chunks * taps * kRows * kPairs, 0u);
  for (int o = 0; o < cout; ++o)
    for (int i = 0; i < cin; ++i)
      for (int t = 0; t < taps; ++t) {
        const int b = o / kRows, m = o % kRows, q = i / kAmxChunkChannels;
        const int k = i % kAmxChunkChannels / 2;
        const size_t at = (static_cast<size_t>(o) * cin + i) * taps + t;
        const uint32_t half = bf16_round(weight_oihw[at]);
        p.pairs[(((static_cast<size_t>(b) * chunks + q) * taps + t) * kRows + m) * kPairs + k] |=
            half << (16 * (i % 2));
      }
  return p;
}

// N:M format ("nm"): at most N nonzeros in every group of M consecutive input
// channels at one (output channel, ky, kx). When M does not divide cin, the
// last group is short (cin mod M channels) and still keeps at most N (RFDN's
// 50 channels at 2:4: 12 groups of 4 and one of 2). Two layouts, by kernel size.
//
// 1x1: every group keeps exactly N weights (groups with fewer nonzeros are
// padded with zero weights at their lowest unused positions; a short group
// narrower than N repeats its first channel with zero weights):
//   weights: [cout][ceil(cin / M) groups][N] kept values, increasing channel order;
//   index:   same shape, int32 input channel.
//
// 3x3: the kept weights of one (output channel, input channel, ky) share one
// input row whatever kx they sit at, so they are stored by input row: a row
// with kept weights at the kx set s (bit kx, s = 1..7) is one entry with
// popcount(s) weights, and the kernels load its pixels once for all of them.
// Entries are grouped by chunks of kNmChunkChannels input channels (whose rows
// of a tile stay in L1) and, within a chunk, by s:
//   index:   [cout][chunk][s][entry] int32 ci * 3 + ky;
//   weights: popcount(s) values per entry, in kx order, same order;
//   counts:  [cout][chunk][kNmCountStride]: entries of s = 1..7, then the
//            offsets of the chunk's first entry in index and in weights.
// Rows with no kept weight are not stored; the count of kept weights is
// N/M of dense whatever the layout.
//
// Both: bias has cout values, block = 1. Throws std::invalid_argument if the
// weights are not N:M sparse or the pattern is not supported (M in
// {4, 8, 16, 32}, 1 <= N <= M).
PackedConv pack_nm(const float* weight_oihw, const float* bias, int cout, int cin, int ksize,
                   int n, int m) {
  if (m != 4 && m != 8 && m != 16 && m != 32)
    throw std::invalid_argument("N:M sparsity needs M in {4, 8, 16, 32}, got M = " +
                                std::to_string(m));
  if (n < 1 || n > m)
    throw std::invalid_argument("N:M sparsity needs 1 <= N <= M, got " + std::to_string(n) +
                                ":" + std::to_string(m));
  const int taps = ksize * ksize;
  const int groups = (cin + m - 1) / m;
  auto at = [&](int o, int ci, int t) {
    return weight_oihw[(static_cast<size_t>(o) * cin + ci) * taps + t];
  };
  auto width = [&](int g) { return std::min(m, cin - g * m); };  // the last may be short
  for (int o = 0; o < cout; ++o)
    for (int g = 0; g < groups; ++g)
      for (int t = 0; t < taps; ++t) {
        int count = 0;
        for (int j = 0; j < width(g); ++j) count += at(o, g * m + j, t) != 0.0f;
        if (count > n)
          throw std::invalid_argument(
              "weights are not " + std::to_string(n) + ":" + std::to_string(m) +
              " sparse: output channel " + std::to_string(o) + ", input channels " +
              std::to_string(g * m) + ".." + std::to_string(g * m + width(g) - 1) + ", tap (" +
              std::to_string(t / ksize) + ", " + std::to_string(t % ksize) + ") has " +
              std::to_string(count) + " nonzeros");
      }
  PackedConv p;
  p.cout = cout;
  p.cin = cin;
  p.ksize = ksize;
  p.block = 1;
  p.n = n;
  p.m = m;
  p.bias.assign(static_cast<size_t>(cout), 0.0f);
  if (bias)
    for (int o = 0; o < cout; ++o) p.bias[o] = bias[o];
  if (ksize == 1) {
    for (int o = 0; o < cout; ++o)
      for (int g = 0; g < groups; ++g) {
        int kept = 0;
        for (int j = 0; j < width(g) && kept < n; ++j)
          if (at(o, g * m + j, 0) != 0.0f) ++kept;
        int pad = n - kept;  // zero weights at the lowest unused positions
        int stored = 0;
        for (int j = 0; j < width(g); ++j) {
          const float v = at(o, g * m + j, 0);
          if (v == 0.0f) {
            if (pad == 0) continue;
            --pad;
          }
          p.weights.push_back(v);
          p.index.push_back(g * m + j);
          ++stored;
        }
        for (; stored < n; ++stored) {  // a short group narrower than N
          p.weights.push_back(0.0f);
          p.index.push_back(g * m);
        }
      }
    return p;
  }
  const int chunks = (cin + kNmChunkChannels - 1) / kNmChunkChannels;
  p.counts.reserve(static_cast<size_t>(cout) * chunks * kNmCountStride);
  for (int o = 0; o < cout; ++o)
    for (int c = 0; c < chunks; ++c) {
      const int c0 = c * kNmChunkChannels, c1 = std::min(cin, c0 + kNmChunkChannels);
      const size_t first_entry = p.index.size(), first_weight = p.weights.size();
      for (int s = 1; s < 8; ++s) {
        int entries = 0;
        for (int ci = c0; ci < c1; ++ci)
          for (int ky = 0; ky < ksize; ++ky) {
            int kept = 0;
            for (int kx = 0; kx < ksize; ++kx) kept |= (at(o, ci, ky * ksize + kx) != 0.0f) << kx;
            if (kept != s) continue;
            ++entries;
            p.index.push_back(ci * ksize + ky);
            for (int kx = 0; kx < ksize; ++kx)
              if (s >> kx & 1) p.weights.push_back(at(o, ci, ky * ksize + kx));
          }
        p.counts.push_back(entries);
      }
      p.counts.push_back(static_cast<int32_t>(first_entry));
      p.counts.push_back(static_cast<int32_t>(first_weight));
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

// bcsr: blocks of `block` consecutive output channels (the last one padded
// with zero channels) that share one pattern: a (ci, tap) position is kept in
// a block when any of its channels has a nonzero there, and stored with the
// weights of all the block's channels (zeros included).
//   index[e]     the entry's position, ci * ksize^2 + ky * ksize + kx: the entry
//                of the per-row pointer table the kernels build;
//   weights      [entry][block], weights[e * block + lane] for output channel
//                block * b + lane;
//   counts       [blocks][cin + 1] prefix offsets: counts[b * (cin + 1) + c] is
//                the first entry of block b with channel >= c (entries are in
//                increasing position order), so a call that reads a prefix of
//                the input channels needs no search;
//   bias         cout, zero padded to whole blocks.
// Throws std::invalid_argument for a block outside 1..64.
PackedConv pack_bcsr(const float* weight_oihw, const float* bias, int cout, int cin, int ksize,
                     int block) {
  if (block < 1 || block > 64)
    throw std::invalid_argument("bcsr blocks hold 1..64 output channels, got " +
                                std::to_string(block));
  PackedConv p = dense_header(bias, cout, cin, ksize, block);
  const int taps = ksize * ksize;
  const int blocks = (cout + block - 1) / block;
  p.counts.resize(static_cast<size_t>(blocks) * (cin + 1));
  for (int b = 0; b < blocks; ++b) {
    const int o0 = b * block, o1 = std::min(cout, o0 + block);
    int32_t* prefix = p.counts.data() + static_cast<size_t>(b) * (cin + 1);
    for (int i = 0; i < cin; ++i) {
      prefix[i] = static_cast<int32_t>(p.index.size());
      for (int t = 0; t < taps; ++t) {
        auto at = [&](int o) { return weight_oihw[(static_cast<size_t>(o) * cin + i) * taps + t]; };
        bool kept = false;
        for (int o = o0; o < o1; ++o) kept |= at(o) != 0.0f;
        if (!kept) continue;
        p.index.push_back(i * taps + t);
        for (int lane = 0; lane < block; ++lane)
          p.weights.push_back(o0 + lane < o1 ? at(o0 + lane) : 0.0f);
      }
    }
    prefix[cin] = static_cast<int32_t>(p.index.size());
  }
  return p;
}

PackedConv pack_for(const KernelInfo& kernel, const float* weight_oihw, const float* bias,
                    int cout, int cin, int ksize, const FormatOptions& options,
                    const Int8Input& quant) {
  const std::string format = kernel.format, precision = kernel.precision;
  if (precision == "int8") {
    if (format == "dense")
      return pack_dense_int8(weight_oihw, bias, cout, cin, ksize, kernel.block, quant);
    throw std::invalid_argument("no int8 packing for weight format '" + format + "'");
  }
  if (precision == "bf16") {
    if (format == "dense" && kernel.isa == Isa::kAmx)
      return pack_dense_amx(weight_oihw, bias, cout, cin, ksize);
    if (format == "dense")
      return pack_dense_bf16(weight_oihw, bias, cout, cin, ksize, kernel.block);
    throw std::invalid_argument("no bf16 packing for weight format '" + format + "'");
  }
  if (format == "dense") return pack_dense(weight_oihw, bias, cout, cin, ksize, kernel.block);
  if (format == "csr") return pack_csr(weight_oihw, bias, cout, cin, ksize);
  if (format == "bcsr") {
    if (options.n || options.m)
      throw std::invalid_argument("the bcsr format takes no N:M options (its block is the "
                                  "kernel's, " + std::to_string(kernel.block) + ")");
    return pack_bcsr(weight_oihw, bias, cout, cin, ksize, kernel.block);
  }
  if (format == "nm") return pack_nm(weight_oihw, bias, cout, cin, ksize, options.n, options.m);
  throw std::invalid_argument("unknown weight format '" + format + "'");
}

}  // namespace sparsr
