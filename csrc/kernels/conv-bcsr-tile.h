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
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "simd.h"
#include "sparsr.h"

namespace sparsr {

// One tile: output channels [0, SUB) of `out` (n_out of them stored), NV
// vectors from interior column x of row y, storing the lanes lane_bits[v]
// selects (bit i: lane i of vector v), over the block's entries [begin, end)
// (positions[e]: the entry's pointer in `table`).
template <class V, int BLOCK, int SUB, int NV>
__attribute__((noinline)) void bcsr_tile(const float* weights, const int32_t* positions,
                                         int begin, int end, const float* const* table,
                                         const float* bias, const ConvTask& t, int y, int x,
                                         const uint32_t* lane_bits, int n_out, float* const* out,
                                         const float* const* residual, const float* slopes) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  constexpr uint32_t all = (1u << W) - 1u;
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
  for (int c = 0; c < n_out; ++c) {
    float* dst = out[c] + offset;
    const float* res = residual ? residual[c] + offset : nullptr;
    const T slope = slopes ? V::set1(slopes[c]) : zero;
    const bool stream = t.stream_out && reinterpret_cast<uintptr_t>(dst) % (W * 4) == 0;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      T r = acc[c][v];
      if (slopes)
        r = negative_slope<V>(r, slope);
      else if (t.relu)
        r = V::max(r, zero);
      const uint32_t bits = lane_bits[v];
      if (bits == all) {
        if (res) r = V::add(r, V::load(res + v * W));
        store_whole<V>(dst + v * W, r, stream);
      } else if (bits) {
        const typename V::Mask lanes = V::from_bits(bits);
        if (res) r = V::add(r, V::load(res + v * W, lanes));
        V::store(dst + v * W, r, lanes);
      }
    }
  }
}

