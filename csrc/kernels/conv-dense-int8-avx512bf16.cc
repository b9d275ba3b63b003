// Dense convolution in int8, AVX512_VNNI (part of the kAvx512Bf16 level): 8
// output channels x 48 pixels per register tile (24 int32 accumulators),
// vpdpbusd summing four u8 x s8 products per int32 lane and instruction: four
// times the MACs of an f32 FMA, twice those of vdpbf16ps.
//
// The structure of the bf16 kernel (conv-dense-bf16-avx512bf16.cc):
// activations stay f32 planes in memory and are quantized into a per-thread
// buffer of u8 quads (int8-quads.h), one 32-bit word per pixel and four input
// channels, reused by every output block and tap; a weight quad is broadcast.
// Unlike bf16's, the buffer holds the input rows of a chunk of runs
// (conv_dense_int8), not of one band of one run: each input row is quantized
// once, not once for every output row that reads it (a 3x3 64->64 at 640x360,
// 2 threads: 0.43x the f32 kernel's time per band, 0.37x per chunk, 0.30x
// with the accumulators in registers, see int8_tile). A 1x1 gains less:
// quantizing an input costs a good part of what its MACs do (256->64: 0.52x
// the f32 time, 64->64: 0.65x).
#include <utility>
#include <vector>

#include "conv-dense-tile.h"
#include "int8-quads.h"
#include "simd.h"

namespace sparsr {
namespace {

using V = VecAvx512;
constexpr int W = V::kWidth;

// acc += the four u8 x s8 products of each int32 lane (vpdpbusd), in place:
// the asm's tied operand keeps GCC 12 from copying accumulators between
// registers around the intrinsic (measured: a 3x3 64->64 0.39x -> 0.35x the
// f32 time, before the epilogue below was unrolled).
inline void dpbusd(__m512i& acc, __m512i u8, __m512i s8) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
}

// One tile: BLOCK output channels x NV vectors of pixels; quads points at the
// buffer's column of the tile's first pixel (quad 0, its first input row);
// rows are row_stride words apart, quads quad_stride. zs[c] is zero_point *
// the s8 weight sum of output c over the channels read.
template <int K, int BLOCK, int NV>
__attribute__((noinline)) void int8_tile(const uint32_t* wblock, const float* bias,
                                         const float* scales, const int32_t* zs,
                                         const ConvTask& t, const uint32_t* quads,
                                         int64_t row_stride, int64_t quad_stride, int used_quads,
                                         int y, int x, int lo,
                                         int hi, int n_out, float* const* out,
                                         const float* const* residual, const float* slopes) {
  using T = V::T;
  __m512i acc[BLOCK][NV];
#pragma GCC unroll 16
  for (int c = 0; c < BLOCK; ++c)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[c][v] = _mm512_setzero_si512();
  const uint32_t* wp = wblock;
  for (int q = 0; q < used_quads; ++q) {
    const uint32_t* rows = quads + q * quad_stride;
#pragma GCC unroll 3
    for (int ky = 0; ky < K; ++ky) {
#pragma GCC unroll 3
      for (int kx = 0; kx < K; ++kx) {
        __m512i in[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) in[v] = _mm512_loadu_si512(rows + ky * row_stride + kx + v * W);
#pragma GCC unroll 16
        for (int c = 0; c < BLOCK; ++c) {
          const __m512i wv = _mm512_set1_epi32(static_cast<int>(wp[c]));
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) dpbusd(acc[c][v], in[v], wv);
        }
        wp += BLOCK;
      }
    }
  }
  const T zero = V::zero();
  const int64_t ld = t.ld;
  const int64_t offset = (y + 1) * ld + x + 1;
  // Unrolled over the whole block, so that every accumulator index is a
  // constant: indexed by a run-time channel (c < n_out), acc lived on the
  // stack and every vpdpbusd above loaded and stored its accumulator (GCC 12;
  // at 640x360, 2 threads: a 3x3 64->64 0.35x -> 0.30x the f32 time, a 1x1
  // 256->64 0.87x -> 0.52x).
#pragma GCC unroll 16
  for (int c = 0; c < BLOCK; ++c) {
    if (c >= n_out) break;
    float* dst = out[c] + offset;
    const float* res = residual ? residual[c] + offset : nullptr;
    const T slope = slopes ? V::set1(slopes[c]) : zero;
    const __m512i z = _mm512_set1_epi32(zs[c]);
    const T scale = V::set1(scales[c]), b = V::set1(bias[c]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      T r = V::fmadd(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[c][v], z)), scale, b);
      if (slopes)
        r = negative_slope<V>(r, slope);
      else if (t.relu)
        r = V::max(r, zero);
      const int first = lo - v * W, end = hi - v * W;  // stored lanes [first, end)
      if (first <= 0 && end >= W) {
        if (res) r = V::add(r, V::load(res + v * W));
        V::store(dst + v * W, r);
      } else if (end > 0 && first < W) {
        const V::Mask lanes = V::range(first, end);
        if (res) r = V::add(r, V::load(res + v * W, lanes));
        V::store(dst + v * W, r, lanes);
      }
    }
  }
}

