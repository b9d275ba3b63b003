// Unstructured-sparse (CSR) convolution, shared by the AVX2 and AVX-512
// kernels; the packed layout is documented beside pack_csr in pack.cc.
//
// Pixels are vectorised and weights broadcast; registers are blocked over
// pixels only (output channels have different patterns): a tile is NV vectors
// of one row, for one output channel at a time. Zero weights cost nothing: a
// channel's nonzeros are walked through precomputed counts, with no branch on
// a weight.
//
// - Aligned loads, each serving every kx of its input row. The unit of work
//   is an entry: one (ci, ky) input row of an output channel with its kx mask.
//   Tiles start at a padded column that is a multiple of the vector width and
//   load the row's aligned vectors once; kx = 1 accumulates them straight into
//   the output, kx = 0 and kx = 2 into two spare sets that are shifted by one
//   lane into the output once per output channel (plus one scalar for the
//   column just outside the tile). Entries are sorted by mask, so each mask
//   runs straight-line code. A sparse kernel is otherwise bound by one vector
//   load per FMA (measured on the Xeon this was tuned on: about 1.2 zmm loads
//   a cycle from L1, 0.65 when they split lines, against 2 FMAs); rows with
//   two or three kx share their loads, and no load splits a cache line.
// - Input channel chunks. A tile's inputs over 64 channels (~120 KB) do not
//   fit in L1 and every output channel walks them, so input channels are
//   taken in chunks, the partial sums of up to 64 output channels waiting in
//   a scratch between chunks. A chunk's rows are brought into L1 once per tile;
//   chunks are about L1-sized, larger than a strict fit, because every chunk
//   adds seven short loops per output channel (measured on Sapphire Rapids:
//   24 KB chunks or 16-channel blocks cost 5-10 % more).
// - Memory. A full-frame layer reads and writes more than the caches hold:
//   3x3 tiles prefetch into L2 the input row the next row of tiles adds (the
//   tile reads cin x 3 rows at once, too many streams for the hardware
//   prefetcher), and outputs the caller marks ConvTask::stream_out store
//   whole vectors past the caches. Measured at 360x640, 2 threads: 3x3
//   64->64 35.0 -> 32.2 ms at s = 0.7; 1x1 256->64 24.7 -> 20.8 ms (where
//   prefetching the 256 input rows cost more than it saved, so 1x1 does not).
// - The bounds of each (output channel, chunk) are gathered per task into one
//   small array; the packed prefix counts span 7 x (cin + 1) ints per output
//   channel and would stream through L1 on every tile.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "simd.h"
#include "sparsr.h"

