#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include <sys/mman.h>

#include "threadpool.h"

namespace sparsr {

// ---------------------------------------------------------------- Feature

namespace {

// Large feature buffers come back to this pool instead of the OS: a fresh
// mapping costs a page fault per 4 KiB on first touch, which for a network
// that allocates dozens of 60 MB features per pass costs more than the
// convolutions it feeds. Freed buffers are kept up to a byte limit and reused
// for requests of the same size.
class BufferPool {
 public:
  static BufferPool& get() {
    static BufferPool* pool = new BufferPool();  // outlives static teardown
    return *pool;
  }

  float* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        float* p = it->second;
        free_.erase(it);
        pooled_ -= bytes;
        return p;
      }
    }
    // 2 MB aligned and advised as huge pages: a convolution tile reads a row
    // of every input channel, each in its own 4 KB page, which alone overflows
    // the first-level TLB (measured: a 1x1 256->64 over 360x640 on one thread,
    // 135 -> 130 ms).
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, rounded);
    if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    madvise(p, rounded, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
    return static_cast<float*>(p);
  }

  void give(float* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (pooled_ + bytes > kMaxPooledBytes) {
      std::free(p);
      return;
    }
    free_.emplace(bytes, p);
    pooled_ += bytes;
  }

 private:
  static constexpr size_t kHugePage = size_t(2) << 20;
  static constexpr size_t kMaxPooledBytes = size_t(1) << 30;
  std::mutex mutex_;
  std::multimap<size_t, float*> free_;
  size_t pooled_ = 0;
};

// Buffers below this size come from malloc's own free lists cheaply.
constexpr size_t kPoolMinBytes = size_t(1) << 20;

}  // namespace

void Feature::Free::operator()(float* p) const {
  if (bytes >= kPoolMinBytes) {
    BufferPool::get().give(p, bytes);
  } else {
    std::free(p);
  }
}

Feature::Feature(int channels, int height, int width, int written)
    : channels_(channels), height_(height), width_(width), data_(nullptr, Free{}) {
  if (channels <= 0 || height <= 0 || width <= 0)
    throw std::invalid_argument("feature dimensions must be positive, got " +
                                std::to_string(channels) + "x" + std::to_string(height) + "x" +
                                std::to_string(width));
  if (written < 0 || written > channels)
    throw std::invalid_argument("written planes must be in [0, channels], got " +
                                std::to_string(written));
  ld_ = padded_row_stride(width);
  plane_ = (static_cast<int64_t>(height) + 2) * ld_;
  const size_t bytes =
      ((static_cast<size_t>(channels) * plane_ + kFeatureSlack) * sizeof(float) + 63) / 64 * 64;
  float* p;
  if (bytes >= kPoolMinBytes) {
    p = BufferPool::get().take(bytes);
    // Zero in parallel: every feature starts all zero (borders, and the
    // sparse channels at unimportant pixels that SMSR never writes), except
    // the interiors of the planes the caller writes.
    const size_t chunk = 1 << 20;
    const size_t skip = static_cast<size_t>(written) * plane_ * sizeof(float);
    const size_t n = (bytes - skip + chunk - 1) / chunk;
    char* base = reinterpret_cast<char*>(p);
    parallel_for(n, [&](size_t i) {
      const size_t begin = skip + i * chunk;
      std::memset(base + begin, 0, std::min(chunk, bytes - begin));
    });
    parallel_for(static_cast<size_t>(written), [&](size_t c) {
      float* plane = p + c * plane_;
      std::memset(plane, 0, ld_ * sizeof(float));                            // top border row
      std::memset(plane + (height + 1) * ld_, 0, ld_ * sizeof(float));       // bottom border row
      for (int y = 1; y <= height; ++y) {
        float* row = plane + y * ld_;
        row[0] = 0.0f;                                                       // left border
        std::memset(row + width + 1, 0, (ld_ - width - 1) * sizeof(float));  // right border, padding
      }
    });
  } else {
    p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
  }
  data_ = std::unique_ptr<float, Free>(p, Free{bytes});
}

// ---------------------------------------------------------------- Channels

Channels Channels::of(const std::shared_ptr<Feature>& f) {
  std::vector<int> all(f->channels());
  for (int i = 0; i < f->channels(); ++i) all[i] = i;
  return of(f, all);
}

