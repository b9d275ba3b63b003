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
  static T min(T a, T b) { return a < b ? a : b; }
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

// What one output row sums: a list of input rows (each positioned at output
// index 0, with the weight offset of its (channel, ky) in the block) times a
// list of taps (each an input offset and a weight offset).
struct RowSum {
  std::vector<const float*> in;
  std::vector<int32_t> weight;
  std::vector<int32_t> in_tap, weight_tap;

  void clear_rows() {
    in.clear();
    weight.clear();
  }
};

// Where a tile's results go: out[c] + index * step for outputs [0, n) of the
// row, after the optional activation (ReLU, or r >= 0 ? r : slopes[c] * r),
// plus the optional residual (step 1 only).
struct RowOut {
  float* const* out;
  const float* const* residual;
  int step;
  int n;
  bool relu;
  const float* slopes;  // nullable, indexed as out
};

// One register tile: outputs [m, m + NV * W) of n_out channels of one block,
// bias + the row sum, stored through o. acc stays a local of this function so
// the compiler keeps it in registers across the whole sum.
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
  const float* const* rows = s.in.data();
  const int32_t* row_weight = s.weight.data();
  const int32_t* in_tap = s.in_tap.data();
  const int32_t* weight_tap = s.weight_tap.data();
  const size_t n_rows = s.in.size();
  const int n_taps = static_cast<int>(s.in_tap.size());
  for (size_t r = 0; r < n_rows; ++r) {
    const float* src = rows[r] + m;
    const float* wr = wblock + row_weight[r];
    for (int t = 0; t < n_taps; ++t) {
      const float* p = src + in_tap[t];
      const float* wt = wr + weight_tap[t];
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
  }
  // Constant indices into acc only (c < BLOCK unrolled): an index the
  // compiler cannot fold makes it keep acc in memory through the whole sum.
  const T zero = V::zero();
#pragma GCC unroll 8
  for (int c = 0; c < BLOCK; ++c) {
    if (c >= n_out) break;
    const T slope = o.slopes ? V::set1(o.slopes[c]) : zero;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      T r = acc[c][v];
      // max(r, 0) + slope * min(r, 0): slope * r rounded once, as in the packed kernels.
      if (o.slopes)
        r = V::fmadd(slope, V::min(r, zero), V::max(r, zero));
      else if (o.relu)
        r = V::max(r, zero);
      const int x = m + v * W;
      const int valid = o.n - x;  // lanes [0, valid) are outputs of the row
      if (valid <= 0) break;
      if (o.step != 1) {
        float lanes[W];
        V::store(lanes, r);
        float* dst = o.out[c] + static_cast<int64_t>(x) * o.step;
        for (int l = 0; l < W && l < valid; ++l) dst[l * o.step] = lanes[l];
      } else if (valid >= W) {
        if (o.residual) r = V::add(r, V::load(o.residual[c] + x));
        V::store(o.out[c] + x, r);
      } else {
        const typename V::Mask lanes = V::range(0, valid);
        if (o.residual) r = V::add(r, V::load(o.residual[c] + x, lanes));
        V::store(o.out[c] + x, r, lanes);
      }
    }
  }
}

// Tiles per band: every output block of a row runs over a band of tiles
// before the next band, so the band's input stays in L1 while the blocks
// reread it.
constexpr int kBandTiles = 2;

// The whole row for every block of one group: blocks of BLOCK channels, tiles
// of NV vectors (the last tile of the row shorter). out, residual and slopes
// hold the group's output channels.
template <class V, int BLOCK, int NV>
void run_row(const PackedGeneralConv& w, int group, const RowSum& s, float* const* out,
             const float* const* residual, int step, int n, bool relu, const float* slopes) {
  constexpr int tile = NV * V::kWidth;
  const int cout_g = w.cout_per_group();
  const int blocks = w.blocks_per_group();
  for (int b0 = 0; b0 < n; b0 += kBandTiles * tile) {
    const int b1 = std::min(n, b0 + kBandTiles * tile);
    for (int b = 0; b < blocks; ++b) {
      const int first = b * BLOCK;
      const int n_out = std::min(BLOCK, cout_g - first);
      const float* wb = w.weights.data() + (static_cast<size_t>(group) * blocks + b) * w.block_stride();
      const float* bias = w.bias.data() + group * cout_g + first;
      const RowOut o{out + first, residual ? residual + first : nullptr, step, n, relu,
                     slopes ? slopes + first : nullptr};
      for (int m = b0; m < b1; m += tile) row_tile<V, BLOCK, NV>(s, wb, bias, n_out, o, m);
    }
  }
}