namespace sparsr {

// Bytes of input rows one channel chunk reads (L1 is 48 KB on current Intel cores).
constexpr int kCsrChunkBytes = 48 * 1024;
// Output channels whose partial sums live in the scratch at once.
constexpr int kCsrOutBlock = 64;

// kx masks of a 3x3 entry (bit kx), in the order pack_csr stores them.
constexpr int kCsrMasks3x3 = 7;

// Input channels per chunk for tiles of NV vectors: about kCsrChunkBytes of
// input rows, fewer when the rows would crowd a few L1 sets. Planes or rows
// 4 KB apart (ld = 1024, or a plane size that is a multiple of 4 KB) put every
// channel's row on the same sets, and a 25-channel chunk then thrashes L1
// (measured 1.4x slower); the set occupancy of the first chunk's rows decides.
//
// The chunks depend on the layer (its cin) and the geometry (ld, the distance
// between the first two input planes), never on how many input channels the
// task reads: a prefix of the inputs is summed in the same chunks, in the same
// order, as the whole layer over zero planes. The "a" and "b" SparSMSR models
// (without and with the input skip) then give identical images.
template <int K, int W, int NV>
inline int csr_chunk_channels(const PackedConv& w, const ConvTask& t) {
  constexpr int shift = K == 3 ? 0 : 1;
  constexpr int row_bytes = (K == 3 ? NV + 2 : NV) * W * 4;
  constexpr int lines_per_row = (row_bytes + 63) / 64;
  constexpr int kL1Sets = 64, kL1Ways = 12;
  int chunk = std::max(1, kCsrChunkBytes / (K * row_bytes));
  if (t.cin >= 2) {
    const auto first_plane = reinterpret_cast<intptr_t>(t.in[0]);
    const intptr_t plane = reinterpret_cast<intptr_t>(t.in[1]) - first_plane;
    while (chunk > 1) {
      const int channels = std::min(chunk, w.cin);
      int count[kL1Sets] = {};
      for (int i = 0; i < channels; ++i)
        for (int ky = 0; ky < K; ++ky) {
          const auto row = static_cast<uintptr_t>(
              first_plane + i * plane + (ky + shift) * t.ld * static_cast<intptr_t>(sizeof(float)));
          for (int l = 0; l < lines_per_row; ++l) ++count[(row / 64 + l) % kL1Sets];
        }
      const int most = *std::max_element(count, count + kL1Sets);
      const int mean = channels * K * lines_per_row / kL1Sets;
      if (most <= std::max(kL1Ways, mean + mean / 2)) break;
      chunk = chunk * 3 / 4;
    }
  }
  // Equal chunks: a short last one would pay the per-chunk overhead for little work.
  const int n_chunks = (w.cin + chunk - 1) / std::max(chunk, 1);
  return n_chunks > 1 ? (w.cin + n_chunks - 1) / n_chunks : std::max(chunk, 1);
}

// Epilogue of one output channel: the activation (ReLU or negative slope),
// + residual, stored in the lanes of each vector that lane_bits[v] selects
// (bit i: lane i).
template <class V, int NV>
inline void csr_store(const ConvTask& t, const typename V::T (&acc)[NV], int o, int64_t offset,
                      const uint32_t* lane_bits) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  constexpr uint32_t all = (1u << W) - 1u;
  const T zero = V::zero();
  float* dst = t.out[o] + offset;
  const float* res = t.residual ? t.residual[o] + offset : nullptr;
  const bool stream = t.stream_out && reinterpret_cast<uintptr_t>(dst) % (W * 4) == 0;
  const T slope = t.slopes ? V::set1(t.slopes[o]) : zero;
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    T x = acc[v];
    if (t.slopes)
      x = negative_slope<V>(x, slope);
    else if (t.relu)
      x = V::max(x, zero);
    const uint32_t bits = lane_bits[v];
    if (bits == all) {
      if (res) x = V::add(x, V::load(res + v * W));
      store_whole<V>(dst + v * W, x, stream);
    } else if (bits) {
      const typename V::Mask lanes = V::from_bits(bits);
      if (res) x = V::add(x, V::load(res + v * W, lanes));
      V::store(dst + v * W, x, lanes);
    }
  }
}

// The entries [begin, end) of one kx mask. left[v] / right[v] gather the
// kx = 0 / kx = 2 products of aligned vector v; left_edge / right_edge the
// single input column just left / right of the tile, the only lane of the
// vectors outside the tile that reaches an output.
template <class V, int NV, int MASK, int STRIDE>
inline void csr_entries(typename V::T (&acc)[NV], typename V::T (&left)[NV],
                        typename V::T (&right)[NV], typename V::Edge& left_edge,
                        typename V::Edge& right_edge, const float* weights,
                        const int32_t* index, int begin, int end, const float* const* rows,
                        int64_t left_step) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  constexpr bool k0 = MASK & 1, k1 = MASK & 2, k2 = MASK & 4;
#pragma GCC unroll 2
  for (int e = begin; e < end; ++e) {
    const float* src = rows[index[e]];
    const float* we = weights + static_cast<size_t>(e) * STRIDE;
    T w0, w1, w2;
    if constexpr (k0) w0 = V::set1(we[0]);
    if constexpr (k1) w1 = V::set1(we[STRIDE == 1 ? 0 : 1]);
    if constexpr (k2) w2 = V::set1(we[2]);
    if constexpr (k0) left_edge = V::edge_fmadd(w0, src + left_step, left_edge);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      const T x = V::load(src + v * W);
      if constexpr (k0) left[v] = V::fmadd(w0, x, left[v]);
      if constexpr (k1) acc[v] = V::fmadd(w1, x, acc[v]);
      if constexpr (k2) right[v] = V::fmadd(w2, x, right[v]);
    }
    if constexpr (k2) right_edge = V::edge_fmadd(w2, src + NV * W, right_edge);
  }
}