Channels Channels::of(const std::shared_ptr<Feature>& f, const std::vector<int>& indices) {
  Channels c;
  c.height = f->height();
  c.width = f->width();
  c.ld = f->ld();
  c.owners.push_back(f);
  for (int i : indices) {
    if (i < 0 || i >= f->channels())
      throw std::out_of_range("channel index " + std::to_string(i) + " out of range for a " +
                              std::to_string(f->channels()) + "-channel feature");
    c.planes.push_back(f->plane(i));
  }
  return c;
}

Channels Channels::cat(const std::vector<Channels>& parts) {
  Channels c;
  for (const Channels& p : parts) {
    if (c.owners.empty() && c.planes.empty()) {
      c.height = p.height;
      c.width = p.width;
      c.ld = p.ld;
    } else if (p.height != c.height || p.width != c.width) {
      throw std::invalid_argument("cannot concatenate channels of different sizes");
    }
    c.planes.insert(c.planes.end(), p.planes.begin(), p.planes.end());
    c.owners.insert(c.owners.end(), p.owners.begin(), p.owners.end());
  }
  return c;
}

// ---------------------------------------------------------------- PixelSet

PixelSet PixelSet::full(int height, int width) {
  PixelSet s;
  s.height = height;
  s.width = width;
  s.runs.reserve(height);
  for (int y = 0; y < height; ++y) s.runs.push_back(Run{y, 0, width});
  s.count = static_cast<int64_t>(height) * width;
  return s;
}

PixelSet PixelSet::from_mask(const uint8_t* mask, int mask_h, int mask_w, int height, int width) {
  PixelSet s;
  s.height = height;
  s.width = width;
  const int rows = std::min(mask_h, height), cols = std::min(mask_w, width);
  for (int y = 0; y < rows; ++y) {
    const uint8_t* m = mask + static_cast<size_t>(y) * mask_w;
    int x = 0;
    while (x < cols) {
      while (x < cols && !m[x]) ++x;
      if (x == cols) break;
      const int x0 = x;
      while (x < cols && m[x]) ++x;
      s.runs.push_back(Run{y, x0, x});
      s.count += x - x0;
    }
  }
  return s;
}

PixelSet PixelSet::complement() const {
  PixelSet s;
  s.height = height;
  s.width = width;
  size_t r = 0;
  for (int y = 0; y < height; ++y) {
    int x = 0;
    for (; r < runs.size() && runs[r].y == y; ++r) {
      if (runs[r].x0 > x) s.runs.push_back(Run{y, x, runs[r].x0});
      x = runs[r].x1;
    }
    if (x < width) s.runs.push_back(Run{y, x, width});
  }
  s.count = static_cast<int64_t>(height) * width - count;
  return s;
}

// Outputs of more bytes than this are streamed past the caches (ConvTask::stream_out).
constexpr int64_t kStreamOutBytes = 16 << 20;

std::vector<std::pair<size_t, size_t>> split_runs(const PixelSet& pixels, int64_t cost_per_pixel) {
  // Enough tasks to balance two or more threads, few enough to keep the
  // per-task overhead (a run costs a little even when short) small.
  std::vector<std::pair<size_t, size_t>> tasks;
  const size_t n = pixels.runs.size();
  if (n == 0) return tasks;
  const int64_t per_run_overhead = 16;
  int64_t total = 0;
  for (const Run& r : pixels.runs) total += (r.x1 - r.x0) + per_run_overhead;
  const int threads = num_threads();
  const int64_t min_task = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, cost_per_pixel));
  const int64_t target = std::max<int64_t>(min_task, total / (threads * 8) + 1);
  size_t begin = 0;
  int64_t acc = 0;
  for (size_t i = 0; i < n; ++i) {
    acc += (pixels.runs[i].x1 - pixels.runs[i].x0) + per_run_overhead;
    if (acc >= target) {
      tasks.emplace_back(begin, i + 1);
      begin = i + 1;
      acc = 0;
    }
  }
  if (begin < n) tasks.emplace_back(begin, n);
  return tasks;
}

// ---------------------------------------------------------------- Conv2d

