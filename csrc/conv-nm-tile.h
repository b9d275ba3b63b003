// N:M structured-sparse convolution, shared by the AVX2 and AVX-512 kernels.
//
// Every output channel keeps the same number of weights (cin * taps * N / M),
// so a tile is one output channel x NV vectors of pixels in one row: the kept
// weight is broadcast and its input row loaded straight from a small table of
// row pointers, one per (input channel, tap), rebuilt for every tile. The
// packed index of a weight is its entry in that table (pack_nm in pack.cc), so
// the inner loop has no gather and no per-row count: N weights per group and
// tap, unrolled when N is a compile-time constant.
//
// Input channels are walked in chunks of whole groups whose rows of the tile
// fit in L1 (every output channel reads nearly all of them); partial sums of
// all output channels wait in a small scratch buffer between chunks.
#pragma once

#include <algorithm>
#include <vector>

#include "sparsr.h"

namespace sparsr {

// Read in place of the rows of channels >= task.cin: a group that straddles
// the cin prefix keeps its weights, but they multiply zeros.
alignas(64) inline const float kNmZeroRow[512] = {};

// Bytes of L1 the input rows of one chunk may take.
constexpr int kNmChunkBytes = 24 * 1024;

struct NmPlan {
  const PackedConv* w;
  const ConvTask* t;
  const float** table;  // groups * M * taps row pointers
  float* scratch;       // cout x tile partial sums (several chunks only)
  int scratch_stride;   // floats per output channel in scratch
  int groups;           // groups read: ceil(task.cin / M)
  int chunk_groups;     // groups per chunk
};

template <class V, int K, int NV, int N, int M>
inline void nm_tile(const NmPlan& p, int y, int x, int n_pixels) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  constexpr int taps = K * K;
  constexpr int shift = K == 3 ? 0 : 1;
  const PackedConv& w = *p.w;
  const ConvTask& t = *p.t;
  const int64_t ld = t.ld;
  const int m = M > 0 ? M : w.m;
  const int per_group = taps * (N > 0 ? N : w.n);
  const size_t per_cout = static_cast<size_t>(w.cin / m) * per_group;
  const float** table = p.table;
  const T zero = V::zero();
  for (int g0 = 0; g0 < p.groups; g0 += p.chunk_groups) {
    const int g1 = std::min(p.groups, g0 + p.chunk_groups);
    for (int ci = g0 * m; ci < g1 * m; ++ci) {
      const float** row = table + ci * taps;
      if (ci < t.cin) {
        const float* base = t.in[ci] + (y + shift) * ld + x + shift;
        for (int ky = 0; ky < K; ++ky)
          for (int kx = 0; kx < K; ++kx) row[ky * K + kx] = base + ky * ld + kx;
      } else {
        for (int tap = 0; tap < taps; ++tap) row[tap] = kNmZeroRow;
      }
    }
    const bool first = g0 == 0, last = g1 == p.groups;
    for (int o = 0; o < t.cout; ++o) {
      T acc[NV];
      float* part = p.scratch + static_cast<size_t>(o) * p.scratch_stride;
      if (first) {
        const T b = V::set1(w.bias[o]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[v] = b;
      } else {
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[v] = V::load(part + v * W);
      }
      const float* wp = w.weights.data() + o * per_cout + static_cast<size_t>(g0) * per_group;
      const int32_t* ip = w.index.data() + o * per_cout + static_cast<size_t>(g0) * per_group;
      if constexpr (N > 0) {
        for (int g = g0; g < g1; ++g) {
#pragma GCC unroll 72
          for (int e = 0; e < taps * N; ++e) {
            const float* src = table[ip[e]];
            const T wv = V::set1(wp[e]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) acc[v] = V::fmadd(wv, V::load(src + v * W), acc[v]);
          }
          wp += taps * N;
          ip += taps * N;
        }
      } else {
        const int entries = (g1 - g0) * per_group;
#pragma GCC unroll 4
        for (int e = 0; e < entries; ++e) {
          const float* src = table[ip[e]];
          const T wv = V::set1(wp[e]);
#pragma GCC unroll 8
          for (int v = 0; v < NV; ++v) acc[v] = V::fmadd(wv, V::load(src + v * W), acc[v]);
        }
      }
      if (!last) {
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) V::store(part + v * W, acc[v]);
        continue;
      }
      const int64_t offset = (y + 1) * ld + x + 1;
      float* dst = t.out[o] + offset;
      const float* res = t.residual ? t.residual[o] + offset : nullptr;
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        T r = acc[v];
        if (t.relu) r = V::max(r, zero);
        const int left = n_pixels - v * W;
        if (left >= W) {
          if (res) r = V::add(r, V::load(res + v * W));
          V::store(dst + v * W, r);
        } else if (left > 0) {
          if (res) r = V::add(r, V::load_first(res + v * W, left));
          V::store_first(dst + v * W, r, left);
        }
      }
    }
  }
}

// Calls the tile of nv vectors (1 <= nv <= NVMAX) with nv fixed at compile time.
template <class V, int K, int NVMAX, int N, int M, int NV = 1>
inline void nm_tile_of(int nv, const NmPlan& p, int y, int x, int n_pixels) {
  if constexpr (NV < NVMAX) {
    if (nv != NV) return nm_tile_of<V, K, NVMAX, N, M, NV + 1>(nv, p, y, x, n_pixels);
  }
  nm_tile<V, K, NV, N, M>(p, y, x, n_pixels);
}

// Runs every run of the task (N, M = 0: taken from the packed weights): a run of nvec vectors is cut into the fewest
// tiles of at most NVMAX vectors, of near-equal widths.
template <class V, int K, int NVMAX, int N, int M>
void conv_nm_simd(const PackedConv& w, const ConvTask& t) {
  constexpr int W = V::kWidth;
  constexpr int taps = K * K;
  NmPlan p;
  p.w = &w;
  p.t = &t;
  p.groups = (t.cin + w.m - 1) / w.m;
  if (p.groups == 0) return;
  const int row_bytes = ((NVMAX * W + K - 1) * 4 / 64 + 2) * 64;
  p.chunk_groups = std::max(1, kNmChunkBytes / (K * row_bytes) / w.m);
  std::vector<const float*> table(static_cast<size_t>(p.groups) * w.m * taps);
  p.table = table.data();
  std::vector<float> scratch;
  p.scratch_stride = NVMAX * W;
  if (p.chunk_groups < p.groups) scratch.resize(static_cast<size_t>(t.cout) * p.scratch_stride);
  p.scratch = scratch.data();
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    const int nvec = (run.x1 - run.x0 + W - 1) / W;
    if (nvec <= 0) continue;
    const int tiles = (nvec + NVMAX - 1) / NVMAX;
    int x = run.x0;
    for (int i = 0; i < tiles; ++i) {
      const int nv = nvec / tiles + (i < nvec % tiles ? 1 : 0);
      const int n_pixels = std::min(nv * W, run.x1 - x);
      nm_tile_of<V, K, NVMAX, N, M>(nv, p, run.y, x, n_pixels);
      x += n_pixels;
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
