// N:M structured-sparse convolution, shared by the AVX2 and AVX-512 kernels.
//
// Every output channel keeps the same number of weights (cin * k^2 * N / M),
// so a tile is one output channel x NV pixel vectors of one row: each kept
// weight is broadcast and multiplied with a row of input read through a small
// table of row pointers, one per (input channel, ky), rebuilt for every tile.
// The packed index of a weight is its entry in that table (pack_nm in
// pack.cc), so the inner loop has no gather and no per-row count: N weights
// per group and ky, unrolled when N is a compile-time constant.
//
// All input loads are aligned to the vector width (on AVX-512 a load that
// straddles two cache lines costs about two): the tile covers aligned output
// columns, the taps of one kx are summed over the aligned input columns, and
// that sum is shifted by one column (kx = 0, 2) once per output channel and
// tile, instead of loading every input row at three offsets.
//
// Input channels are walked in chunks of whole groups whose tile rows fit in
// L1 (every output channel reads nearly all of them); partial sums of all
// output channels wait in a small scratch buffer between chunks.
#pragma once

#include <algorithm>
#include <vector>

#include "conv-nm-simd.h"
#include "sparsr.h"

namespace sparsr {

// Read in place of the rows of channels >= task.cin: a group that straddles
// the cin prefix keeps its weights, but they multiply zeros. Row pointers
// point at its middle, kernels read from one vector before to 28 after.
alignas(64) inline const float kNmZeroRow[512] = {};
constexpr int kNmZeroRowOffset = 32;

// Bytes of L1 the input rows of one chunk may take.
#ifndef SPARSR_NM_CHUNK_BYTES
#define SPARSR_NM_CHUNK_BYTES (32 * 1024)
#endif
constexpr int kNmChunkBytes = SPARSR_NM_CHUNK_BYTES;

struct NmPlan {
  const PackedConv* w;
  const ConvTask* t;
  const float** rows;   // per input row (ci * K + ky): its first tile column
  float* scratch;       // cout x tile partial sums (several chunks only)
  int scratch_stride;   // floats per output channel in scratch
  int groups;           // groups read: ceil(task.cin / M)
  int chunk_groups;     // groups per chunk
};

// acc[v] += w * row[v * W] for the kept weights of `groups` groups of one kx
// (K * N entries per group). With LEFT, also left += w * row[-W], the lanes of
// left_mask only.
template <class V, int K, int NA, int N, bool LEFT = false>
inline void nm_block(typename V::T* acc, typename V::T* left, typename NmVec<V>::Mask left_mask,
                     const float* const* rows, const float* wp, const int32_t* ip, int groups,
                     int n) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  auto entry = [&](int e) {
    const float* src = rows[ip[e]];
    const T wv = V::set1(wp[e]);
    if constexpr (LEFT) *left = V::fmadd(wv, NmVec<V>::load(src - W, left_mask), *left);
#pragma GCC unroll 16
    for (int v = 0; v < NA; ++v) acc[v] = V::fmadd(wv, V::load(src + v * W), acc[v]);
  };
  if constexpr (N > 0) {
    for (int g = 0; g < groups; ++g) {
#pragma GCC unroll 96
      for (int e = 0; e < K * N; ++e) entry(e);
      wp += K * N;
      ip += K * N;
    }
  } else {
    const int entries = groups * K * n;
#pragma GCC unroll 4
    for (int e = 0; e < entries; ++e) entry(e);
  }
}