Conv2d::Conv2d(const float* weight_oihw, const float* bias, int cout, int cin, int ksize, Isa isa,
               const std::string& format, const FormatOptions& options) {
  if (ksize != 1 && ksize != 3)
    throw std::invalid_argument("only 1x1 and 3x3 convolutions are supported, got " +
                                std::to_string(ksize) + "x" + std::to_string(ksize));
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("kernels of level ") + isa_name(isa) +
                                " are not available: the active level is " +
                                isa_name(active_isa()) + " (CPU or SPARSR_ISA)");
  kernel_ = &find_kernel(format, ksize, isa);
  packed_ = pack_for(*kernel_, weight_oihw, bias, cout, cin, ksize, options);
  const size_t size = static_cast<size_t>(cout) * cin * ksize * ksize;
  for (size_t i = 0; i < size; ++i) nnz_ += weight_oihw[i] != 0.0f;
}

static void check_geometry(const Channels& a, const Channels& b, const char* what) {
  if (a.height != b.height || a.width != b.width)
    throw std::invalid_argument(std::string(what) + ": feature sizes differ (" +
                                std::to_string(a.height) + "x" + std::to_string(a.width) + " vs " +
                                std::to_string(b.height) + "x" + std::to_string(b.width) + ")");
}

void Conv2d::run(const Channels& in, const Channels& out, const PixelSet& pixels, bool relu,
                 int cin, int cout, const Channels* residual) const {
  if (cin < 0) cin = packed_.cin;
  if (cout < 0) cout = packed_.cout;
  if (cin > packed_.cin || cin > in.size())
    throw std::invalid_argument("convolution reads " + std::to_string(cin) +
                                " input channels but the layer has " +
                                std::to_string(packed_.cin) + " and the input " +
                                std::to_string(in.size()));
  if (cout > packed_.cout || cout > out.size())
    throw std::invalid_argument("convolution writes " + std::to_string(cout) +
                                " output channels but the layer has " +
                                std::to_string(packed_.cout) + " and the output " +
                                std::to_string(out.size()));
  check_geometry(in, out, "convolution");
  if (in.ld != out.ld) throw std::invalid_argument("convolution: row strides differ");
  if (pixels.height != in.height || pixels.width != in.width)
    throw std::invalid_argument("convolution: pixel set does not match the feature size");
  if (residual) {
    check_geometry(*residual, out, "residual");
    if (residual->size() < cout) throw std::invalid_argument("residual has too few channels");
  }
  if (cout == 0 || pixels.runs.empty()) return;
  const bool accumulate = residual && residual->planes == out.planes;
  if ((!residual || accumulate) && use_gather(pixels)) {
    run_gathered(in, out, pixels, relu, cin, cout, accumulate);
    return;
  }
  const int64_t cost = static_cast<int64_t>(cin) * cout * packed_.ksize * packed_.ksize;
  const auto tasks = split_runs(pixels, cost);
  // An output far larger than L2 leaves the caches before the next layer
  // reads it: its whole lines are better written without first reading them.
  const bool stream_out = !residual && pixels.count * cout * int64_t{4} > kStreamOutBytes;
  parallel_for(tasks.size(), [&](size_t k) {
    ConvTask t;
    t.in = in.planes.data();
    t.out = out.planes.data();
    t.residual = residual ? residual->planes.data() : nullptr;
    t.ld = in.ld;
    t.runs = pixels.runs.data() + tasks[k].first;
    t.n_runs = tasks[k].second - tasks[k].first;
    t.cin = cin;
    t.cout = cout;
    t.relu = relu;
    t.stream_out = stream_out;
    kernel_->fn(packed_, t);
  });
}

int64_t Conv2d::gather_max_mean_run() {
  // SPARSR_GATHER_MAX_RUN overrides the threshold (0 disables gathering), for
  // measuring what gathering gains.
  static const int64_t value = [] {
    const char* env = std::getenv("SPARSR_GATHER_MAX_RUN");
    return env && *env ? std::max<int64_t>(0, std::atoll(env)) : kGatherMaxMeanRun;
  }();
  return value;
}

bool Conv2d::use_gather(const PixelSet& pixels) {
  // Short runs leave most vector lanes of a pixel tile idle; gathered into one
  // long row they fill the tiles again. Whole rows (dense mode) never gather.
  return pixels.count < static_cast<int64_t>(pixels.runs.size()) * gather_max_mean_run();
}

namespace {

// Runs grouped so that each group's gathered row stays about this wide.
constexpr int64_t kGatherColumns = 480;

struct GatherBuffers {
  std::vector<float> in, out;
  std::vector<const float*> in_planes;
  std::vector<float*> out_planes;
};

// n floats of v from its first 64-byte boundary on.
float* aligned_floats(std::vector<float>& v, size_t n) {
  constexpr size_t kAlignFloats = 16;
  v.resize(n + kAlignFloats);
  const auto address = reinterpret_cast<uintptr_t>(v.data());
  return v.data() + (kAlignFloats - address / sizeof(float) % kAlignFloats) % kAlignFloats;
}

GatherBuffers& gather_buffers() {
  thread_local GatherBuffers buffers;
  return buffers;
}

}  // namespace

