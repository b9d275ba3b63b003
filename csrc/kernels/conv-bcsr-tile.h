// Block-sparse (bcsr) convolution, shared by the AVX2 and AVX-512 kernels;
// the packed layout is documented beside pack_bcsr in pack.cc.
//
// The B output channels of a block share one pattern of kept (input channel,
// tap) positions. A tile is SUB output channels (SUB = B, or B / 2 where the
// registers hold no more) x NV pixel vectors of one row, as in the dense
// kernel: per kept position its NV input vectors are loaded once and serve
// SUB FMAs each, so the kernel does SUB FMAs per input load instead of the one
// of the CSR and N:M kernels, and is not bound by loads. Zero positions cost
// nothing: each block walks its list of kept positions, each one a pointer
// into a per-row table (the pointer of input channel ci, tap (ky, kx) at the
// tile's first column), with no branch on a weight.
//
// Tiles and bands as in conv-dense-tile.h: a run is cut into bands of
// kBcsrBandTiles tiles and every block runs over a band before the next band
// starts, so the band's input rows stay in the caches while the blocks reread
// them.
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "simd.h"
#include "sparsr.h"

namespace sparsr {

// Tiles per band: every block runs over a band of a run before the next band
// starts. One tile (the band's inputs, 64 x 3 rows x 50 floats at 3x3 64->64,
// about L1) beat the dense kernel's 4 (measured at 640x360, 2 threads, s = 0.7:
// 3x3 64->64 1.15x, 1x1 64->64 1.8x, 1x1 256->64 1.3x faster; 2 tiles in between).
constexpr int kBcsrBandTiles = 1;

// One tile: output channels [sub, sub + SUB) of a block (n_out of them stored),
// NV vectors from interior column x of row y, stored lanes [lo, hi) from x.
// positions[e] of the block's entries [begin, end) is its entry of `table`.
template <class V, int BLOCK, int SUB, int NV>
__attribute__((noinline)) void bcsr_tile(const float* weights, const int32_t* positions,
                                         int begin, int end, const float* const* table,
                                         const float* bias, const ConvTask& t, int y, int x,
                                         int lo, int hi, int n_out, float* const* out,
                                         const float* const* residual, const float* slopes) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  T acc[SUB][NV];
#pragma GCC unroll 8
  for (int c = 0; c < SUB; ++c) {
    const T b = V::set1(bias[c]);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[c][v] = b;
  }
  const float* wp = weights + static_cast<size_t>(begin) * BLOCK;
#pragma GCC unroll 2
  for (int e = begin; e < end; ++e, wp += BLOCK) {
    const float* src = table[positions[e]] + x;
    T in[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) in[v] = V::load(src + v * W);
#pragma GCC unroll 8
    for (int c = 0; c < SUB; ++c) {
      const T wv = V::set1(wp[c]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[c][v] = V::fmadd(wv, in[v], acc[c][v]);
    }
  }
  const T zero = V::zero();
  const int64_t offset = (y + 1) * t.ld + x + 1;
  const bool stream = t.stream_out;
  for (int c = 0; c < n_out; ++c) {
    float* dst = out[c] + offset;
    const float* res = residual ? residual[c] + offset : nullptr;
    const T slope = slopes ? V::set1(slopes[c]) : zero;
    const bool whole_stream = stream && reinterpret_cast<uintptr_t>(dst) % (W * 4) == 0;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      T r = acc[c][v];
      if (slopes)
        r = negative_slope<V>(r, slope);
      else if (t.relu)
        r = V::max(r, zero);
      const int first = lo - v * W, stop = hi - v * W;  // stored lanes [first, stop)
      if (first <= 0 && stop >= W) {
        if (res) r = V::add(r, V::load(res + v * W));
        store_whole<V>(dst + v * W, r, whole_stream);
      } else if (stop > 0 && first < W) {
        const typename V::Mask lanes = V::range(first, stop);
        if (res) r = V::add(r, V::load(res + v * W, lanes));
        V::store(dst + v * W, r, lanes);
      }
    }
  }
}

