// The row kernel of the general convolutions (conv-general.h): templates over
// the vector traits of simd.h (or VecScalar below), instantiated once in each
// of conv-general-{scalar,avx2,avx512}.cc.
//
// Everything here has internal linkage: each ISA file compiles its own copy
// with its own flags, and a shared inline function could be linked to another
// level's body.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "conv-general.h"
#include "threadpool.h"

namespace sparsr {
namespace {

// One lane: the scalar build runs the same templates.
struct VecScalar {
  using T = float;
  using Mask = bool;
  static constexpr int kWidth = 1;
  static T zero() { return 0.0f; }
  static T set1(float v) { return v; }
  static T load(const float* p) { return *p; }
  static T fmadd(T a, T b, T c) { return a * b + c; }
  static T max(T a, T b) { return a > b ? a : b; }
  static T add(T a, T b) { return a + b; }
  static void store(float* p, T v) { *p = v; }
  static Mask range(int lo, int hi) { return lo <= 0 && hi >= 1; }
  static T load(const float* p, Mask m) { return m ? *p : 0.0f; }
  static void store(float* p, T v, Mask m) {
    if (m) *p = v;
  }
};

// Brings the floats [p, p + n) into L2. A hint: it never faults.
inline void prefetch_row(const float* p, int64_t n) {
  for (int64_t f = 0; f < n; f += 16) __builtin_prefetch(p + f, 0, 2);
}

inline void prefetch_row_w(float* p, int64_t n) {
  for (int64_t f = 0; f < n; f += 16) __builtin_prefetch(p + f, 1, 2);
}

// ceil(a / b) for b > 0, clamped at 0.
inline int ceil_div_clamped(int a, int b) { return a <= 0 ? 0 : (a + b - 1) / b; }

// q[m] = from[m * S]: a constant stride, which the compiler vectorises with
// shuffles (a runtime stride stays a scalar loop: 10x slower for stride 2).
template <int S>
inline void every(const float* from, float* q, int n) {
  for (int m = 0; m < n; ++m) q[m] = from[m * S];
}

// Rows of a group's input channels, copied on first use into per-thread
// scratch. A copied row is zero padded by pad_left in front and to its end,
// then split into `phases` column phases of phase_len floats each: phase p,
// index m holds padded column m * phases + p, so a strided tap reads
// contiguous floats. Slots are keyed by row mod slots: the rows that
// consecutive output rows share are copied once.
//
// Without phases, when the stored outputs read input columns [-1, width] only
// (last_read: the largest), the feature's own zero border is the padding and
// rows are read in place (measured on depthwise 3x3 64 channels at 640x360,
// 1 thread: 5.4 ms, copied 7.6 ms).
class RowCache {
 public:
  RowCache(const Channels& src, int first_channel, int channels, int slots, int pad_left,
           int phases, int phase_len, int last_read, std::vector<float>& scratch)
      : src_(src), first_(first_channel), slots_(slots), pad_left_(pad_left), phases_(phases),
        phase_len_(phase_len), row_floats_(static_cast<size_t>(phases) * phase_len),
        direct_(phases == 1 && pad_left <= 1 && last_read <= src.width) {
    if (direct_) return;
    tags_.assign(static_cast<size_t>(channels) * slots, -1);
    const size_t need = row_floats_ * channels * slots;
    if (scratch.size() < need) scratch.resize(need);
    data_ = scratch.data();
  }

  // Phase 0 of row y of channel i (of the group); phase p is phase_len floats on.
  const float* row(int i, int y) {
    if (direct_) return src_.planes[first_ + i] + (y + 1) * src_.ld + 1 - pad_left_;
    const size_t slot = static_cast<size_t>(i) * slots_ + y % slots_;
    float* dst = data_ + slot * row_floats_;
    if (tags_[slot] != y) {
      copy_row(src_.planes[first_ + i] + (y + 1) * src_.ld + 1, dst);
      tags_[slot] = y;
    }
    return dst;
  }

 private:
  void copy_row(const float* x, float* dst) const {
    const int width = src_.width;
    for (int p = 0; p < phases_; ++p) {
      float* q = dst + static_cast<size_t>(p) * phase_len_;
      // Padded column m * phases + p is input column m * phases + p - pad_left.
      const int lo = std::min(ceil_div_clamped(pad_left_ - p, phases_), phase_len_);
      const int last = width - 1 + pad_left_ - p;
      const int hi = std::max(lo, std::min(phase_len_, last < 0 ? 0 : last / phases_ + 1));
      std::fill(q, q + lo, 0.0f);
      const float* from = x + lo * phases_ + p - pad_left_;
      switch (phases_) {
        case 1: std::memcpy(q + lo, from, sizeof(float) * (hi - lo)); break;
        case 2: every<2>(from, q + lo, hi - lo); break;
        case 3: every<3>(from, q + lo, hi - lo); break;
        default: every<4>(from, q + lo, hi - lo); break;
      }
      std::fill(q + hi, q + phase_len_, 0.0f);
    }
  }

