// Dense convolution in bf16, AVX512_BF16: 8 output channels x 48 pixels per
// register tile (24 accumulators of 32 zmm registers), vdpbf16ps summing two
// input channels per f32 lane and instruction: twice the MACs of an f32 FMA.
//
// Activations stay f32 planes in memory. Each band of a run (the tiles every
// output block runs over before the next band starts, as in the f32 kernel)
// is first converted into a per-thread buffer of bf16 pairs: pixel j of
// channel pair p is one 32-bit word, channel 2p in its low half, for every
// input row the band reads. The conversion (vcvtne2ps2bf16 + vpermw, round to
// nearest even) is paid once per band and reused by every output block and
// every kx, and the tile loads pairs as the f32 tile loads floats.
#include <vector>

#include "bf16-pairs.h"
#include "conv-dense-tile.h"
#include "simd.h"

namespace sparsr {
namespace {

using V = VecAvx512;
constexpr int W = V::kWidth;

// One tile: BLOCK output channels x NV vectors of pixels. pairs points at the
// band buffer's column of the tile's first pixel (pair 0, row 0); rows of the
// buffer are row_stride words apart, pairs K rows.
template <int K, int BLOCK, int NV>
__attribute__((noinline)) void bf16_tile(const uint32_t* wblock, const float* bias,
                                         const ConvTask& t, const uint32_t* pairs,
                                         int64_t row_stride, int used_pairs, int y, int x, int lo,
                                         int hi, int n_out, float* const* out,
                                         const float* const* residual, const float* slopes) {
  using T = V::T;
  T acc[BLOCK][NV];
#pragma GCC unroll 16
  for (int c = 0; c < BLOCK; ++c) {
    const T b = V::set1(bias[c]);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[c][v] = b;
  }
  const uint32_t* wp = wblock;
  for (int p = 0; p < used_pairs; ++p) {
    const uint32_t* rows = pairs + static_cast<int64_t>(p) * K * row_stride;
#pragma GCC unroll 3
    for (int ky = 0; ky < K; ++ky) {
#pragma GCC unroll 3
      for (int kx = 0; kx < K; ++kx) {
        __m512bh in[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
          in[v] = reinterpret_cast<__m512bh>(
              _mm512_loadu_si512(rows + ky * row_stride + kx + v * W));
#pragma GCC unroll 16
        for (int c = 0; c < BLOCK; ++c) {
          const __m512bh wv =
              reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(wp[c])));
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[c][v] = _mm512_dpbf16_ps(acc[c][v], in[v], wv);
        }
        wp += BLOCK;
      }
    }
  }
  // The f32 dense tile's epilogue.
  const T zero = V::zero();
  const int64_t ld = t.ld;
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
        const V::Mask lanes = V::range(first, end);
        if (res) r = V::add(r, V::load(res + v * W, lanes));
        V::store(dst + v * W, r, lanes);
      }
    }
  }
}

template <int K, int BLOCK, int NV>
void conv_dense_bf16(const PackedConv& w, const ConvTask& t) {
  constexpr int taps = K * K;
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  constexpr int band = kDenseBandTiles * NV * W;
  const int n_pairs = (w.cin + 1) / 2, used_pairs = (t.cin + 1) / 2;
  const size_t block_stride = static_cast<size_t>(n_pairs) * taps * BLOCK;
  const int blocks = (t.cout + BLOCK - 1) / BLOCK;
  const int64_t ld = t.ld;
  // Columns of a band buffer row: a band's whole vectors plus the K - 1
  // columns its right kx reads, rounded to whole vectors.
  constexpr int64_t row_stride = (band + K - 1 + W - 1) / W * W;
  thread_local std::vector<uint32_t> buffer;
  buffer.resize(static_cast<size_t>(used_pairs) * K * row_stride);
  const __m512i index = bf16_interleave_index();
  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    int x = run.x0, lo = 0;
    if (K == 1) {  // aligned padded columns, as the f32 kernel (its comment)
      lo = (run.x0 + 1) % W;
      x = run.x0 - lo;
    }
    const int end = run.x1 - x;  // stored lanes of the run: [lo, end) from x
    for (int b0 = 0; b0 < end; b0 += band) {
      const int b1 = end - b0 < band ? end : b0 + band;
      // The floats the band's tiles read: whole vectors of its pixels, plus K - 1.
      const int cols = (b1 - b0 + W - 1) / W * W + K - 1;
      for (int p = 0; p < used_pairs; ++p)
        for (int ky = 0; ky < K; ++ky) {
          const int64_t at = (run.y + shift + ky) * ld + x + b0 + shift;
          const int odd = 2 * p + 1;
          convert_pairs(buffer.data() + (static_cast<int64_t>(p) * K + ky) * row_stride,
                        t.in[2 * p] + at, odd < t.cin ? t.in[odd] + at : nullptr, cols, index);
        }
      for (int b = 0; b < blocks; ++b) {
        const uint32_t* wb = w.pairs.data() + b * block_stride;
        const float* bias = w.bias.data() + b * BLOCK;
        const int n_out = t.cout - b * BLOCK < BLOCK ? t.cout - b * BLOCK : BLOCK;
        float* const* out = t.out + b * BLOCK;
        const float* const* res = t.residual ? t.residual + b * BLOCK : nullptr;
        const float* slopes = t.slopes ? t.slopes + b * BLOCK : nullptr;
        int done = b0, first = b0 == 0 ? lo : 0;
        auto tile = [&](auto nv, int hi) {
          bf16_tile<K, BLOCK, decltype(nv)::value>(wb, bias, t, buffer.data() + (done - b0),
                                                   row_stride, used_pairs, run.y, x + done, first,
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

}  // namespace

void conv3x3_dense_bf16_8x48_avx512bf16(const PackedConv& w, const ConvTask& t) {
  conv_dense_bf16<3, 8, 3>(w, t);
}
void conv1x1_dense_bf16_8x48_avx512bf16(const PackedConv& w, const ConvTask& t) {
  conv_dense_bf16<1, 8, 3>(w, t);
}

}  // namespace sparsr
