// Whole-feature operations the SMSR module uses: fill, scale-add, ReLU, means,
// 2x2 pooling and the stride-2 transposed 3x3.
#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "threadpool.h"

namespace sparsr {

// ---------------------------------------------------------------- elementwise

void fill(const Channels& out, const PixelSet& pixels, float value) {
  if (pixels.height != out.height || pixels.width != out.width)
    throw std::invalid_argument("fill: pixel set does not match the feature size");
  const auto tasks = split_runs(pixels, out.size());
  parallel_for(tasks.size(), [&](size_t k) {
    for (size_t r = tasks[k].first; r < tasks[k].second; ++r) {
      const Run run = pixels.runs[r];
      for (float* p : out.planes) {
        float* row = p + (run.y + 1) * out.ld + 1;
        std::fill(row + run.x0, row + run.x1, value);
      }
    }
  });
}

void scale_add(const Channels& src, const std::vector<float>& scale, const Channels& residual,
               const Channels& dst) {
  check_geometry(src, dst, "scale_add");
  check_geometry(residual, dst, "scale_add");
  if (src.size() != dst.size() || residual.size() != dst.size() ||
      static_cast<int>(scale.size()) != dst.size())
    throw std::invalid_argument("scale_add: channel counts differ");
  parallel_for(dst.size(), [&](size_t c) {
    for (int y = 0; y < dst.height; ++y) {
      const float* s = src.planes[c] + (y + 1) * src.ld + 1;
      const float* r = residual.planes[c] + (y + 1) * residual.ld + 1;
      float* d = dst.planes[c] + (y + 1) * dst.ld + 1;
      const float k = scale[c];
      for (int x = 0; x < dst.width; ++x) d[x] = s[x] * k + r[x];
    }
  });
}

void relu_inplace(const Channels& x) {
  parallel_for(x.size(), [&](size_t c) {
    for (int y = 0; y < x.height; ++y) {
      float* d = x.planes[c] + (y + 1) * x.ld + 1;
      for (int i = 0; i < x.width; ++i) d[i] = d[i] > 0.0f ? d[i] : 0.0f;
    }
  });
}

std::vector<double> channel_means(const Channels& src) {
  std::vector<double> means(src.size());
  parallel_for(src.size(), [&](size_t c) {
    double total = 0.0;
    for (int y = 0; y < src.height; ++y) {
      const float* s = src.planes[c] + (y + 1) * src.ld + 1;
      float row = 0.0f;
      for (int x = 0; x < src.width; ++x) row += s[x];
      total += row;
    }
    means[c] = total / (static_cast<double>(src.height) * src.width);
  });
  return means;
}

void avg_pool2(const Channels& src, const Channels& dst) {
  if (dst.height != src.height / 2 || dst.width != src.width / 2 || dst.size() != src.size())
    throw std::invalid_argument("avg_pool2: output must be half the input size");
  parallel_for(dst.size(), [&](size_t c) {
    for (int y = 0; y < dst.height; ++y) {
      const float* a = src.planes[c] + (2 * y + 1) * src.ld + 1;
      const float* b = a + src.ld;
      float* d = dst.planes[c] + (y + 1) * dst.ld + 1;
      for (int x = 0; x < dst.width; ++x)
        d[x] = 0.25f * ((a[2 * x] + a[2 * x + 1]) + (b[2 * x] + b[2 * x + 1]));
    }
  });
}

void conv_transpose3x3_s2(const Channels& src, const float* weight, const float* bias, int cout,
                          const Channels& dst) {
  if (dst.height != 2 * src.height || dst.width != 2 * src.width || dst.size() != cout)
    throw std::invalid_argument("conv_transpose3x3_s2: output must be twice the input size");
  const int cin = src.size();
  // Output (oy, ox) gathers input (iy, ix) with oy = 2 iy - 1 + ky, i.e. for
  // even oy: ky = 1 at iy = oy / 2; for odd oy: ky = 2 at iy = (oy - 1) / 2 and
  // ky = 0 at iy = (oy + 1) / 2. Out-of-range inputs are zero (the border).
  parallel_for(static_cast<size_t>(cout) * dst.height, [&](size_t task) {
    const int o = static_cast<int>(task / dst.height);
    const int oy = static_cast<int>(task % dst.height);
    float* d = dst.planes[o] + (oy + 1) * dst.ld + 1;
    for (int ox = 0; ox < dst.width; ++ox) d[ox] = bias ? bias[o] : 0.0f;
    int ky_list[2], iy_list[2], n_rows = 0;
    if (oy % 2 == 0) {
      ky_list[n_rows] = 1; iy_list[n_rows++] = oy / 2;
    } else {
      ky_list[n_rows] = 2; iy_list[n_rows++] = (oy - 1) / 2;
      ky_list[n_rows] = 0; iy_list[n_rows++] = (oy + 1) / 2;
    }
    for (int i = 0; i < cin; ++i) {
      const float* w = weight + (static_cast<size_t>(i) * cout + o) * 9;
      for (int r = 0; r < n_rows; ++r) {
        // Row src.height is the zero border, so no range check is needed.
        const float* s = src.planes[i] + (iy_list[r] + 1) * src.ld + 1;
        const float* wk = w + ky_list[r] * 3;
        for (int ox = 0; ox < dst.width; ox += 2) {
          const int ix = ox / 2;
          d[ox] += wk[1] * s[ix];
          d[ox + 1] += wk[2] * s[ix] + wk[0] * s[ix + 1];
        }
      }
    }
  });
}

}  // namespace sparsr
