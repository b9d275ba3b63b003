// Pixel (un)shuffle and resizing. The source coordinates and weights follow
// PyTorch's CPU kernels (aten/src/ATen/native/UpSample.h, UpSampleKernel.cpp)
// step by step in float, so that results agree to rounding. The row loops of
// resize are in spatial-rows.h, one copy per ISA.
#include "spatial.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>
#include <vector>

#include "spatial-rows.h"
#include "threadpool.h"

namespace sparsr {
namespace {

// Outputs of more bytes than this are stored past the caches (as Conv2d's).
constexpr int64_t kStreamOutBytes = 16 << 20;

std::string size_of(const Channels& c) {
  return "(" + std::to_string(c.size()) + ", " + std::to_string(c.height) + ", " +
         std::to_string(c.width) + ")";
}

void check_disjoint(const Channels& src, const Channels& dst, const char* what) {
  std::unordered_set<const float*> in(src.planes.begin(), src.planes.end());
  for (const float* p : dst.planes)
    if (in.count(p))
      throw std::invalid_argument(std::string(what) + ": the output must not share planes with "
                                  "the input");
}

inline const float* row(const Channels& ch, int c, int y) {
  return ch.planes[c] + (y + 1) * ch.ld + 1;
}
inline float* row_out(const Channels& ch, int c, int y) {
  return ch.planes[c] + (y + 1) * ch.ld + 1;
}

// For each output position along one axis: `taps` source indices (clamped to
// the input) and their weights; first[o]: the first index before clamping
// (the taps are first[o] + k, k < taps, clamped).
struct AxisTaps {
  int taps = 1;
  std::vector<int> index;
  std::vector<float> weight;
  std::vector<int> first;
};

// PyTorch's compute_scales_value / area_pixel_compute_scale.
float coordinate_scale(int in, int out, bool align_corners, double scale) {
  if (align_corners) return out > 1 ? static_cast<float>(in - 1) / (out - 1) : 0.0f;
  return scale > 0.0 ? static_cast<float>(1.0 / scale) : static_cast<float>(in) / out;
}

// area_pixel_compute_source_index. PyTorch's kernels are built with FMA
// contraction: without it, 7 -> 201 would differ in a fifth of the positions
// by an ulp.
float source_coordinate(float scale, int o, bool align_corners) {
  if (align_corners) return scale * static_cast<float>(o);
  return std::fma(scale, static_cast<float>(o) + 0.5f, -0.5f);
}

AxisTaps nearest_taps(int in, int out, double scale) {
  AxisTaps t;
  t.index.resize(out);
  t.weight.assign(out, 1.0f);
  const float s = scale > 0.0 ? static_cast<float>(1.0 / scale) : static_cast<float>(in) / out;
  for (int o = 0; o < out; ++o) {
    // PyTorch's nearest_idx special-cases equal and doubled sizes.
    if (out == in)
      t.index[o] = o;
    else if (out == 2 * in)
      t.index[o] = o >> 1;
    else
      t.index[o] = std::min(static_cast<int>(std::floor(static_cast<float>(o) * s)), in - 1);
  }
  t.first = t.index;
  return t;
}

// guard_index_and_lambda: the tap left of src, and the distance to it in [0, 1].
void guard(float src, int in, int* index, float* lambda) {
  *index = std::min(static_cast<int>(std::floor(src)), in - 1);
  *lambda = std::min(std::max(src - static_cast<float>(*index), 0.0f), 1.0f);
}

AxisTaps linear_taps(int in, int out, bool align_corners, double scale) {
  AxisTaps t;
  t.taps = 2;
  t.index.resize(out * 2);
  t.weight.resize(out * 2);
  t.first.resize(out);
  const float s = coordinate_scale(in, out, align_corners, scale);
  for (int o = 0; o < out; ++o) {
    int i0 = o;
    float lambda = 0.0f;
    if (out != in) {  // equal sizes copy in PyTorch, whatever the scale
      float src = source_coordinate(s, o, align_corners);
      if (src < 0.0f) src = 0.0f;
      guard(src, in, &i0, &lambda);
    }
    t.first[o] = i0;
    t.index[o * 2] = i0;
    t.index[o * 2 + 1] = i0 < in - 1 ? i0 + 1 : i0;
    t.weight[o * 2] = 1.0f - lambda;
    t.weight[o * 2 + 1] = lambda;
  }
  return t;
}

// Keys' cubic convolution with a = -0.75 (cubic_convolution1 / 2), contracted
// to FMAs as PyTorch's build does.
void cubic_weights(float t, float* w) {
  const float a = -0.75f;
  auto near = [a](float x) {
    return std::fma(std::fma(a + 2.0f, x, -(a + 3.0f)) * x, x, 1.0f);
  };
  auto far = [a](float x) {
    return std::fma(std::fma(std::fma(a, x, -5.0f * a), x, 8.0f * a), x, -4.0f * a);
  };
  w[0] = far(t + 1.0f);
  w[1] = near(t);
  w[2] = near(1.0f - t);
  w[3] = far(2.0f - t);
}

AxisTaps cubic_taps(int in, int out, bool align_corners, double scale) {
  AxisTaps t;
  t.taps = 4;
  t.index.resize(out * 4);
  t.weight.resize(out * 4);
  t.first.resize(out);
  const float s = coordinate_scale(in, out, align_corners, scale);
  for (int o = 0; o < out; ++o) {
    const float src = source_coordinate(s, o, align_corners);
    int i0;
    float lambda;
    guard(src, in, &i0, &lambda);
    cubic_weights(lambda, &t.weight[o * 4]);
    t.first[o] = i0 - 1;
    for (int k = 0; k < 4; ++k) t.index[o * 4 + k] = std::min(std::max(i0 - 1 + k, 0), in - 1);
  }
  return t;
}

AxisTaps axis_taps(ResizeMode mode, int in, int out, bool align_corners, double scale) {
  switch (mode) {
    case ResizeMode::kNearest: return nearest_taps(in, out, scale);
    case ResizeMode::kBilinear: return linear_taps(in, out, align_corners, scale);
    case ResizeMode::kBicubic: break;
  }
  return cubic_taps(in, out, align_corners, scale);
}

// RowTaps (spatial-rows.h) with its arrays, for a row of `in` source floats
// and vectors of `width` floats.
struct RowTapTable {
  RowTaps taps;
  int left = 0;        // replicated floats before the source row
  int right = 0;       // and after it
  int padded_size = 0; // floats of the padded row, with two vectors of slack for the loads
  std::vector<int32_t> start, lane, block_base;
  std::vector<float> weight;

