// Conv2d: a packed layer run over pixel sets, in place or gathered.
#include "runtime.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "threadpool.h"

namespace sparsr {

// Outputs of more bytes than this are streamed past the caches (ConvTask::stream_out).
constexpr int64_t kStreamOutBytes = 16 << 20;

// ---------------------------------------------------------------- Conv2d

Conv2d::Conv2d(const float* weight_oihw, const float* bias, int cout, int cin, int ksize, Isa isa,
               const std::string& format, const FormatOptions& options,
               const std::string& precision, const Int8Input& quant) {
  if (ksize != 1 && ksize != 3)
    throw std::invalid_argument("only 1x1 and 3x3 convolutions are supported, got " +
                                std::to_string(ksize) + "x" + std::to_string(ksize));
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("kernels of level ") + isa_name(isa) +
                                " are not available: the active level is " +
                                isa_name(active_isa()) + " (CPU or SPARSR_ISA)");
  kernel_ = &choose_kernel(format, ksize, isa, precision);
  packed_ = pack_for(*kernel_, weight_oihw, bias, cout, cin, ksize, options, quant);
  const size_t size = static_cast<size_t>(cout) * cin * ksize * ksize;
  for (size_t i = 0; i < size; ++i) nnz_ += weight_oihw[i] != 0.0f;
}

void check_geometry(const Channels& a, const Channels& b, const char* what) {
  if (a.height != b.height || a.width != b.width)
    throw std::invalid_argument(std::string(what) + ": feature sizes differ (" +
                                std::to_string(a.height) + "x" + std::to_string(a.width) + " vs " +
                                std::to_string(b.height) + "x" + std::to_string(b.width) + ")");
}

void Conv2d::run(const Channels& in, const Channels& out, const PixelSet& pixels, bool relu,
                 const float* slopes, int cin, int cout, const Channels* residual) const {
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
  if (relu && slopes)
    throw std::invalid_argument("convolution: ReLU and negative slopes are exclusive");
  if (residual) {
    check_geometry(*residual, out, "residual");
    if (residual->size() < cout) throw std::invalid_argument("residual has too few channels");
  }
  if (cout == 0 || pixels.runs.empty()) return;
  const bool accumulate = residual && residual->planes == out.planes;
  if ((!residual || accumulate) && use_gather(pixels)) {
    run_gathered(in, out, pixels, relu, slopes, cin, cout, accumulate);
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
    t.slopes = slopes;
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
                          bool relu, const float* slopes, int cin, int cout,
                          bool accumulate) const {
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
    t.slopes = slopes;
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

}  // namespace sparsr