  const Channels& src_;
  int first_, slots_, pad_left_, phases_, phase_len_;
  size_t row_floats_;
  bool direct_;
  std::vector<int> tags_;
  float* data_ = nullptr;
};

// What one output row of a block sums: one entry per (input row, tap), an
// input pointer at the row's output index 0 and the offset of the entry's
// BLOCK weights in the block. One flat list, so the kernel has one loop
// whatever the mix of rows and taps (a stride-2 transposed 3x3 has 1 or 2
// taps per row).
struct RowSum {
  std::vector<const float*> in;
  std::vector<int32_t> weight;

  void clear() {
    in.clear();
    weight.clear();
  }
  void add(const float* p, int32_t w) {
    in.push_back(p);
    weight.push_back(w);
  }
};

// Where a tile's results go: output o's index m at out[o] + m, for m in
// [begin[o], end[o]) (begin null: from 0; end null: to n), after the
// optional ReLU, plus the optional residual.
struct RowOut {
  float* const* out;
  const float* const* residual;
  const int* begin;
  const int* end;
  int n;
  bool relu;
};

// One register tile: outputs [m, m + NV * W) of n_out outputs of one block,
// bias + the row sum, stored through o. acc stays a local of this function
// so the compiler keeps it in registers across the whole sum.
template <class V, int BLOCK, int NV>
inline void row_tile(const RowSum& s, const float* wblock, const float* bias, int n_out,
                     const RowOut& o, int m) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  T acc[BLOCK][NV];
#pragma GCC unroll 8
  for (int c = 0; c < BLOCK; ++c) {
    const T bv = V::set1(c < n_out ? bias[c] : 0.0f);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[c][v] = bv;
  }
  const float* const* entry_in = s.in.data();
  const int32_t* entry_weight = s.weight.data();
  const size_t n = s.in.size();
  for (size_t e = 0; e < n; ++e) {
    const float* p = entry_in[e] + m;
    const float* wt = wblock + entry_weight[e];
    T in[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) in[v] = V::load(p + v * W);
#pragma GCC unroll 8
    for (int c = 0; c < BLOCK; ++c) {
      const T wv = V::set1(wt[c]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[c][v] = V::fmadd(wv, in[v], acc[c][v]);
    }
  }
  // Constant indices into acc only (c < BLOCK unrolled): an index the
  // compiler cannot fold makes it keep acc in memory through the whole sum.
  const T zero = V::zero();
#pragma GCC unroll 8
  for (int c = 0; c < BLOCK; ++c) {
    if (c >= n_out) break;
    const int lo = o.begin ? o.begin[c] : 0, hi = o.end ? o.end[c] : o.n;
    if (hi <= lo) continue;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      T r = acc[c][v];
      if (o.relu) r = V::max(r, zero);
      const int x = m + v * W;
      const int first = lo - x, last = hi - x;  // stored lanes [first, last)
      if (last <= 0) break;
      if (first >= W) continue;
      if (first <= 0 && last >= W) {
        if (o.residual) r = V::add(r, V::load(o.residual[c] + x));
        V::store(o.out[c] + x, r);
      } else {
        const typename V::Mask lanes = V::range(first, last);
        if (o.residual) r = V::add(r, V::load(o.residual[c] + x, lanes));
        V::store(o.out[c] + x, r, lanes);
      }
    }
  }
}

// Tiles per band: every output block runs over a band of tiles before the
// next band, so that the band's input stays in L1 while the blocks reread it.
constexpr int kBandTiles = 2;

// The whole row for every block of one group: blocks of BLOCK outputs, tiles
// of NV vectors over [0, o.n). Block b sums sums[block_sum[b]] (block_sum
// null: sums[0]).
template <class V, int BLOCK, int NV>
void run_row(const PackedGeneralConv& w, int group, const RowSum* sums, const int* block_sum,
             const RowOut& o) {
  constexpr int tile = NV * V::kWidth;
  const int outputs = w.outputs_per_group, blocks = w.blocks_per_group();
  for (int b0 = 0; b0 < o.n; b0 += kBandTiles * tile) {
    const int b1 = std::min(o.n, b0 + kBandTiles * tile);
    for (int b = 0; b < blocks; ++b) {
      const int first = b * BLOCK;
      const int n_out = std::min(BLOCK, outputs - first);
      const float* wb =
          w.weights.data() + (static_cast<size_t>(group) * blocks + b) * w.block_stride();
      const float* bias = w.bias.data() + static_cast<size_t>(group) * outputs + first;
      const RowOut ob{o.out + first, o.residual ? o.residual + first : nullptr,
                      o.begin ? o.begin + first : nullptr, o.end ? o.end + first : nullptr,
                      o.n, o.relu};
      const RowSum& sum = sums[block_sum ? block_sum[b] : 0];
      for (int m = b0; m < b1; m += tile) row_tile<V, BLOCK, NV>(sum, wb, bias, n_out, ob, m);
    }
  }
}

// Output rows per task: enough tasks to balance the threads, as few as that
// allows so the row cache reuses the rows that neighbours share.
inline int rows_per_task(int groups, int out_height) {
  const int want_tasks = 8 * num_threads();
  const int chunks = std::max(1, std::min(out_height, (want_tasks + groups - 1) / groups));
  return (out_height + chunks - 1) / chunks;
}

// Floats per phase of a cached row: reach + one tile past the last output
// (the tile's lanes past the row are computed from these and not stored).
inline int phase_length(int outputs, int reach, int tile) {
  return (outputs + reach + tile + 15) / 16 * 16;
}

constexpr int kPrefetchMaxFmasPerFloat = 32;

template <class V, int BLOCK, int NV>
void conv_general_rows(const PackedGeneralConv& w, const Channels& src, const Channels& dst,
                       bool relu, const Channels* residual) {
  const Window2d& k = w.window;
  const int cin_g = w.cin_per_group(), cout_g = w.cout_per_group();
  const int oh = dst.height, ow = dst.width;
  const int reach = ((k.kw - 1) * k.dw) / k.sw;  // phase columns past an output's first tap
  const int phase_len = phase_length(ow, reach, NV * V::kWidth);
  const int slots = (k.kh - 1) * k.dh + 1;  // input rows one output row spans
  const int chunk = rows_per_task(w.groups, oh);
  const int chunks = (oh + chunk - 1) / chunk;
  parallel_for(static_cast<size_t>(w.groups) * chunks, [&](size_t task) {
    const int g = static_cast<int>(task / chunks);
    const int y0 = static_cast<int>(task % chunks) * chunk, y1 = std::min(oh, y0 + chunk);
    static thread_local std::vector<float> scratch;
    const int last_read = (ow - 1) * k.sw - k.pw + (k.kw - 1) * k.dw;
    RowCache cache(src, g * cin_g, cin_g, slots, k.pw, k.sw, phase_len, last_read, scratch);
    RowSum s;
    std::vector<int> tap_offset(k.kw);
    for (int kx = 0; kx < k.kw; ++kx) {
      const int col = kx * k.dw;  // padded column of tap kx, from an output's first
      tap_offset[kx] = (col % k.sw) * phase_len + col / k.sw;
    }
    std::vector<float*> out(cout_g);
    std::vector<const float*> res(residual ? cout_g : 0);
    // Layers of few FMAs per float moved bring the next output row's new
    // input rows and its output rows into L2 while this one runs (measured at
    // 640x360, 1 thread: depthwise 3x3 over 64 channels 8.4 -> 5.2 ms; but
    // 64->64 3x3, 300 FMAs per float, 95 -> 106 ms).
    const int moved = cin_g * k.sh + cout_g;
    const bool prefetch = cout_g * cin_g * k.kh * k.kw < kPrefetchMaxFmasPerFloat * moved;
    for (int oy = y0; oy < y1; ++oy) {
      s.clear();
      for (int i = 0; i < cin_g; ++i)
        for (int ky = 0; ky < k.kh; ++ky) {
          const int iy = oy * k.sh - k.ph + ky * k.dh;
          if (iy < 0 || iy >= src.height) continue;  // a zero row adds nothing
          const float* row = cache.row(i, iy);
          for (int kx = 0; kx < k.kw; ++kx)
            s.add(row + tap_offset[kx], ((i * k.kh + ky) * k.kw + kx) * BLOCK);
        }
      if (prefetch && oy + 1 < y1) {
        const int bottom = (oy + 1) * k.sh - k.ph + (k.kh - 1) * k.dh;
        for (int iy = std::max(0, bottom - k.sh + 1); iy <= std::min(bottom, src.height - 1); ++iy)
          for (int i = 0; i < cin_g; ++i)
            prefetch_row(src.planes[g * cin_g + i] + (iy + 1) * src.ld, src.width + 2);
        for (int c = 0; c < cout_g; ++c)
          prefetch_row_w(dst.planes[g * cout_g + c] + (oy + 2) * dst.ld, dst.width + 2);
      }
      for (int c = 0; c < cout_g; ++c) {
        out[c] = dst.planes[g * cout_g + c] + (oy + 1) * dst.ld + 1;
        if (residual) res[c] = residual->planes[g * cout_g + c] + (oy + 1) * residual->ld + 1;
      }
      const RowOut o{out.data(), residual ? res.data() : nullptr, nullptr, nullptr, ow, relu};
      run_row<V, BLOCK, NV>(w, g, &s, nullptr, o);
    }
  });
}

// dst[m * S + r] = phase[r][m] for m in [0, n): the phases of one output
// row interleaved (a constant S, which the compiler vectorises with shuffles).
template <int S>
inline void interleave(float* dst, const float* const* phase, int n) {
  for (int m = 0; m < n; ++m)
#pragma GCC unroll 4
    for (int r = 0; r < S; ++r) dst[m * S + r] = phase[r][m];
}

// Row [0, width) of an output whose column base + m step + r is phase[r][m].
inline void interleave_row(float* row, const float* const* phase, int step, int base, int width) {
  const int m_lo = ceil_div_clamped(-base, step);  // whole groups of step columns inside
  const int m_hi = std::max(m_lo, (width - base) / step);
  float* dst = row + base + m_lo * step;
  const float* shifted[kConvGeneralMaxStride];
  for (int r = 0; r < step; ++r) shifted[r] = phase[r] + m_lo;
  switch (step) {
    case 2: interleave<2>(dst, shifted, m_hi - m_lo); break;
    case 3: interleave<3>(dst, shifted, m_hi - m_lo); break;
    default: interleave<4>(dst, shifted, m_hi - m_lo); break;
  }
  auto edge = [&](int x0, int x1) {
    for (int x = std::max(x0, 0); x < std::min(x1, width); ++x)
      row[x] = phase[(x - base) % step][(x - base) / step];
  };
  edge(0, base + m_lo * step);
  edge(base + m_hi * step, width);
}

// Gather form: output (oy, ox) sums the inputs (iy, ix) with oy = iy sh - ph
// + ky. With ry = (oy + ph) mod sh and Qy = (oy + ph - ry) / sh, the taps are
// ky = ry + a sh at iy = Qy - a; likewise kx = rx + b sw at ix = Qx - b. For
// one Qy the rows Qy - a feed the sh output rows Qy sh + ry - ph, and along a
// row the columns Qx - b feed the sw outputs Qx sw + rx - pw: a stride-1
// correlation over Qx whose outputs are the (ry, rx, channel) triples
// (PackedGeneralConv). With sw > 1 the row kernel writes each phase to a
// staging row and the phases are interleaved into the output once, in whole
// vectors: one masked store per phase at every sw-th float wrote each output
// line sw times and cost 8 -> 64 3x3 stride 2 3x its FMA time.
template <class V, int BLOCK, int NV>
void conv_transpose_rows(const PackedGeneralConv& w, const Channels& src, const Channels& dst) {
  const Window2d& k = w.window;
  const int cin_g = w.cin_per_group(), cout_g = w.cout_per_group();
  const int n_a = w.rows_per_input, n_b = w.taps, outputs = w.outputs_per_group;
  const int blocks = w.blocks_per_group();
  const int oh = dst.height, ow = dst.width;
  const int pad_left = n_b - 1;  // columns Qx - b from b = n_b - 1
  // Qx over [q0, q_end) covers every phase; output column of (q0, rx = 0):
  const int q0 = ceil_div_clamped(k.pw - (k.sw - 1), k.sw);
  const int q_end = (ow - 1 + k.pw) / k.sw + 1, n = q_end - q0;
  const int base = q0 * k.sw - k.pw;
  const int phase_len = phase_length(q_end + pad_left, 0, NV * V::kWidth);
  const int stage_len = phase_length(n, 0, NV * V::kWidth);
  const int qy0 = k.ph / k.sh, qy_end = (oh - 1 + k.ph) / k.sh + 1;
  // Block b reads rows a < reach[b].first and taps b < reach[b].second (its
  // outputs' phases; zero weights past them); blocks of the same reach share
  // the RowSum block_sum[b]. Stride 1 stores straight into [begin, end).
  std::vector<int> begin(outputs), end(outputs), block_sum(blocks);
  std::vector<std::pair<int, int>> reach(blocks, {0, 0}), sums_reach;
  for (int o = 0; o < outputs; ++o) {
    const int ry = o / cout_g / k.sw, rx = o / cout_g % k.sw;
    const int last = ow - 1 + k.pw - rx;  // ox = Qx sw + rx - pw <= ow - 1
    begin[o] = ceil_div_clamped(k.pw - rx, k.sw) - q0;
    end[o] = last < 0 ? begin[o] : std::max(begin[o], last / k.sw + 1 - q0);
    std::pair<int, int>& r = reach[o / BLOCK];
    r.first = std::max(r.first, (k.kh - ry + k.sh - 1) / k.sh);
    r.second = std::max(r.second, (k.kw - rx + k.sw - 1) / k.sw);
  }
  for (int b = 0; b < blocks; ++b) {
    auto found = std::find(sums_reach.begin(), sums_reach.end(), reach[b]);
    block_sum[b] = static_cast<int>(found - sums_reach.begin());
    if (found == sums_reach.end()) sums_reach.push_back(reach[b]);
  }
  const bool staged = k.sw > 1;
  const int chunk = rows_per_task(w.groups, qy_end - qy0);
  const int chunks = (qy_end - qy0 + chunk - 1) / chunk;
  parallel_for(static_cast<size_t>(w.groups) * chunks, [&](size_t task) {
    const int g = static_cast<int>(task / chunks);
    const int y0 = qy0 + static_cast<int>(task % chunks) * chunk;
    const int y1 = std::min(qy_end, y0 + chunk);
    static thread_local std::vector<float> scratch, stage;
    RowCache cache(src, g * cin_g, cin_g, n_a, pad_left, 1, phase_len, q_end - 1, scratch);
    if (staged && stage.size() < static_cast<size_t>(outputs) * stage_len)
      stage.resize(static_cast<size_t>(outputs) * stage_len);
    std::vector<RowSum> sums(sums_reach.size());
    std::vector<float*> out(outputs);
    std::vector<int> row_end(outputs);
    for (int qy = y0; qy < y1; ++qy) {
      for (size_t k_sum = 0; k_sum < sums.size(); ++k_sum) {
        RowSum& s = sums[k_sum];
        s.clear();
        for (int a = 0; a < sums_reach[k_sum].first; ++a) {
          const int iy = qy - a;
          if (iy < 0 || iy >= src.height) continue;  // a zero row adds nothing
          for (int i = 0; i < cin_g; ++i) {
            const float* row = cache.row(i, iy) + pad_left + q0;
            for (int b = 0; b < sums_reach[k_sum].second; ++b)
              s.add(row - b, ((a * cin_g + i) * n_b + b) * BLOCK);
          }
        }
      }
      auto out_row = [&](int o) -> float* {  // null when the phase's row is outside
        const int oy = qy * k.sh + o / cout_g / k.sw - k.ph;
        if (oy < 0 || oy >= oh) return nullptr;
        return dst.planes[g * cout_g + o % cout_g] + (oy + 1) * dst.ld + 1;
      };
      for (int o = 0; o < outputs; ++o) {
        float* row = out_row(o);
        if (staged) {
          out[o] = stage.data() + static_cast<size_t>(o) * stage_len;
          row_end[o] = row ? n : 0;
        } else {
          out[o] = row ? row + base : nullptr;
          row_end[o] = row ? end[o] : begin[o];
        }
      }
      const RowOut ro{out.data(), nullptr, staged ? nullptr : begin.data(), row_end.data(), n,
                      false};
      run_row<V, BLOCK, NV>(w, g, sums.data(), block_sum.data(), ro);
      if (!staged) continue;
      const float* phase[kConvGeneralMaxStride];
      for (int o = 0; o < outputs; o += k.sw * cout_g)  // one (ry, channel) per row
        for (int c = 0; c < cout_g; ++c) {
          float* row = out_row(o + c);
          if (!row) continue;
          for (int rx = 0; rx < k.sw; ++rx) phase[rx] = out[o + rx * cout_g + c];
          interleave_row(row, phase, k.sw, base, ow);
        }
    }
  });
}

}  // namespace
}  // namespace sparsr