// One tile: output columns [ca, ca + NV * W) of row y (ca aligned), stored
// only within [col_lo, col_hi); columns are padded-plane columns.
template <class V, int K, int NV, int N, int M>
inline void nm_tile(const NmPlan& p, int y, int ca, int col_lo, int col_hi) {
  using T = typename V::T;
  using Ops = NmVec<V>;
  using Mask = typename Ops::Mask;
  constexpr int W = V::kWidth;
  const PackedConv& w = *p.w;
  const ConvTask& t = *p.t;
  const int64_t ld = t.ld;
  const int m = M > 0 ? M : w.m;
  const int n = N > 0 ? N : w.n;
  const int per_group = K * n;
  const size_t per_kx = static_cast<size_t>(w.cin / m) * per_group;
  const size_t per_cout = K * per_kx;
  const float* zero_row = kNmZeroRow + kNmZeroRowOffset;
  const Mask left_mask = Ops::all(ca > 0);  // column ca - 1 exists
  Mask store_mask[NV];
  for (int v = 0; v < NV; ++v)
    store_mask[v] = Ops::range(col_lo - (ca + v * W), col_hi - (ca + v * W));
  const T zero = V::zero();
  for (int g0 = 0; g0 < p.groups; g0 += p.chunk_groups) {
    const int g1 = std::min(p.groups, g0 + p.chunk_groups);
    for (int ci = g0 * m; ci < g1 * m; ++ci)
      for (int ky = 0; ky < K; ++ky)
        p.rows[ci * K + ky] =
            ci < t.cin ? t.in[ci] + (y + ky + (K == 1 ? 1 : 0)) * ld + ca : zero_row;
    const bool first = g0 == 0, last = g1 == p.groups;
    for (int o = 0; o < t.cout; ++o) {
      T acc[NV];
      float* part = p.scratch + static_cast<size_t>(o) * p.scratch_stride;
      if (first) {
        const T b = V::set1(w.bias[o]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[v] = b;
      } else {
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[v] = V::load(part + v * W);
      }
      const size_t at = o * per_cout + static_cast<size_t>(g0) * per_group;
      const float* wo = w.weights.data() + at;
      const int32_t* io = w.index.data() + at;
      if constexpr (K == 1) {
        nm_block<V, K, NV, N>(acc, nullptr, left_mask, p.rows, wo, io, g1 - g0, n);
      } else {
        // kx = 1 reads the output's own columns.
        nm_block<V, K, NV, N>(acc, nullptr, left_mask, p.rows, wo + per_kx, io + per_kx, g1 - g0,
                              n);
        // kx = 2 reads one column to the right: sum NV + 1 vectors, shift left.
        {
          T sum[NV + 1];
#pragma GCC unroll 16
          for (int v = 0; v <= NV; ++v) sum[v] = zero;
          nm_block<V, K, NV + 1, N>(sum, nullptr, left_mask, p.rows, wo + 2 * per_kx,
                                    io + 2 * per_kx, g1 - g0, n);
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) acc[v] = V::add(acc[v], Ops::next_column(sum[v], sum[v + 1]));
        }
        // kx = 0 reads one column to the left: the vector before the tile too.
        {
          T sum[NV], left = zero;
#pragma GCC unroll 16
          for (int v = 0; v < NV; ++v) sum[v] = zero;
          nm_block<V, K, NV, N, true>(sum, &left, left_mask, p.rows, wo, io, g1 - g0, n);
          acc[0] = V::add(acc[0], Ops::previous_column(left, sum[0]));
#pragma GCC unroll 16
          for (int v = 1; v < NV; ++v)
            acc[v] = V::add(acc[v], Ops::previous_column(sum[v - 1], sum[v]));
        }
      }
      if (!last) {
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) V::store(part + v * W, acc[v]);
        continue;
      }
      const int64_t offset = (y + 1) * ld + ca;
      float* dst = t.out[o] + offset;
      const float* res = t.residual ? t.residual[o] + offset : nullptr;
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        T r = acc[v];
        if (t.relu) r = V::max(r, zero);
        if (Ops::full(store_mask[v])) {
          if (res) r = V::add(r, V::load(res + v * W));
          V::store(dst + v * W, r);
        } else if (!Ops::none(store_mask[v])) {
          if (res) r = V::add(r, Ops::load(res + v * W, store_mask[v]));
          Ops::store(dst + v * W, r, store_mask[v]);
        }
      }
    }
  }
}

// Calls the tile of nv vectors (1 <= nv <= NVMAX) with nv fixed at compile time.
template <class V, int K, int NVMAX, int N, int M, int NV = 1>
inline void nm_tile_of(int nv, const NmPlan& p, int y, int ca, int col_lo, int col_hi) {
  if constexpr (NV < NVMAX) {
    if (nv != NV) return nm_tile_of<V, K, NVMAX, N, M, NV + 1>(nv, p, y, ca, col_lo, col_hi);
  }
  nm_tile<V, K, NV, N, M>(p, y, ca, col_lo, col_hi);
}

// Runs every run of the task (N, M = 0: taken from the packed weights). A run
// covers the aligned vectors of its output columns; they are cut into the
// fewest tiles of at most NVMAX vectors, of near-equal widths.
template <class V, int K, int NVMAX, int N, int M>
void conv_nm_simd(const PackedConv& w, const ConvTask& t) {
  constexpr int W = V::kWidth;
  NmPlan p;
  p.w = &w;
  p.t = &t;
  p.groups = (t.cin + w.m - 1) / w.m;
  if (p.groups == 0) return;
  // Cache lines of one input row of a full tile: kx = 0 and 2 read a vector more.
  const int row_bytes = (NVMAX + (K == 3 ? 2 : 0)) * 64;
  p.chunk_groups = std::max(1, kNmChunkBytes / (K * row_bytes) / w.m);
  std::vector<const float*> rows(static_cast<size_t>(p.groups) * w.m * K);
  p.rows = rows.data();
  std::vector<float> scratch;
  p.scratch_stride = NVMAX * W;
  if (p.chunk_groups < p.groups) scratch.resize(static_cast<size_t>(t.cout) * p.scratch_stride);
  p.scratch = scratch.data();
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    if (run.x1 <= run.x0) continue;
    const int col_lo = run.x0 + 1, col_hi = run.x1 + 1;  // interior x is column x + 1
    int ca = col_lo / W * W;
    const int nvec = (col_hi - ca + W - 1) / W;
    const int tiles = (nvec + NVMAX - 1) / NVMAX;
    for (int i = 0; i < tiles; ++i) {
      const int nv = nvec / tiles + (i < nvec % tiles ? 1 : 0);
      nm_tile_of<V, K, NVMAX, N, M>(nv, p, run.y, ca, col_lo, col_hi);
      ca += nv * W;
    }
  }
}

// The kernel for the packed pattern: unrolled for the patterns of
// nm-patterns.inc, generic otherwise.
template <class V, int K, int NVMAX>
void conv_nm_dispatch(const PackedConv& w, const ConvTask& t) {
#define SPARSR_NM_PATTERN(kept, group) \
  if (w.n == kept && w.m == group) return conv_nm_simd<V, K, NVMAX, kept, group>(w, t);
#include "nm-patterns.inc"
#undef SPARSR_NM_PATTERN
  conv_nm_simd<V, K, NVMAX, 0, 0>(w, t);
}

}  // namespace sparsr