// One tile: NV vectors from padded column X (a multiple of W) of output row
// y, writing the lanes lane_bits selects. rows[ci * K + ky] points at
// padded column X of the input row tap ky reads. left_step is -1, or 0 when
// X = 0: the left edge then only feeds the left border column, which is
// never stored.
template <class V, int K, int NV>
inline void csr_tile(const PackedConv& w, const ConvTask& t, const float* const* rows,
                     int64_t left_step, int64_t offset, const uint32_t* lane_bits,
                     int chunk, const int32_t* bounds, float* scratch,
                     const float* const* ahead, int64_t x) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  constexpr int masks = K == 3 ? kCsrMasks3x3 : 1;
  const float* weights = w.weights.data();
  const int32_t* index = w.index.data();
  const int cin = t.cin;
  const int n_chunks = std::max(1, (cin + chunk - 1) / chunk);
  for (int ob = 0; ob < t.cout; ob += kCsrOutBlock) {
    const int oe = std::min(t.cout, ob + kCsrOutBlock);
    for (int c0 = 0;; c0 += chunk) {
      const int c1 = std::min(cin, c0 + chunk);
      const bool first = c0 == 0, last = c1 == cin;
      for (int o = ob; o < oe; ++o) {
        const int32_t* bound =
            bounds + (static_cast<size_t>(o) * n_chunks + c0 / chunk) * 2 * masks;
        // The input row the next row of tiles adds, from the vector before
        // the tile to the one after: a tile row reads cin x 3 rows at once,
        // more streams than the hardware prefetcher follows, so each output
        // channel of the first chunk fetches its share.
        if (ahead && first)
          for (int i = o * cin / t.cout; i < (o + 1) * cin / t.cout; ++i)
            prefetch_l2(ahead[i] + x - W, (NV + 2) * W);
        float* part = scratch + (o - ob) * NV * W;
        T acc[NV];
        if (first) {
          const T b = V::set1(w.bias[o]);
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) acc[v] = b;
        } else {
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) acc[v] = V::load(part + v * W);
        }
        T left[NV], right[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) left[v] = right[v] = V::zero();
        typename V::Edge left_edge = V::edge_zero(), right_edge = V::edge_zero();
        if constexpr (K == 1) {
          csr_entries<V, NV, 2, 1>(acc, left, right, left_edge, right_edge, weights, index,
                                   bound[0], bound[1], rows, 0);
        } else {
          // All bounds first: a segment's loads then wait on nothing but the
          // previous segment's loop exit.
          int begin[kCsrMasks3x3], end[kCsrMasks3x3];
#pragma GCC unroll 8
          for (int m = 0; m < kCsrMasks3x3; ++m) {
            begin[m] = bound[2 * m];
            end[m] = bound[2 * m + 1];
          }
#define SPARSR_CSR_MASK(m)                                                                   \
  csr_entries<V, NV, m, 3>(acc, left, right, left_edge, right_edge, weights, index,        \
                           begin[m - 1], end[m - 1], rows, left_step);
          SPARSR_CSR_MASK(1) SPARSR_CSR_MASK(2) SPARSR_CSR_MASK(3) SPARSR_CSR_MASK(4)
          SPARSR_CSR_MASK(5) SPARSR_CSR_MASK(6) SPARSR_CSR_MASK(7)
#undef SPARSR_CSR_MASK
          // Output column c takes kx = 0 from input column c - 1, kx = 2 from c + 1.
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) {
            const T prev = v == 0 ? V::edge_as_last(left_edge) : left[v - 1];
            const T next = v == NV - 1 ? V::edge_as_first(right_edge) : right[v + 1];
            acc[v] = V::add(acc[v], V::add(V::previous_column(prev, left[v]),
                                           V::next_column(right[v], next)));
          }
        }
        if (last) {
          csr_store<V, NV>(t, acc, o, offset, lane_bits);
        } else {
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) V::store(part + v * W, acc[v]);
        }
      }
      if (last) break;
    }
  }
}