// Bytes of the quads buffer of one chunk of runs: well within L2.
constexpr int64_t kQuadBufferBytes = 1 << 20;

// The runs of a task (in row order) are taken in chunks of rows whose quads
// fit kQuadBufferBytes: every input row a chunk reads is quantized once, over
// the columns of all its runs, and then read by every run, output block and
// tap (a 3x3 reads each input row for three output rows).
template <int K, int BLOCK, int NV>
void conv_dense_int8(const PackedConv& w, const ConvTask& t) {
  constexpr int taps = K * K;
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  constexpr int band = kDenseBandTiles * NV * W;
  const int n_quads = (w.cin + 3) / 4, used_quads = (t.cin + 3) / 4;
  const size_t block_stride = static_cast<size_t>(n_quads) * taps * BLOCK;
  const int blocks = (t.cout + BLOCK - 1) / BLOCK;
  const int64_t ld = t.ld;
  if (t.n_runs == 0) return;
  // The zero point's share of each output's sum over the channels read.
  thread_local std::vector<int32_t> zs;
  zs.resize(static_cast<size_t>(blocks) * BLOCK);
  for (int o = 0; o < blocks * BLOCK; ++o)
    zs[o] = o < t.cout ? w.in_zero * w.counts[static_cast<size_t>(o) * (w.cin + 1) + t.cin] : 0;
  const Quantizer quantize(w.in_inv, w.in_zero);
  // A run's first stored column x and lane lo: a 1x1 starts at aligned padded
  // columns, as the f32 kernel (its comment).
  auto start = [](const Run& run, int& x, int& lo) {
    x = run.x0;
    lo = 0;
    if (K == 1) {
      lo = (run.x0 + 1) % W;
      x = run.x0 - lo;
    }
  };
  // Buffer columns: from the task's first stored column xa to its last, plus
  // what a tile reads past them (whole vectors and K - 1).
  int xa = 1 << 30, xe = 0;
  for (size_t r = 0; r < t.n_runs; ++r) {
    int x, lo;
    start(t.runs[r], x, lo);
    xa = x < xa ? x : xa;
    xe = t.runs[r].x1 > xe ? t.runs[r].x1 : xe;
  }
  const int cols = (xe - xa + W - 1) / W * W + K - 1;  // converted
  const int64_t row_stride = (xe - xa + NV * W + K - 1 + W - 1) / W * W;
  const int64_t quad_bytes = static_cast<int64_t>(used_quads > 0 ? used_quads : 1) * row_stride * 4;
  const int max_rows = static_cast<int>(kQuadBufferBytes / quad_bytes) > K
                           ? static_cast<int>(kQuadBufferBytes / quad_bytes) : K;
  thread_local std::vector<uint32_t> buffer;
  thread_local std::vector<uint8_t> needed;
  thread_local std::vector<std::pair<int, int>> todo;
  for (size_t r0 = 0; r0 < t.n_runs;) {
    // The chunk [r0, r1): rows y0 .. y0 + n_rows - 1 of the buffer, its runs'
    // rows in increasing order.
    const int y0 = t.runs[r0].y;
    size_t r1 = r0 + 1;
    while (r1 < t.n_runs && t.runs[r1].y >= t.runs[r1 - 1].y &&
           t.runs[r1].y - y0 + K <= max_rows)
      ++r1;
    const int n_rows = t.runs[r1 - 1].y - y0 + K;
    const int64_t quad_stride = n_rows * row_stride;
    buffer.resize(static_cast<size_t>(used_quads) * quad_stride);
    needed.assign(n_rows, 0);
    for (size_t r = r0; r < r1; ++r)
      for (int ky = 0; ky < K; ++ky) needed[t.runs[r].y - y0 + ky] = 1;
    // The rows to convert, (quad, row) in order; each prefetches the next one's.
    todo.clear();
    for (int q = 0; q < used_quads; ++q)
      for (int i = 0; i < n_rows; ++i)
        if (needed[i]) todo.push_back({q, i});
    auto sources = [&](std::pair<int, int> row, const float** src) {
      const int q = row.first;
      const int64_t at = (y0 + shift + row.second) * ld + xa + shift;
      for (int j = 0; j < 4; ++j) src[j] = 4 * q + j < t.cin ? t.in[4 * q + j] + at : nullptr;
    };
    for (size_t k = 0; k < todo.size(); ++k) {
      const float* src[4];
      const float* next[4];
      sources(todo[k], src);
      const bool more = k + 1 < todo.size();
      if (more) sources(todo[k + 1], next);
      convert_quads(buffer.data() + todo[k].first * quad_stride + todo[k].second * row_stride,
                    src, cols, quantize, more ? next : nullptr);
    }
    for (size_t r = r0; r < r1; ++r) {
      const Run run = t.runs[r];
      int x, lo;
      start(run, x, lo);
      const uint32_t* row = buffer.data() + (run.y - y0) * row_stride + (x - xa);
      const int end = run.x1 - x;  // stored lanes of the run: [lo, end) from x
      for (int b0 = 0; b0 < end; b0 += band) {
        const int b1 = end - b0 < band ? end : b0 + band;
        for (int b = 0; b < blocks; ++b) {
          const uint32_t* wb = w.pairs.data() + b * block_stride;
          const float* bias = w.bias.data() + b * BLOCK;
          const float* scales = w.scales.data() + b * BLOCK;
          const int32_t* z = zs.data() + b * BLOCK;
          const int n_out = t.cout - b * BLOCK < BLOCK ? t.cout - b * BLOCK : BLOCK;
          float* const* out = t.out + b * BLOCK;
          const float* const* res = t.residual ? t.residual + b * BLOCK : nullptr;
          const float* slopes = t.slopes ? t.slopes + b * BLOCK : nullptr;
          int done = b0, first = b0 == 0 ? lo : 0;
          auto tile = [&](auto nv, int hi) {
            int8_tile<K, BLOCK, decltype(nv)::value>(wb, bias, scales, z, t, row + done,
                                                     row_stride, quad_stride, used_quads, run.y,
                                                     x + done, first, hi, n_out, out, res,
                                                     slopes);
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
    r0 = r1;
  }
}

}  // namespace

void conv3x3_dense_int8_8x48_avx512bf16(const PackedConv& w, const ConvTask& t) {
  conv_dense_int8<3, 8, 3>(w, t);
}
void conv1x1_dense_int8_8x48_avx512bf16(const PackedConv& w, const ConvTask& t) {
  conv_dense_int8<1, 8, 3>(w, t);
}

}  // namespace sparsr