// Copies n floats in blocks of kCopyOver, the last block whole: inline, with
// no call and no tail loop, for the many short runs of a gather.
constexpr int64_t kCopyOver = 16;
// Runs are scattered over features far larger than the caches, so copies wait
// on memory: while copying channel c, the same runs of channel c + kGatherAhead
// are prefetched (measured: a 1x1 over SMSR's important pixels 1.6x faster,
// a 3x3 1.2x; 2 and 8 channels ahead did less well than 4).
constexpr int kGatherAhead = 4;
static_assert(kFeatureSlack >= kCopyOver, "over-copies must stay inside a feature");
inline void copy_over(float* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; i += kCopyOver) std::memcpy(dst + i, src + i, kCopyOver * sizeof(float));
}

// Gather -> convolve -> scatter. Each run is copied with a halo of ksize / 2
// pixels on both sides (and the rows above and below for a 3x3) into a short
// planar feature of a single row; the layer's own kernel then convolves that
// row as one long run, halo positions included (their results are dropped),
// and the run results are copied (or added, when accumulating) back.
void Conv2d::run_gathered(const Channels& in, const Channels& out, const PixelSet& pixels,
                          bool relu, int cin, int cout, bool accumulate) const {
  const int halo = packed_.ksize / 2;
  std::vector<size_t> group_begin{0};
  int64_t width = 0;
  for (size_t r = 0; r < pixels.runs.size(); ++r) {
    const int64_t w = pixels.runs[r].x1 - pixels.runs[r].x0 + 2 * halo;
    if (width > 0 && width + w > kGatherColumns) {
      group_begin.push_back(r);
      width = 0;
    }
    width += w;
  }
  group_begin.push_back(pixels.runs.size());

  parallel_for(group_begin.size() - 1, [&](size_t g) {
    const size_t r0 = group_begin[g], r1 = group_begin[g + 1];
    int64_t cols = 0;
    for (size_t r = r0; r < r1; ++r) cols += pixels.runs[r].x1 - pixels.runs[r].x0 + 2 * halo;
    // Plane column of segment data starts at 1 - halo, so that interior x = 0
    // is the first output of the first run.
    const int64_t end = 1 - halo + cols;
    const int64_t ld = (end + 1 + kRowAlign - 1) / kRowAlign * kRowAlign;
    const int64_t plane = 3 * ld;
    GatherBuffers& buf = gather_buffers();
    // Planes start on a cache line, as in a Feature: the kernels' aligned
    // loads would otherwise all split lines (measured: the CSR kernel 1.3x
    // slower on a vector's default 16-byte alignment).
    float* in_base = aligned_floats(buf.in, static_cast<size_t>(cin) * plane + kFeatureSlack);
    float* out_base = aligned_floats(buf.out, static_cast<size_t>(cout) * plane + kFeatureSlack);
    buf.in_planes.resize(cin);
    buf.out_planes.resize(packed_.cout);
    for (int c = 0; c < cin; ++c) buf.in_planes[c] = in_base + c * plane;
    for (int c = 0; c < cout; ++c) buf.out_planes[c] = out_base + c * plane;

    // Rows of every run, in increasing buffer order: a copy may write up to
    // kCopyOver - 1 floats past its end (into buffer slack, or a place a
    // later copy fills), and reads as far past the run in the source
    // (features carry kFeatureSlack floats after the last plane).
    const int first_row = 1 - halo, n_rows = 2 * halo + 1;
    for (int c = 0; c < cin; ++c) {
      float* dst_plane = in_base + c * plane;
      for (int dy = 0; dy < n_rows; ++dy) {
        float* dst_row = dst_plane + (first_row + dy) * ld;
        const float* src_row = in.planes[c] + (first_row + dy + 1) * in.ld + 1 - halo;
        int64_t pos = 1 - halo;
        const float* ahead_row = c + kGatherAhead < cin
            ? in.planes[c + kGatherAhead] + (first_row + dy + 1) * in.ld + 1 - halo : nullptr;
        for (size_t r = r0; r < r1; ++r) {
          const Run run = pixels.runs[r];
          const int64_t n = run.x1 - run.x0 + 2 * halo;
          const int64_t at = (run.y - 1) * in.ld + run.x0;
          if (ahead_row) {
            __builtin_prefetch(ahead_row + at);
            __builtin_prefetch(ahead_row + at + n - 1);
          }
          copy_over(dst_row + pos, src_row + at, n);
          pos += n;
        }
      }
    }

    ConvTask t;
    t.in = buf.in_planes.data();
    t.out = buf.out_planes.data();
    t.residual = nullptr;
    t.ld = ld;
    const Run row{0, 0, static_cast<int32_t>(end - halo)};
    t.runs = &row;
    t.n_runs = 1;
    t.cin = cin;
    t.cout = cout;
    t.relu = relu;
    kernel_->fn(packed_, t);

    for (int c = 0; c < cout; ++c) {
      const float* src_plane = out_base + c * plane + ld + 1;  // interior row 0
      float* ahead = c + kGatherAhead < cout ? out.planes[c + kGatherAhead] : nullptr;
      int64_t pos = 0;
      for (size_t r = r0; r < r1; ++r) {
        const Run run = pixels.runs[r];
        const int n = run.x1 - run.x0;
        const float* src = src_plane + pos;
        const int64_t at = (run.y + 1) * out.ld + run.x0 + 1;
        if (ahead) {
          __builtin_prefetch(ahead + at, 1);
          __builtin_prefetch(ahead + at + n - 1, 1);
        }
        float* dst = out.planes[c] + at;
        // Exact and inline: runs average 5-10 pixels.
        if (accumulate) {
          for (int i = 0; i < n; ++i) dst[i] += src[i];
        } else {
          for (int i = 0; i < n; ++i) dst[i] = src[i];
        }
        pos += n + 2 * halo;
      }
    }
  });
}

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

