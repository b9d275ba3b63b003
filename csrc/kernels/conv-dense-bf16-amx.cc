// Dense convolution in bf16 on AMX: tdpbf16ps multiplies a 16 x 32 tile of
// bf16 weights (16 output channels x 32 input channels) by a 32 x 16 tile of
// bf16 activations (32 input channels x 16 pixels) into a 16 x 16 tile of
// f32 sums, 8192 MACs an instruction. Four accumulator tiles make the
// register tile 32 output channels x 32 pixels.
//
// The activation operand (B, in pairs: row k = channels 2k, 2k + 1 of 16
// pixels) is read from a buffer of the input rows converted into bf16 pairs
// (bf16-pairs.h, as the AVX512_BF16 kernel): every tap reads its tile at a
// column offset, and consecutive output rows share their input rows. A sum
// tile's row is one output channel's 16 pixels, so the epilogue stores it
// straight into the channel's plane.
#include <cstring>
#include <vector>

#include "bf16-pairs.h"
#include "simd.h"
#include "sparsr.h"

namespace sparsr {
namespace {

using V = VecAvx512;
constexpr int kRows = 16;                          // output channels (pixels) of a tile
constexpr int kChunkPairs = kAmxChunkChannels / 2;  // rows of a B tile
// Pixels per band: the groups whose sums wait in sum_tiles between chunks
// (8 group pairs x 4 KB), a multiple of the 32-pixel register tile.
constexpr int kBand = 256;

// ldtilecfg's 64-byte operand (palette 1): every tile 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: sums (block b or b + 1) x (pixel group g or g + 1); 4-5: weights
// of blocks b, b + 1; 6-7: activations of groups g, g + 1.
template <int K>
void conv_dense_amx(const PackedConv& w, const ConvTask& t) {
  constexpr int taps = K * K;
  constexpr int shift = K == 3 ? 0 : 1;  // a 1x1 reads the interior pixel itself
  constexpr size_t tile_words = kRows * kChunkPairs;
  const int chunks = (w.cin + kAmxChunkChannels - 1) / kAmxChunkChannels;
  const int used_pairs = (t.cin + 1) / 2;
  const int used_chunks = (used_pairs + kChunkPairs - 1) / kChunkPairs;
  const int block_pairs = (t.cout + 2 * kRows - 1) / (2 * kRows);
  const int64_t ld = t.ld;
  // The buffer holds K input rows of whole runs, pair p's row in slot s at
  // (p * K + s) * row_stride: the columns a run's tiles read (whole 32-pixel
  // tiles plus K - 1), for the widest run of the call.
  int max_cols = 0;
  for (size_t r = 0; r < t.n_runs; ++r) {
    const int cols = (t.runs[r].x1 - t.runs[r].x0 + 31) / 32 * 32 + K - 1;
    max_cols = cols > max_cols ? cols : max_cols;
  }
  const int64_t row_stride = (max_cols + 15) / 16 * 16;
  const int64_t pair_stride = K * row_stride;
  const int64_t b_stride = pair_stride * sizeof(uint32_t);  // bytes between a tile's pairs
  thread_local std::vector<uint32_t> buffer;
  buffer.resize(static_cast<size_t>(used_chunks) * kChunkPairs * pair_stride);
  // Pairs past the channels read (to the end of the last tile) are zero.
  for (int p = used_pairs; p < used_chunks * kChunkPairs; ++p)
    std::memset(buffer.data() + p * pair_stride, 0, pair_stride * sizeof(uint32_t));
  // Padded input row r sits in slot r % K. Consecutive rows of the same
  // columns (dense mode) reuse the K - 1 rows they share: a 3x3 converts each
  // input row once, not three times.
  int slot_row[K];
  for (int s = 0; s < K; ++s) slot_row[s] = -1;
  int cached_x0 = -1, cached_x1 = -1;
  const __m512i index = bf16_interleave_index();
  TileConfig config;
  for (int i = 0; i < 8; ++i) {
    config.colsb[i] = 64;
    config.rows[i] = kRows;
  }
  _tile_loadconfig(&config);
  // The sums of every pixel group of a band, between chunks.
  thread_local std::vector<float> sum_tiles;
  sum_tiles.resize(static_cast<size_t>(kBand / (2 * kRows)) * 4 * kRows * kRows);

  for (size_t r = 0; r < t.n_runs; ++r) {
    const Run run = t.runs[r];
    const int x = run.x0, end = run.x1 - run.x0;
    if (run.x0 != cached_x0 || run.x1 != cached_x1) {
      for (int s = 0; s < K; ++s) slot_row[s] = -1;
      cached_x0 = run.x0;
      cached_x1 = run.x1;
    }
    const int cols = (end + 31) / 32 * 32 + K - 1;
    int slot_of[K];
    for (int ky = 0; ky < K; ++ky) {
      const int row = run.y + shift + ky, slot = row % K;
      slot_of[ky] = slot;
      if (slot_row[slot] == row) continue;
      slot_row[slot] = row;
      const int64_t at = row * ld + x + shift;
      for (int p = 0; p < used_pairs; ++p) {
        const int odd = 2 * p + 1;
        convert_pairs(buffer.data() + p * pair_stride + slot * row_stride, t.in[2 * p] + at,
                      odd < t.cin ? t.in[odd] + at : nullptr, cols, index);
      }
    }
    for (int b0 = 0; b0 < end; b0 += kBand) {
      const int b1 = end - b0 < kBand ? end : b0 + kBand;
      // A 3x3 runs the chunks outside the pixel groups: the weights of one
      // chunk for two blocks (9 x 2 KB) stay in L1 while the groups stream
      // by, the sums waiting in sum_tiles between chunks (measured 15 % less
      // CPU time at 64->64; a 1x1, whose weights of all chunks fit L1, 15 %
      // more: it runs them all inside).
      const int n_groups = (b1 - b0 + 2 * kRows - 1) / (2 * kRows);
      for (int bp = 0; bp < block_pairs; ++bp) {
        const int b = 2 * bp;
        const uint32_t* w0 = w.pairs.data() + static_cast<size_t>(b) * chunks * taps * tile_words;
        const uint32_t* w1 = w0 + static_cast<size_t>(chunks) * taps * tile_words;
        const int step = K == 3 ? 1 : (used_chunks > 0 ? used_chunks : 1);
        for (int q0 = 0; q0 < (used_chunks > 0 ? used_chunks : 1); q0 += step) {
          const bool last = q0 + step >= used_chunks;
          for (int gi = 0; gi < n_groups; ++gi) {
            const int g = gi * 2 * kRows;
            float* partial = sum_tiles.data() + static_cast<size_t>(gi) * 4 * kRows * kRows;
            if (q0 == 0) {
              _tile_zero(0);
              _tile_zero(1);
              _tile_zero(2);
              _tile_zero(3);
            } else {
              _tile_loadd(0, partial, 64);
              _tile_loadd(1, partial + kRows * kRows, 64);
              _tile_loadd(2, partial + 2 * kRows * kRows, 64);
              _tile_loadd(3, partial + 3 * kRows * kRows, 64);
            }
            for (int q = q0; q < q0 + step && q < used_chunks; ++q) {
              const uint32_t* rows =
                  buffer.data() + static_cast<int64_t>(q) * kChunkPairs * pair_stride + b0 + g;
              for (int tap = 0; tap < taps; ++tap) {
                const uint32_t* act = rows + slot_of[tap / K] * row_stride + tap % K;
                const size_t wt = (static_cast<size_t>(q) * taps + tap) * tile_words;
                _tile_loadd(4, w0 + wt, 64);
                _tile_loadd(5, w1 + wt, 64);
                _tile_loadd(6, act, b_stride);
                _tile_loadd(7, act + kRows, b_stride);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
              }
            }
            float* const sums[4] = {partial, partial + kRows * kRows,
                                    partial + 2 * kRows * kRows, partial + 3 * kRows * kRows};
            _tile_stored(0, sums[0], 64);
            _tile_stored(1, sums[1], 64);
            _tile_stored(2, sums[2], 64);
            _tile_stored(3, sums[3], 64);
            if (!last) continue;
            // Epilogue: bias, activation, residual, as the f32 dense tile.
            const V::T zero = V::zero();
            for (int i = 0; i < 4; ++i) {
              const int block = b + i / 2, first_px = b0 + g + (i % 2) * kRows;
              const int n_px = b1 - first_px < kRows ? b1 - first_px : kRows;
              if (n_px <= 0) continue;
              const V::Mask lanes = V::range(0, n_px);
              const int64_t offset = (run.y + 1) * ld + x + 1 + first_px;
              for (int m = 0; m < kRows; ++m) {
                const int o = block * kRows + m;
                if (o >= t.cout) break;
                V::T v = V::add(V::load(sums[i] + m * kRows), V::set1(w.bias[o]));
                if (t.slopes)
                  v = negative_slope<V>(v, V::set1(t.slopes[o]));
                else if (t.relu)
                  v = V::max(v, zero);
                if (t.residual) v = V::add(v, V::load(t.residual[o] + offset, lanes));
                V::store(t.out[o] + offset, v, lanes);
              }
            }
          }
        }
      }
    }
  }
  _tile_release();
}

}  // namespace

void conv3x3_dense_bf16_32x32_amx(const PackedConv& w, const ConvTask& t) {
  conv_dense_amx<3>(w, t);
}
void conv1x1_dense_bf16_32x32_amx(const PackedConv& w, const ConvTask& t) {
  conv_dense_amx<1>(w, t);
}

}  // namespace sparsr
