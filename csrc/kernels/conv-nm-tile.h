// N:M structured-sparse convolution, shared by the AVX2 and AVX-512 kernels.
//
// A tile is one output channel x NV pixel vectors of one row. Each kept weight
// is broadcast and multiplied with a row of input pixels read through a small
// table of row pointers, one per (input channel, ky), rebuilt for every tile;
// the packed index of a weight is its entry in that table (pack_nm in
// pack.cc), so the inner loop has no gather.
//
// Sparse kernels load about one input vector per FMA, and that load, not the
// FMA, bounds them. So:
// - every input load is aligned to the vector width (a load straddling two
//   cache lines costs about two): tiles cover aligned output columns, and for
//   3x3 the taps at kx = 0 and 2 are summed over the aligned input columns and
//   shifted by one column once per output channel and tile;
// - 3x3 weights are stored by input row with the set of kx they are kept at,
//   and a row is loaded once for all of them (at 2:4 a kept row holds 1.7
//   weights on average): one loop per kx set, templated on it;
// - 1x1 has a fixed count of N weights per group of M channels, unrolled for
//   the patterns of nm-patterns.inc.
// Input channels are walked in chunks whose tile rows fit in L1 (every output
// channel reads nearly all of them); partial sums of all output channels wait
// in a small scratch buffer between chunks.
#pragma once

#include <algorithm>
#include <vector>

#include "simd.h"
#include "sparsr.h"

namespace sparsr {

// Read in place of the rows of channels >= task.cin: weights of a group that
// straddles the cin prefix multiply zeros. Row pointers point at its middle,
// kernels read from one vector before to 28 after.
alignas(64) inline const float kNmZeroRow[512] = {};
constexpr int kNmZeroRowOffset = 32;

// Bytes of L1 the 1x1 input rows of one chunk may take.
constexpr int kNm1x1ChunkBytes = 32 * 1024;

struct NmPlan {
  const PackedConv* w;
  const ConvTask* t;
  const float** rows;   // per input row (ci * K + ky): its first tile column
  float* scratch;       // cout x tile partial sums (several chunks only)
  int scratch_stride;   // floats per output channel in scratch
  int channels;         // input channels read, rounded up to whole chunks
  int chunk_channels;   // input channels per chunk
};

// Points the table at the tile's rows of channels [c0, c1).
template <int K>
inline void nm_fill_rows(const NmPlan& p, int c0, int c1, int y, int ca) {
  const ConvTask& t = *p.t;
  const float* zero_row = kNmZeroRow + kNmZeroRowOffset;
  for (int ci = c0; ci < c1; ++ci)
    for (int ky = 0; ky < K; ++ky)
      p.rows[ci * K + ky] =
          ci < t.cin ? t.in[ci] + (y + ky + (K == 1 ? 1 : 0)) * t.ld + ca : zero_row;
}

// Stores the partial sum, or the result (activation: ReLU or negative slope,
// then + residual) within the lanes of store_mask.
template <class V, int NV>
inline void nm_store(const NmPlan& p, int o, int y, int ca, typename V::T* acc, bool last,
                     const typename V::Mask* store_mask) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  const ConvTask& t = *p.t;
  if (!last) {
    float* part = p.scratch + static_cast<size_t>(o) * p.scratch_stride;
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) V::store(part + v * W, acc[v]);
    return;
  }
  const int64_t offset = (y + 1) * t.ld + ca;
  float* dst = t.out[o] + offset;
  const float* res = t.residual ? t.residual[o] + offset : nullptr;
  const T zero = V::zero();
  const bool stream = t.stream_out && reinterpret_cast<uintptr_t>(dst) % (W * 4) == 0;
  const T slope = t.slopes ? V::set1(t.slopes[o]) : zero;
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    T r = acc[v];
    if (t.slopes)
      r = negative_slope<V>(r, slope);
    else if (t.relu)
      r = V::max(r, zero);
    if (V::full(store_mask[v])) {
      if (res) r = V::add(r, V::load(res + v * W));
      store_whole<V>(dst + v * W, r, stream);
    } else if (!V::none(store_mask[v])) {
      if (res) r = V::add(r, V::load(res + v * W, store_mask[v]));
      V::store(dst + v * W, r, store_mask[v]);
    }
  }
}

template <class V, int NV>
inline void nm_start(const NmPlan& p, int o, typename V::T* acc, bool first) {
  constexpr int W = V::kWidth;
  if (first) {
    const typename V::T b = V::set1(p.w->bias[o]);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] = b;
  } else {
    const float* part = p.scratch + static_cast<size_t>(o) * p.scratch_stride;
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] = V::load(part + v * W);
  }
}

// ---------------------------------------------------------------- 3x3