// Every row of a bcsr layer's runs, tile by tile and, within a tile, block by
// block (the tile's inputs, 64 x 3 rows x 50 floats at 3x3 64->64, about L1,
// stay in the caches while the blocks reread them: measured at 640x360, 2
// threads, s = 0.7, against every block running over 4 tiles as the dense
// kernel does: 3x3 64->64 1.15x, 1x1 64->64 1.8x, 1x1 256->64 1.3x faster).
// As in the CSR kernel, the runs of a row (consecutive in the list) are merged
// into lane masks over aligned vectors, so that short runs in one vector share
// its work, and each stretch of vectors with pixels is cut into tiles of at
// most NV vectors, widths balanced.
template <class V, int K, int BLOCK, int SUB, int NV>
inline void conv_bcsr_simd(const PackedConv& w, const ConvTask& t) {
  static_assert(BLOCK % SUB == 0, "a block is whole tiles of output channels");
  static_assert(NV <= 8, "tile widths are dispatched up to 8 vectors");
  constexpr int W = V::kWidth;
  constexpr int taps = K * K;
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  // Vectors start at interior columns x with (x + align) % W == 0. A 1x1
  // aligns to the padded column (x + 1), as the dense kernel: no load splits a
  // cache line and whole output vectors can be streamed. A 3x3 reads three
  // columns anyway and aligns its kx = 0 loads (measured at 640x360, 64->64:
  // aligned to the padded column it took 1.1x longer at s = 0.35 and 0.7).
  constexpr int align = K == 1 ? 1 : 0;
  const int blocks = (t.cout + BLOCK - 1) / BLOCK;
  // table[ci * taps + ky * K + kx]: input channel ci at tap (ky, kx) for
  // interior column 0 of the current row.
  std::vector<const float*> table(static_cast<size_t>(t.cin) * taps);
  std::vector<uint32_t> lane_bits;
  for (size_t r = 0; r < t.n_runs;) {
    const int y = t.runs[r].y;
    // Interior columns [c_lo, c_hi) of the row's runs, as lane bits of the
    // vectors from interior column `first`.
    size_t r_end = r;
    int c_lo = 0, c_hi = 0;
    for (; r_end < t.n_runs && t.runs[r_end].y == y; ++r_end) {
      const Run run = t.runs[r_end];
      if (run.x1 <= run.x0) continue;
      c_lo = c_hi > c_lo ? std::min(c_lo, run.x0) : run.x0;
      c_hi = std::max(c_hi, run.x1);
    }
    const int first = (c_lo + align) / W * W - align;
    const int n_vec = c_hi > c_lo ? (c_hi - first + W - 1) / W : 0;
    lane_bits.assign(n_vec, 0u);
    for (; r < r_end; ++r)
      for (int c = t.runs[r].x0; c < t.runs[r].x1;) {
        const int v = (c - first) / W, lane = (c - first) % W;
        const int take = std::min(t.runs[r].x1 - c, W - lane);
        lane_bits[v] |= (take == 32 ? ~0u : (1u << take) - 1u) << lane;
        c += take;
      }
    if (n_vec == 0) continue;
    for (int ci = 0; ci < t.cin; ++ci)
      for (int ky = 0; ky < K; ++ky)
        for (int kx = 0; kx < K; ++kx)
          table[(static_cast<size_t>(ci) * K + ky) * K + kx] =
              t.in[ci] + (y + ky + shift) * t.ld + kx + shift;
    // A tile reads cin x K rows at once, more streams than the hardware
    // prefetcher follows, so each block of a tile fetches its share of the
    // channels of the input the kernel reads next into L2. 3x3: the input row
    // the next row of runs reads that this one does not (the next row of a
    // frame), over the tile's columns; 1x1: the next tile of the row, or the
    // first vectors of the next row (measured at 640x360, 2 threads, s = 0.7:
    // 3x3 64->64 1.4x, 1x1 64->64 1.5x faster).
    const bool next_row = r < t.n_runs;
    const int64_t next_row_at = next_row ? (t.runs[r].y + (K == 3 ? 2 : 1)) * t.ld : 0;
    for (int v = 0; v < n_vec;) {
      if (!lane_bits[v]) {
        ++v;
        continue;
      }
      int stretch = 0;
      while (v + stretch < n_vec && lane_bits[v + stretch]) ++stretch;
      const int n_tiles = (stretch + NV - 1) / NV;
      for (int i = 0; i < n_tiles; ++i) {
        const int nv = stretch * (i + 1) / n_tiles - stretch * i / n_tiles;
        const int x = first + v * W;
        int64_t ahead_at = 0, ahead_n = 0;  // floats from the start of an input plane
        if (K == 3 && next_row) {
          ahead_at = next_row_at + x;
          ahead_n = (nv + 1) * W;
        } else if (K == 1 && v + nv < n_vec) {
          ahead_at = (y + 1) * t.ld + x + nv * W + 1;
          ahead_n = std::min(n_vec - v - nv, NV) * W;
        } else if (K == 1 && next_row) {
          const int nx = t.runs[r].x0;
          ahead_at = next_row_at + (nx + align) / W * W;
          ahead_n = NV * W;
        }
        const uint32_t* bits = lane_bits.data() + v;
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
            const float* const* res = t.residual ? t.residual + o : nullptr;
            const float* slopes = t.slopes ? t.slopes + o : nullptr;
            auto tile = [&](auto n) {
              bcsr_tile<V, BLOCK, SUB, decltype(n)::value>(
                  w.weights.data() + sub, w.index.data(), begin, end, table.data(),
                  w.bias.data() + o, t, y, x, bits, n_out, t.out + o, res, slopes);
            };
            switch (nv) {
#define SPARSR_BCSR_TILE(n)                                        \
  case n:                                                          \
    if constexpr (n <= NV) tile(std::integral_constant<int, n>()); \
    break;
              SPARSR_BCSR_TILE(1) SPARSR_BCSR_TILE(2) SPARSR_BCSR_TILE(3)
              SPARSR_BCSR_TILE(4) SPARSR_BCSR_TILE(5) SPARSR_BCSR_TILE(6)
              SPARSR_BCSR_TILE(7) SPARSR_BCSR_TILE(8)
#undef SPARSR_BCSR_TILE
              default: break;
            }
          }
        }
        v += nv;
      }
    }
  }
  if (t.stream_out) _mm_sfence();
}

}  // namespace sparsr
