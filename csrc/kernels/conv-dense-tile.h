// Register-tiled dense convolution, shared by the AVX2 and AVX-512 kernels.
// A tile is BLOCK output channels x NV vectors of pixels in one row; the
// weight is broadcast and the input row loaded once per (channel, tap).
#pragma once

#include <type_traits>

#include "simd.h"
#include "sparsr.h"

namespace sparsr {

// Out of line: inlined into conv_dense_simd (as GCC 12 chose once the
// epilogue had slopes), the 3x3 tile loop kept 21 more register moves and
// two more spills (measured 4 % slower, 64->64 3x3 at 360x640).
template <class V, int K, int BLOCK, int NV>
__attribute__((noinline)) void dense_tile(const float* wblock, const float* bias,
                                          const ConvTask& t, int cin_total, int y, int x, int lo,
                                          int hi, int n_out, float* const* out,
                                          const float* const* residual, const float* slopes) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  constexpr int taps = K * K;
  constexpr int shift = K == 3 ? 0 : 1;
  T acc[BLOCK][NV];
#pragma GCC unroll 16
  for (int c = 0; c < BLOCK; ++c) {
    const T b = V::set1(bias[c]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[c][v] = b;
  }
  const float* wp = wblock;
  const int64_t ld = t.ld;
  for (int i = 0; i < t.cin; ++i) {
    const float* src = t.in[i] + (y + shift) * ld + x + shift;
#pragma GCC unroll 3
    for (int ky = 0; ky < K; ++ky) {
#pragma GCC unroll 3
      for (int kx = 0; kx < K; ++kx) {
        T in[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) in[v] = V::load(src + ky * ld + kx + v * W);
#pragma GCC unroll 16
        for (int c = 0; c < BLOCK; ++c) {
          const T wv = V::set1(wp[c]);
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[c][v] = V::fmadd(wv, in[v], acc[c][v]);
        }
        wp += BLOCK;
      }
    }
  }
  (void)cin_total;
  (void)taps;
  const T zero = V::zero();
  const int64_t offset = (y + 1) * ld + x + 1;
  for (int c = 0; c < n_out; ++c) {
    float* dst = out[c] + offset;
    const float* res = residual ? residual[c] + offset : nullptr;
    const T slope = slopes ? V::set1(slopes[c]) : zero;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      T r = acc[c][v];
      if (slopes)
        r = negative_slope<V>(r, slope);
      else if (t.relu)
        r = V::max(r, zero);
      const int first = lo - v * W, end = hi - v * W;  // stored lanes [first, end)
      if (first <= 0 && end >= W) {
        if (res) r = V::add(r, V::load(res + v * W));
        V::store(dst + v * W, r);
      } else if (end > 0 && first < W) {
        const typename V::Mask lanes = V::range(first, end);
        if (res) r = V::add(r, V::load(res + v * W, lanes));
        V::store(dst + v * W, r, lanes);
      }
    }
  }
}

// Tiles per band: a run is cut into bands of this many tiles, and every
// output block runs over one band before the next band starts, so that the
// band's input rows (64 channels x 3 rows x 192 pixels: 150 KB) stay in L2
// while the blocks reread them. Whole rows per block reread up to 1 MB a row
// (measured on 64->64 3x3, 1 thread: 551 -> 514 ns per pixel at 640x360,
// 662 -> 570 at 960x540, 702 -> 558 at 1280x720; 2 and 8 tiles are close).
constexpr int kDenseBandTiles = 4;

// Runs the tiles of every run and every output block of a dense layer.
template <class V, int K, int BLOCK, int NV>
inline void conv_dense_simd(const PackedConv& w, const ConvTask& t) {
  constexpr int W = V::kWidth;
  constexpr int taps = K * K;
  constexpr int band = kDenseBandTiles * NV * W;
  const size_t block_stride = static_cast<size_t>(w.cin) * taps * BLOCK;
  const int blocks = (t.cout + BLOCK - 1) / BLOCK;
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    // A 1x1 tile starts at an aligned padded column (interior x + 1), so that
    // no load splits a cache line (measured: 1.2x faster at 256->64); the
    // lanes before the run are not stored. A 3x3 reads three columns
    // anyway, and its x = 0 tile already has the kx = 0 loads aligned.
    int x = run.x0, lo = 0;
    if (K == 1) {
      lo = (run.x0 + 1) % W;
      x = run.x0 - lo;
    }
    const int end = run.x1 - x;  // stored lanes of the run: [lo, end) from x
    for (int b0 = 0; b0 < end; b0 += band) {
      const int b1 = end - b0 < band ? end : b0 + band;
      for (int b = 0; b < blocks; ++b) {
        const float* wb = w.weights.data() + b * block_stride;
        const float* bias = w.bias.data() + b * BLOCK;
        const int n_out = t.cout - b * BLOCK < BLOCK ? t.cout - b * BLOCK : BLOCK;
        float* const* out = t.out + b * BLOCK;
        const float* const* res = t.residual ? t.residual + b * BLOCK : nullptr;
        const float* slopes = t.slopes ? t.slopes + b * BLOCK : nullptr;
        int done = b0, first = b0 == 0 ? lo : 0;
        auto tile = [&](auto nv, int hi) {
          dense_tile<V, K, BLOCK, decltype(nv)::value>(wb, bias, t, w.cin, run.y, x + done, first,
                                                       hi, n_out, out, res, slopes);
        };
        for (; done + NV * W <= b1; done += NV * W, first = 0)
          tile(std::integral_constant<int, NV>(), NV * W);
        const int left = b1 - done;
        if (left > 2 * W && NV >= 3)
          tile(std::integral_constant<int, (NV >= 3 ? 3 : NV)>(), left);
        else if (left > W && NV >= 2)
          tile(std::integral_constant<int, (NV >= 2 ? 2 : NV)>(), left);
        else if (left > 0)
          tile(std::integral_constant<int, 1>(), left);
      }
    }
  }
}

}  // namespace sparsr