// Every row of the task's runs: the runs of a row (consecutive in the list)
// are merged into a lane mask over aligned vectors, so that short runs in one
// vector share its work; each stretch of vectors with pixels is cut into tiles
// of at most NV vectors, widths balanced so that no narrow tile pays the
// per-entry overhead for a few pixels.
template <class V, int K, int NV>
inline void conv_csr_simd(const PackedConv& w, const ConvTask& t) {
  static_assert(NV <= 12, "tile widths are dispatched up to 12 vectors");
  constexpr int W = V::kWidth;
  constexpr int shift = K == 3 ? 0 : 1;  // padded row of the first tap
  alignas(64) float scratch[kCsrOutBlock * NV * W];
  const int n_rows = t.cin * K;
  const int chunk = csr_chunk_channels<K, W, NV>(w, t);
  std::vector<const float*> row_start(n_rows + 1), rows(n_rows + 1);
  // [begin, end) of the entries of each (output channel, chunk, kx mask).
  constexpr int masks = K == 3 ? kCsrMasks3x3 : 1;
  // At least one chunk: a task that reads no input channel still adds the bias.
  const int n_chunks = std::max(1, (t.cin + chunk - 1) / chunk);
  std::vector<int32_t> bounds(static_cast<size_t>(t.cout) * n_chunks * 2 * masks);
  for (int o = 0; o < t.cout; ++o)
    for (int c = 0; c < n_chunks; ++c)
      for (int m = 0; m < masks; ++m) {
        const int32_t* prefix =
            w.counts.data() + (static_cast<size_t>(o) * masks + m) * (w.cin + 1);
        int32_t* b = bounds.data() + ((static_cast<size_t>(o) * n_chunks + c) * masks + m) * 2;
        b[0] = prefix[c * chunk];
        b[1] = prefix[std::min(t.cin, (c + 1) * chunk)];
      }
  std::vector<const float*> ahead(t.cin);
  std::vector<uint32_t> lane_bits;
  for (size_t r = 0; r < t.n_runs;) {
    const int y = t.runs[r].y;
    // Padded columns [x0 + 1, x1 + 1) of the row's runs, as bits from column `first`.
    size_t r_end = r;
    int c_lo = 0, c_hi = 0;
    for (; r_end < t.n_runs && t.runs[r_end].y == y; ++r_end) {
      const Run run = t.runs[r_end];
      if (run.x1 <= run.x0) continue;
      c_lo = c_hi > c_lo ? std::min(c_lo, run.x0 + 1) : run.x0 + 1;
      c_hi = std::max(c_hi, run.x1 + 1);
    }
    const int first = c_lo / W * W;
    const int n_vec = c_hi > c_lo ? (c_hi - first + W - 1) / W : 0;
    lane_bits.assign(n_vec, 0u);
    for (; r < r_end; ++r) {
      for (int c = t.runs[r].x0 + 1; c < t.runs[r].x1 + 1;) {
        const int v = (c - first) / W, lane = (c - first) % W;
        const int take = std::min(t.runs[r].x1 + 1 - c, W - lane);
        lane_bits[v] |= (take == 32 ? ~0u : (1u << take) - 1u) << lane;
        c += take;
      }
    }
    if (n_vec == 0) continue;
    for (int i = 0; i < t.cin; ++i)
      for (int ky = 0; ky < K; ++ky) row_start[i * K + ky] = t.in[i] + (y + ky + shift) * t.ld;
    const int64_t out_row = (y + 1) * t.ld;
    // The input row the next row of runs reads that this one does not.
    const bool prefetch = K == 3 && r < t.n_runs;
    if (prefetch) {
      const int64_t next = (t.runs[r].y + K - 1 + shift) * t.ld;
      for (int i = 0; i < t.cin; ++i) ahead[i] = t.in[i] + next;
    }
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
        for (int e = 0; e < n_rows; ++e) rows[e] = row_start[e] + x;
        const int64_t left_step = x > 0 ? -1 : 0;
        const uint32_t* bits = lane_bits.data() + v;
        switch (nv) {
#define SPARSR_CSR_TILE(n)                                                                 \
  case n:                                                                                  \
    if constexpr (n <= NV)                                                                 \
      csr_tile<V, K, (n <= NV ? n : NV)>(w, t, rows.data(), left_step, out_row + x, bits, \
                                         chunk, bounds.data(), scratch,                    \
                                         prefetch ? ahead.data() : nullptr, x);            \
    break;
          SPARSR_CSR_TILE(1) SPARSR_CSR_TILE(2) SPARSR_CSR_TILE(3) SPARSR_CSR_TILE(4)
          SPARSR_CSR_TILE(5) SPARSR_CSR_TILE(6) SPARSR_CSR_TILE(7) SPARSR_CSR_TILE(8)
          SPARSR_CSR_TILE(9) SPARSR_CSR_TILE(10) SPARSR_CSR_TILE(11) SPARSR_CSR_TILE(12)
#undef SPARSR_CSR_TILE
          default: break;
        }
        v += nv;
      }
    }
  }
  if (t.stream_out) _mm_sfence();
}

}  // namespace sparsr