  RowTapTable(const AxisTaps& t, int in, int width) {
    const int n = static_cast<int>(t.first.size()), k_taps = t.taps;
    const int stride = (n + width - 1) / width * width;
    for (int x = 0; x < n; ++x) {
      left = std::max(left, -t.first[x]);
      right = std::max(right, t.first[x] + k_taps - in);
    }
    padded_size = left + in + right + 2 * width;
    // Past n: the last output's taps with zero weights (computed, never read).
    start.resize(stride);
    for (int x = 0; x < stride; ++x) start[x] = t.first[std::min(x, n - 1)] + left;
    if (k_taps > 1) {
      weight.assign(static_cast<size_t>(k_taps) * stride, 0.0f);
      for (int x = 0; x < n; ++x)
        for (int k = 0; k < k_taps; ++k) weight[k * stride + x] = t.weight[x * k_taps + k];
    }
    if (width > 1) {
      lane.assign(static_cast<size_t>(k_taps) * stride, 0);
      block_base.resize(stride / width);
      for (int b = 0; b < stride / width; ++b) {
        const int x0 = b * width;
        const auto [lo, hi] = std::minmax_element(&start[x0], &start[x0] + width);
        const bool fits = *hi + k_taps - *lo <= 2 * width;
        block_base[b] = fits ? *lo : -1;
        if (fits)
          for (int x = x0; x < x0 + width; ++x)
            for (int k = 0; k < k_taps; ++k) lane[k * stride + x] = start[x] + k - *lo;
      }
    }
    taps.taps = k_taps;
    taps.n = n;
    taps.stride = stride;
    taps.start = start.data();
    taps.weight = weight.empty() ? nullptr : weight.data();
    taps.lane = lane.empty() ? nullptr : lane.data();
    taps.block_base = block_base.empty() ? nullptr : block_base.data();
  }

  // The source row with its end pixels replicated `left` and `right` times.
  void pad(const float* row, int in, float* padded) const {
    std::fill(padded, padded + left, row[0]);
    std::copy(row, row + in, padded + left);
    std::fill(padded + left + in, padded + left + in + right, row[in - 1]);
  }
};

const ResizeRows& resize_rows_for(Isa isa) {
  // At most the active level, as Conv2d's kernel choice.
  if (static_cast<int>(isa) > static_cast<int>(active_isa())) isa = active_isa();
  switch (f32_level(isa)) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512: return resize_rows_avx512();
    case Isa::kAvx2: return resize_rows_avx2();
    case Isa::kScalar: break;
  }
  return resize_rows_scalar();
}

}  // namespace

void pixel_shuffle(const Channels& src, const Channels& dst, int factor) {
  const int r = factor;
  if (r < 1) throw std::invalid_argument("pixel_shuffle: factor must be at least 1");
  if (src.size() % (r * r) != 0)
    throw std::invalid_argument("pixel_shuffle: " + std::to_string(src.size()) +
                                " channels do not divide by factor^2 = " +
                                std::to_string(r * r));
  if (src.size() != dst.size() * r * r || dst.height != src.height * r ||
      dst.width != src.width * r)
    throw std::invalid_argument("pixel_shuffle: factor " + std::to_string(r) + " maps " +
                                size_of(src) + " to (" + std::to_string(src.size() / (r * r)) +
                                ", " + std::to_string(src.height * r) + ", " +
                                std::to_string(src.width * r) + "), not " + size_of(dst));
  check_disjoint(src, dst, "pixel_shuffle");
  parallel_for(static_cast<size_t>(dst.size()) * dst.height, [&](size_t task) {
    const int c = static_cast<int>(task / dst.height), oy = static_cast<int>(task % dst.height);
    const int y = oy / r, i = oy % r;
    float* d = row_out(dst, c, oy);
    for (int j = 0; j < r; ++j) {
      const float* s = row(src, (c * r + i) * r + j, y);
      for (int x = 0; x < src.width; ++x) d[x * r + j] = s[x];
    }
  });
}