namespace {

void cubic_weights(float t, float w[4]) {
  const float a = -0.75f;
  auto near = [a](float x) { return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f; };
  auto far = [a](float x) { return ((a * x - 5.0f * a) * x + 8.0f * a) * x - 4.0f * a; };
  w[0] = far(t + 1.0f);
  w[1] = near(t);
  w[2] = near(1.0f - t);
  w[3] = far(2.0f - t);
}

struct Taps {
  std::vector<int> index;   // 4 per output position, clamped
  std::vector<float> weight;
};

Taps bicubic_taps(int in_size, int out_size, int scale) {
  Taps t;
  t.index.resize(out_size * 4);
  t.weight.resize(out_size * 4);
  const float ratio = 1.0f / static_cast<float>(scale);
  for (int o = 0; o < out_size; ++o) {
    const float src = (o + 0.5f) * ratio - 0.5f;
    const float fl = std::floor(src);
    const int i0 = static_cast<int>(fl);
    cubic_weights(src - fl, &t.weight[o * 4]);
    for (int k = 0; k < 4; ++k)
      t.index[o * 4 + k] = std::min(std::max(i0 - 1 + k, 0), in_size - 1);
  }
  return t;
}

}  // namespace

void upsample_bicubic(const Channels& src, int scale, const Channels& dst) {
  if (dst.height != src.height * scale || dst.width != src.width * scale ||
      dst.size() != src.size())
    throw std::invalid_argument("upsample_bicubic: output must be scale times the input size");
  const Taps ty = bicubic_taps(src.height, dst.height, scale);
  const Taps tx = bicubic_taps(src.width, dst.width, scale);
  parallel_for(static_cast<size_t>(dst.size()) * dst.height, [&](size_t task) {
    const int c = static_cast<int>(task / dst.height);
    const int oy = static_cast<int>(task % dst.height);
    std::vector<float> row(src.width);
    for (int x = 0; x < src.width; ++x) {
      float v = 0.0f;
      for (int k = 0; k < 4; ++k)
        v += ty.weight[oy * 4 + k] * src.planes[c][(ty.index[oy * 4 + k] + 1) * src.ld + 1 + x];
      row[x] = v;
    }
    float* d = dst.planes[c] + (oy + 1) * dst.ld + 1;
    for (int ox = 0; ox < dst.width; ++ox) {
      float v = 0.0f;
      for (int k = 0; k < 4; ++k) v += tx.weight[ox * 4 + k] * row[tx.index[ox * 4 + k]];
      d[ox] = v;
    }
  });
}

}  // namespace sparsr