// Every run, band and block of a bcsr layer; tiles of SUB channels x NV vectors.
template <class V, int K, int BLOCK, int SUB, int NV>
inline void conv_bcsr_simd(const PackedConv& w, const ConvTask& t) {
  static_assert(BLOCK % SUB == 0, "a block is whole tiles of output channels");
  constexpr int W = V::kWidth;
  constexpr int taps = K * K;
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  constexpr int band = kBcsrBandTiles * NV * W;
  const int blocks = (t.cout + BLOCK - 1) / BLOCK;
  // table[ci * taps + ky * K + kx]: input channel ci at tap (ky, kx) for
  // interior column 0 of the current row.
  std::vector<const float*> table(static_cast<size_t>(t.cin) * taps);
  int table_row = -1;
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    if (run.x1 <= run.x0) continue;
    if (run.y != table_row) {
      for (int ci = 0; ci < t.cin; ++ci)
        for (int ky = 0; ky < K; ++ky)
          for (int kx = 0; kx < K; ++kx)
            table[(static_cast<size_t>(ci) * K + ky) * K + kx] =
                t.in[ci] + (run.y + ky + shift) * t.ld + kx + shift;
      table_row = run.y;
    }
    // As the dense kernel: a 1x1 tile starts at an aligned padded column, so
    // that no load splits a cache line and whole output vectors can be
    // streamed; the lanes before the run are not stored. A 3x3 reads three
    // columns anyway, and its x = 0 tile has the kx = 0 loads aligned
    // (measured at 640x360, 64->64: aligned to the padded column it took 1.1x
    // longer at s = 0.35 and 0.7).
    const int lo = K == 1 ? (run.x0 + 1) % W : 0;
    const int x = run.x0 - lo;
    const int span = run.x1 - x;  // stored lanes of the run: [lo, span) from x
    // A tile reads cin x K rows at once, more streams than the hardware
    // prefetcher follows, so each block of a band fetches its share of the
    // channels of the input the kernel reads next into L2. 3x3: the input row
    // the next run reads that this one does not (the next row of a frame),
    // over the band's columns. 1x1: the next band of the run, or the first of
    // the next run (measured at 640x360, 2 threads, s = 0.7: 3x3 64->64 1.4x,
    // 1x1 64->64 1.5x faster).
    const bool next_run = r + 1 < t.n_runs;
    for (int b0 = 0; b0 < span; b0 += band) {
      const int b1 = span - b0 < band ? span : b0 + band;
      int64_t ahead_at = 0, ahead_n = 0;  // floats from the start of an input plane
      if (K == 3 && next_run) {
        ahead_at = (t.runs[r + 1].y + K - 1 + shift) * t.ld + x + b0;
        ahead_n = b1 - b0 + W;
      } else if (K == 1 && b1 < span) {
        ahead_at = (run.y + shift) * t.ld + x + b1 + shift;
        ahead_n = std::min(span - b1, band);
      } else if (K == 1 && next_run) {
        const Run nr = t.runs[r + 1];
        ahead_at = (nr.y + shift) * t.ld + nr.x0 + 1 - (nr.x0 + 1) % W;
        ahead_n = std::min(nr.x1 - nr.x0 + W, band);
      }
      for (int b = 0; b < blocks; ++b) {
        if (ahead_n > 0)
          for (int ci = b * t.cin / blocks; ci < (b + 1) * t.cin / blocks; ++ci)
            prefetch_l2(t.in[ci] + ahead_at, ahead_n);
        const int32_t* prefix = w.counts.data() + static_cast<size_t>(b) * (w.cin + 1);
        const int begin = prefix[0], end = prefix[t.cin];
        for (int sub = 0; sub < BLOCK; sub += SUB) {
          const int o = b * BLOCK + sub;
          if (o >= t.cout) break;
          const int n_out = t.cout - o < SUB ? t.cout - o : SUB;
          const float* weights = w.weights.data() + sub;
          const float* bias = w.bias.data() + o;
          float* const* out = t.out + o;
          const float* const* res = t.residual ? t.residual + o : nullptr;
          const float* slopes = t.slopes ? t.slopes + o : nullptr;
          int done = b0, first = b0 == 0 ? lo : 0;
          auto tile = [&](auto nv, int hi) {
            bcsr_tile<V, BLOCK, SUB, decltype(nv)::value>(
                weights, w.index.data(), begin, end, table.data(), bias, t, run.y, x + done,
                first, hi, n_out, out, res, slopes);
          };
          for (; done + NV * W <= b1; done += NV * W, first = 0)
            tile(std::integral_constant<int, NV>(), NV * W);
          const int left = b1 - done;
          if (left > 0) {
            const int nv = (left + W - 1) / W;
            switch (nv) {
#define SPARSR_BCSR_TILE(n)                                                \
  case n:                                                                  \
    if constexpr (n <= NV) tile(std::integral_constant<int, n>(), left);   \
    break;
              SPARSR_BCSR_TILE(1) SPARSR_BCSR_TILE(2) SPARSR_BCSR_TILE(3)
              SPARSR_BCSR_TILE(4) SPARSR_BCSR_TILE(5) SPARSR_BCSR_TILE(6)
              SPARSR_BCSR_TILE(7)
#undef SPARSR_BCSR_TILE
              default: break;
            }
          }
        }
      }
    }
  }
  if (t.stream_out) _mm_sfence();
}

}  // namespace sparsr
