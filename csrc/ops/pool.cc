// Pooling: one task per (channel, output row); each output clips its window
// to the input, which is all the padding does (max ignores it, and the
// average still divides by the whole window).
#include "pool.h"

#include <algorithm>
#include <limits>
#include <string>

#include "threadpool.h"

namespace sparsr {
namespace {

std::string size_text(int h, int w) { return std::to_string(h) + "x" + std::to_string(w); }

constexpr int kMaxPoolWindow = 64;

template <class Reduce>
void pool(const char* op, const Channels& src, const Channels& dst, const Window2d& k,
          Reduce reduce) {
  const std::pair<int, int> size = pool_out_size(k, src.height, src.width);
  if (dst.height != size.first || dst.width != size.second)
    throw std::invalid_argument(std::string(op) + ": output is " +
                                size_text(dst.height, dst.width) + " but a " +
                                size_text(src.height, src.width) + " input gives " +
                                size_text(size.first, size.second));
  if (dst.size() != src.size())
    throw std::invalid_argument(std::string(op) + ": output has " + std::to_string(dst.size()) +
                                " channels, the input " + std::to_string(src.size()));
  for (float* p : dst.planes)
    if (std::find(src.planes.begin(), src.planes.end(), p) != src.planes.end())
      throw std::invalid_argument(std::string(op) + ": output shares a plane with the input");
  const int oh = dst.height, ow = dst.width;
  parallel_for(static_cast<size_t>(dst.size()) * oh, [&](size_t task) {
    const int c = static_cast<int>(task / oh), oy = static_cast<int>(task % oh);
    const int y0 = std::max(0, oy * k.sh - k.ph), y1 = std::min(src.height, oy * k.sh - k.ph + k.kh);
    const float* plane = src.planes[c] + 1;
    float* out = dst.planes[c] + (oy + 1) * dst.ld + 1;
    for (int ox = 0; ox < ow; ++ox) {
      const int x0 = std::max(0, ox * k.sw - k.pw), x1 = std::min(src.width, ox * k.sw - k.pw + k.kw);
      out[ox] = reduce(plane, src.ld, y0, y1, x0, x1);
    }
  });
}

}  // namespace

std::pair<int, int> pool_out_size(const Window2d& k, int height, int width) {
  if (k.kh < 1 || k.kw < 1 || k.kh > kMaxPoolWindow || k.kw > kMaxPoolWindow)
    throw std::invalid_argument("pool: kernel must be in [1, " + std::to_string(kMaxPoolWindow) +
                                "], got " + size_text(k.kh, k.kw));
  if (k.sh < 1 || k.sw < 1)
    throw std::invalid_argument("pool: stride must be positive, got " + size_text(k.sh, k.sw));
  if (k.ph < 0 || k.pw < 0 || 2 * k.ph > k.kh || 2 * k.pw > k.kw)
    throw std::invalid_argument("pool: padding " + size_text(k.ph, k.pw) +
                                " must be at most half the kernel " + size_text(k.kh, k.kw));
  if (k.dh != 1 || k.dw != 1) throw std::invalid_argument("pool: dilation is not supported");
  const int span_h = height + 2 * k.ph - k.kh, span_w = width + 2 * k.pw - k.kw;
  if (height < 1 || width < 1 || span_h < 0 || span_w < 0)
    throw std::invalid_argument("pool: a " + size_text(height, width) +
                                " input is smaller than the " + size_text(k.kh, k.kw) +
                                " window (padding " + size_text(k.ph, k.pw) + ")");
  return {span_h / k.sh + 1, span_w / k.sw + 1};
}

void max_pool(const Channels& src, const Channels& dst, const Window2d& window) {
  pool("max_pool", src, dst, window,
       [](const float* plane, int64_t ld, int y0, int y1, int x0, int x1) {
         float m = -std::numeric_limits<float>::infinity();
         for (int y = y0; y < y1; ++y) {
           const float* row = plane + (y + 1) * ld;
           // A NaN wins, as in PyTorch.
           for (int x = x0; x < x1; ++x) m = (row[x] > m || row[x] != row[x]) ? row[x] : m;
         }
         return m;
       });
}

void avg_pool(const Channels& src, const Channels& dst, const Window2d& window) {
  // Floor mode keeps every window inside the padded input: the divisor is
  // always the whole window (count_include_pad).
  const float count = static_cast<float>(window.kh * window.kw);
  pool("avg_pool", src, dst, window,
       [count](const float* plane, int64_t ld, int y0, int y1, int x0, int x1) {
         float sum = 0.0f;
         for (int y = y0; y < y1; ++y) {
           const float* row = plane + (y + 1) * ld;
           for (int x = x0; x < x1; ++x) sum += row[x];
         }
         return sum / count;
       });
}

}  // namespace sparsr