void pixel_unshuffle(const Channels& src, const Channels& dst, int factor) {
  const int r = factor;
  if (r < 1) throw std::invalid_argument("pixel_unshuffle: factor must be at least 1");
  if (src.height % r != 0 || src.width % r != 0)
    throw std::invalid_argument("pixel_unshuffle: factor " + std::to_string(r) +
                                " does not divide the input size " + size_of(src));
  if (dst.size() != src.size() * r * r || dst.height * r != src.height ||
      dst.width * r != src.width)
    throw std::invalid_argument("pixel_unshuffle: factor " + std::to_string(r) + " maps " +
                                size_of(src) + " to (" + std::to_string(src.size() * r * r) +
                                ", " + std::to_string(src.height / r) + ", " +
                                std::to_string(src.width / r) + "), not " + size_of(dst));
  check_disjoint(src, dst, "pixel_unshuffle");
  parallel_for(static_cast<size_t>(dst.size()) * dst.height, [&](size_t task) {
    const int oc = static_cast<int>(task / dst.height), y = static_cast<int>(task % dst.height);
    const int c = oc / (r * r), i = (oc / r) % r, j = oc % r;
    const float* s = row(src, c, y * r + i);
    float* d = row_out(dst, oc, y);
    for (int x = 0; x < dst.width; ++x) d[x] = s[x * r + j];
  });
}

ResizeMode resize_mode_from_name(const std::string& name) {
  if (name == "nearest") return ResizeMode::kNearest;
  if (name == "bilinear") return ResizeMode::kBilinear;
  if (name == "bicubic") return ResizeMode::kBicubic;
  throw std::invalid_argument("unknown resize mode '" + name +
                              "' (expected nearest, bilinear or bicubic)");
}

void resize(const Channels& src, const Channels& dst, ResizeMode mode, bool align_corners,
            double scale_h, double scale_w, Isa isa) {
  if (src.size() != dst.size())
    throw std::invalid_argument("resize: channel counts differ (" + size_of(src) + " to " +
                                size_of(dst) + ")");
  if (mode == ResizeMode::kNearest && align_corners)
    throw std::invalid_argument("resize: align_corners applies to bilinear and bicubic only");
  if (!(scale_h >= 0.0) || !(scale_w >= 0.0))
    throw std::invalid_argument("resize: scales must be positive (or 0: from the sizes)");
  check_disjoint(src, dst, "resize");
  if (dst.size() == 0 || dst.height == 0 || dst.width == 0) return;
  const ResizeRows& rows = resize_rows_for(isa);
  const AxisTaps ty = axis_taps(mode, src.height, dst.height, align_corners, scale_h);
  const AxisTaps tx = axis_taps(mode, src.width, dst.width, align_corners, scale_w);
  const RowTapTable along_row(tx, src.width, rows.width);
  const int taps = ty.taps, stride = along_row.taps.stride;
  const bool stream =
      static_cast<int64_t>(dst.size()) * dst.height * dst.width * 4 > kStreamOutBytes;
  // Tasks of whole bands of output rows: a band resizes each source row it
  // needs along the row once. About 4 tasks a thread balance the load.
  const int channels = dst.size(), height = dst.height;
  int bands = std::max(1, (4 * num_threads() + channels - 1) / channels);
  bands = std::min(bands, std::max(1, height / 16));
  const int band_rows = (height + bands - 1) / bands;
  bands = (height + band_rows - 1) / band_rows;
  parallel_for(static_cast<size_t>(channels) * bands, [&](size_t task) {
    const int c = static_cast<int>(task / bands), band = static_cast<int>(task % bands);
    const int oy0 = band * band_rows, oy1 = std::min(height, oy0 + band_rows);
    std::vector<float> padded(along_row.padded_size, 0.0f);
    // Source rows resized along the row, source row y in slot y % taps: the
    // rows of one output are consecutive, and move on monotonically.
    std::vector<float> resized(static_cast<size_t>(taps) * stride);
    int held[4] = {-1, -1, -1, -1};
    const float* sum_rows[4];
    for (int oy = oy0; oy < oy1; ++oy) {
      for (int k = 0; k < taps; ++k) {
        const int y = ty.index[oy * taps + k], slot = y % taps;
        float* r = &resized[static_cast<size_t>(slot) * stride];
        if (held[slot] != y) {
          along_row.pad(row(src, c, y), src.width, padded.data());
          rows.horizontal(along_row.taps, padded.data(), r);
          held[slot] = y;
        }
        sum_rows[k] = r;
      }
      rows.vertical(sum_rows, &ty.weight[oy * taps], taps, dst.width, row_out(dst, c, oy),
                    stream);
    }
  });
}

}  // namespace sparsr