using RowFn = void (*)(const PackedGeneralConv&, int, const RowSum&, float* const*,
                       const float* const*, int, int, bool, const float*);

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
                       bool relu, const float* slopes, const Channels* residual) {
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
    for (int kx = 0; kx < k.kw; ++kx) {
      const int col = kx * k.dw;  // padded column of tap kx, from an output's first
      s.in_tap.push_back((col % k.sw) * phase_len + col / k.sw);
      s.weight_tap.push_back(kx * BLOCK);
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
      s.clear_rows();
      for (int i = 0; i < cin_g; ++i)
        for (int ky = 0; ky < k.kh; ++ky) {
          const int iy = oy * k.sh - k.ph + ky * k.dh;
          if (iy < 0 || iy >= src.height) continue;  // a zero row adds nothing
          s.in.push_back(cache.row(i, iy));
          s.weight.push_back((i * k.kh + ky) * k.kw * BLOCK);
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
      run_row<V, BLOCK, NV>(w, g, s, out.data(), residual ? res.data() : nullptr, 1, ow, relu,
                            slopes ? slopes + g * cout_g : nullptr);
    }
  });
}

// Gather form: output (oy, ox) sums the inputs (iy, ix) with
// oy = iy s - p + ky. Output columns of one phase r = (ox + p) mod s take the
// taps kx = r + j s from inputs ix = q - j, q = (ox + p - r) / s: for each
// phase a stride-1 correlation over q, stored every s-th output.
template <class V, int BLOCK, int NV>
void conv_transpose_rows(const PackedGeneralConv& w, const Channels& src, const Channels& dst) {
  const Window2d& k = w.window;
  const int cin_g = w.cin_per_group(), cout_g = w.cout_per_group();
  const int oh = dst.height, ow = dst.width;
  const int pad_left = (k.kw - 1) / k.sw;  // largest j
  const int q_end = (ow - 1 + k.pw) / k.sw + 1;
  const int phase_len = phase_length(q_end + pad_left, 0, NV * V::kWidth);
  const int slots = (k.kh - 1) / k.sh + 1;  // input rows one output row reads
  const int chunk = rows_per_task(w.groups, oh);
  const int chunks = (oh + chunk - 1) / chunk;
  parallel_for(static_cast<size_t>(w.groups) * chunks, [&](size_t task) {
    const int g = static_cast<int>(task / chunks);
    const int y0 = static_cast<int>(task % chunks) * chunk, y1 = std::min(oh, y0 + chunk);
    static thread_local std::vector<float> scratch;
    RowCache cache(src, g * cin_g, cin_g, slots, pad_left, 1, phase_len, q_end - 1, scratch);
    RowSum s;
    std::vector<float*> out(cout_g);
    for (int oy = y0; oy < y1; ++oy) {
      const int ry = (oy + k.ph) % k.sh;
      for (int rx = 0; rx < k.sw; ++rx) {
        const int q_lo = ceil_div_clamped(k.pw - rx, k.sw);
        const int q_hi = (ow - 1 + k.pw - rx) / k.sw + 1;
        if (ow - 1 + k.pw - rx < 0 || q_hi <= q_lo) continue;
        s.in_tap.clear();
        s.weight_tap.clear();
        for (int kx = rx, j = 0; kx < k.kw; kx += k.sw, ++j) {
          s.in_tap.push_back(-j);
          s.weight_tap.push_back(kx * BLOCK);
        }
        s.clear_rows();
        for (int i = 0; i < cin_g; ++i)
          for (int ky = ry; ky < k.kh; ky += k.sh) {
            const int iy = (oy + k.ph - ky) / k.sh;
            if (iy < 0 || iy >= src.height) continue;
            s.in.push_back(cache.row(i, iy) + pad_left + q_lo);
            s.weight.push_back((i * k.kh + ky) * k.kw * BLOCK);
          }
        const int ox0 = q_lo * k.sw + rx - k.pw;
        for (int c = 0; c < cout_g; ++c)
          out[c] = dst.planes[g * cout_g + c] + (oy + 1) * dst.ld + 1 + ox0;
        run_row<V, BLOCK, NV>(w, g, s, out.data(), nullptr, k.sw, q_hi - q_lo, false, nullptr);
      }
    }
  });
}

}  // namespace
}  // namespace sparsr