// The entries of one kx set S (bit kx): each loads its row once and adds it,
// times its weight at kx, to out (kx = 1), to the sum shifted right (kx = 0,
// plus the vector before the tile, lanes of left_mask only) or to the sum
// shifted left (kx = 2, plus the vector after the tile).
template <class V, int NV, int S>
inline void nm_rows_of_set(typename V::T* out, typename V::T* sum0, typename V::T& before,
                           typename V::T* sum2, typename V::Mask left_mask,
                           const float* const* rows, const float*& wp, const int32_t*& ip,
                           int entries) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  constexpr bool k0 = S & 1, k1 = S & 2, k2 = S & 4;
  constexpr int per_entry = k0 + k1 + k2;
  for (int e = 0; e < entries; ++e) {
    const float* src = rows[ip[e]];
    const float* we = wp + e * per_entry;
    T w0, w1, w2;
    if constexpr (k0) w0 = V::set1(we[0]);
    if constexpr (k1) w1 = V::set1(we[k0]);
    if constexpr (k2) w2 = V::set1(we[k0 + k1]);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      T x = V::load(src + v * W);
      // One load for all the FMAs of the row: keep the compiler from folding
      // it into each of them (it does, under -mtune=generic).
      if constexpr (per_entry > 1) __asm__("" : "+v"(x));
      if constexpr (k1) out[v] = V::fmadd(w1, x, out[v]);
      if constexpr (k0) sum0[v] = V::fmadd(w0, x, sum0[v]);
      if constexpr (k2) sum2[v] = V::fmadd(w2, x, sum2[v]);
    }
    if constexpr (k0) before = V::fmadd(w0, V::load(src - W, left_mask), before);
    if constexpr (k2) sum2[NV] = V::fmadd(w2, V::load(src + NV * W), sum2[NV]);
  }
  wp += entries * per_entry;
  ip += entries;
}

// One tile: output columns [ca, ca + NV * W) of row y (ca aligned), stored
// only within [col_lo, col_hi); columns are padded-plane columns.
template <class V, int NV>
inline void nm_tile_3x3(const NmPlan& p, int y, int ca, int col_lo, int col_hi) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  const PackedConv& w = *p.w;
  const ConvTask& t = *p.t;
  const int chunks = (w.cin + kNmChunkChannels - 1) / kNmChunkChannels;
  const typename V::Mask left_mask = V::all(ca > 0);  // column ca - 1 exists
  typename V::Mask store_mask[NV];
  for (int v = 0; v < NV; ++v)
    store_mask[v] = V::range(col_lo - (ca + v * W), col_hi - (ca + v * W));
  const T zero = V::zero();
  for (int c0 = 0; c0 < p.channels; c0 += kNmChunkChannels) {
    const int c = c0 / kNmChunkChannels;
    nm_fill_rows<3>(p, c0, std::min(c0 + kNmChunkChannels, w.cin), y, ca);
    // The row the next output row adds (y + 3) comes from memory on a large
    // image: fetch it now, or every output channel waits for it then.
    for (int ci = c0; ci < std::min(c0 + kNmChunkChannels, t.cin); ++ci)
      prefetch_l2(t.in[ci] + (y + 3) * t.ld + ca - W, (NV + 2) * W);
    const bool first = c0 == 0, last = c0 + kNmChunkChannels >= p.channels;
    for (int o = 0; o < t.cout; ++o) {
      T out[NV], sum0[NV], sum2[NV + 1], before = zero;
      nm_start<V, NV>(p, o, out, first);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) sum0[v] = sum2[v] = zero;
      sum2[NV] = zero;
      const int32_t* count = w.counts.data() + (static_cast<size_t>(o) * chunks + c) * kNmCountStride;
      const int32_t* ip = w.index.data() + count[7];
      const float* wp = w.weights.data() + count[8];
      nm_rows_of_set<V, NV, 1>(out, sum0, before, sum2, left_mask, p.rows, wp, ip, count[0]);
      nm_rows_of_set<V, NV, 2>(out, sum0, before, sum2, left_mask, p.rows, wp, ip, count[1]);
      nm_rows_of_set<V, NV, 3>(out, sum0, before, sum2, left_mask, p.rows, wp, ip, count[2]);
      nm_rows_of_set<V, NV, 4>(out, sum0, before, sum2, left_mask, p.rows, wp, ip, count[3]);
      nm_rows_of_set<V, NV, 5>(out, sum0, before, sum2, left_mask, p.rows, wp, ip, count[4]);
      nm_rows_of_set<V, NV, 6>(out, sum0, before, sum2, left_mask, p.rows, wp, ip, count[5]);
      nm_rows_of_set<V, NV, 7>(out, sum0, before, sum2, left_mask, p.rows, wp, ip, count[6]);
      out[0] = V::add(out[0], V::previous_column(before, sum0[0]));
#pragma GCC unroll 16
      for (int v = 1; v < NV; ++v) out[v] = V::add(out[v], V::previous_column(sum0[v - 1], sum0[v]));
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) out[v] = V::add(out[v], V::next_column(sum2[v], sum2[v + 1]));
      nm_store<V, NV>(p, o, y, ca, out, last, store_mask);
    }
  }
}

// ---------------------------------------------------------------- 1x1

// acc[v] += w * row[v * W] over `groups` groups of N entries (N = 0: n).
template <class V, int NV, int N>
inline void nm_groups(typename V::T* acc, const float* const* rows, const float* wp,
                      const int32_t* ip, int groups, int n) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  auto entry = [&](int e) {
    const float* src = rows[ip[e]];
    const T wv = V::set1(wp[e]);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[v] = V::fmadd(wv, V::load(src + v * W), acc[v]);
  };
  if constexpr (N > 0) {
#pragma GCC unroll 2
    for (int g = 0; g < groups; ++g) {
#pragma GCC unroll 32
      for (int e = 0; e < N; ++e) entry(e);
      wp += N;
      ip += N;
    }
  } else {
    const int entries = groups * n;
#pragma GCC unroll 4
    for (int e = 0; e < entries; ++e) entry(e);
  }
}

template <class V, int NV, int N, int M>
inline void nm_tile_1x1(const NmPlan& p, int y, int ca, int col_lo, int col_hi) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  const PackedConv& w = *p.w;
  const ConvTask& t = *p.t;
  const int m = M > 0 ? M : w.m;
  const int n = N > 0 ? N : w.n;
  const size_t per_cout = static_cast<size_t>((w.cin + m - 1) / m) * n;  // last group may be short
  typename V::Mask store_mask[NV];
  for (int v = 0; v < NV; ++v)
    store_mask[v] = V::range(col_lo - (ca + v * W), col_hi - (ca + v * W));
  for (int c0 = 0; c0 < p.channels; c0 += p.chunk_channels) {
    const int c1 = std::min(c0 + p.chunk_channels, p.channels);
    nm_fill_rows<1>(p, c0, c1, y, ca);
    const bool first = c0 == 0, last = c1 >= p.channels;
    for (int o = 0; o < t.cout; ++o) {
      T acc[NV];
      nm_start<V, NV>(p, o, acc, first);
      const size_t at = o * per_cout + static_cast<size_t>(c0 / m) * n;
      nm_groups<V, NV, N>(acc, p.rows, w.weights.data() + at, w.index.data() + at,
                          (c1 - c0) / m, n);
      nm_store<V, NV>(p, o, y, ca, acc, last, store_mask);
    }
  }
}

// ---------------------------------------------------------------- driver

// Calls the tile of nv vectors (1 <= nv <= NVMAX) with nv fixed at compile time.
template <class V, int K, int NVMAX, int N, int M, int NV = 1>
inline void nm_tile_of(int nv, const NmPlan& p, int y, int ca, int col_lo, int col_hi) {
  if constexpr (NV < NVMAX) {
    if (nv != NV) return nm_tile_of<V, K, NVMAX, N, M, NV + 1>(nv, p, y, ca, col_lo, col_hi);
  }
  if constexpr (K == 3)
    nm_tile_3x3<V, NV>(p, y, ca, col_lo, col_hi);
  else
    nm_tile_1x1<V, NV, N, M>(p, y, ca, col_lo, col_hi);
}

// Runs every run of the task (1x1 with N, M = 0: taken from the packed
// weights). A run covers the aligned vectors of its output columns; they are
// cut into the fewest tiles of at most NVMAX vectors, of near-equal widths.
template <class V, int K, int NVMAX, int N, int M>
void conv_nm_simd(const PackedConv& w, const ConvTask& t) {
  constexpr int W = V::kWidth;
  NmPlan p;
  p.w = &w;
  p.t = &t;
  if (K == 3) {
    p.chunk_channels = kNmChunkChannels;
  } else {
    const int groups = std::max(1, kNm1x1ChunkBytes / (NVMAX * 64) / w.m);
    p.chunk_channels = groups * w.m;
  }
  // 1x1 reads whole groups (a straddling one partly from the zero row).
  const int step = K == 3 ? 1 : w.m;
  // A task that reads no input channel still adds the bias: one chunk of
  // zero rows.
  p.channels = std::max(step, (t.cin + step - 1) / step * step);
  // Whole groups of rows: a short last group (M not dividing cin) reads zero rows.
  std::vector<const float*> rows(static_cast<size_t>((w.cin + step - 1) / step * step) * K);
  p.rows = rows.data();
  std::vector<float> scratch;
  p.scratch_stride = NVMAX * W;
  if (p.chunk_channels < p.channels) scratch.resize(static_cast<size_t>(t.cout) * p.scratch_stride);
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
  if (t.stream_out) _mm_sfence();
}

// The kernel for the packed weights: 3x3 has one path (templated on the kx
// sets); 1x1 is unrolled for the patterns of nm-patterns.inc, generic otherwise.
template <class V, int K, int NVMAX>
void conv_nm_dispatch(const PackedConv& w, const ConvTask& t) {
  if constexpr (K == 1) {
#define SPARSR_NM_PATTERN(kept, group) \
  if (w.n == kept && w.m == group) return conv_nm_simd<V, K, NVMAX, kept, group>(w, t);
#include "nm-patterns.inc"
#undef SPARSR_NM_PATTERN
  }
  conv_nm_simd<V, K, NVMAX, 0, 0>(w, t);
}

}  // namespace sparsr
