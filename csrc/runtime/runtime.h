// The runtime's data: feature buffers (pooled), channel lists, pixel sets, and
// Conv2d, a layer packed for one micro-kernel and run over a pixel set.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "sparsr.h"

namespace sparsr {

// C channel planes of (h + 2) x ld floats with a zero border; see sparsr.h.
class Feature {
 public:
  // All zero. Planes [0, written) are zeroed on their borders and row padding
  // only: the caller writes their every interior pixel before anything reads
  // them (measured: zeroing every plane cost SMSR about 0.02 s of a 1.1 s pass
  // at 640x360).
  Feature(int channels, int height, int width, int written = 0);
  Feature(const Feature&) = delete;
  Feature& operator=(const Feature&) = delete;

  int channels() const { return channels_; }
  int height() const { return height_; }
  int width() const { return width_; }
  int64_t ld() const { return ld_; }
  int64_t plane_size() const { return plane_; }
  float* plane(int c) { return data_.get() + c * plane_; }
  const float* plane(int c) const { return data_.get() + c * plane_; }
  float& at(int c, int y, int x) { return plane(c)[(y + 1) * ld_ + x + 1]; }
  float at(int c, int y, int x) const { return plane(c)[(y + 1) * ld_ + x + 1]; }

 private:
  struct Free {
    size_t bytes = 0;
    size_t mapped = 0;   // the pooled buffer's own size (0: from malloc)
    bool arena = false;  // from the band arena (its own size: mapped)
    void operator()(float* p) const;
  };
  int channels_, height_, width_;
  int64_t ld_, plane_;
  std::unique_ptr<float, Free> data_;
};

// An ordered list of channel planes of the same geometry, possibly from
// several features: concatenation and channel permutation cost nothing.
struct Channels {
  std::vector<float*> planes;
  std::vector<std::shared_ptr<Feature>> owners;
  int height = 0, width = 0;
  int64_t ld = 0;

  static Channels of(const std::shared_ptr<Feature>& f);
  static Channels of(const std::shared_ptr<Feature>& f, const std::vector<int>& indices);
  static Channels cat(const std::vector<Channels>& parts);
  int size() const { return static_cast<int>(planes.size()); }
};

// A set of pixels as runs, sorted by row.
struct PixelSet {
  int height = 0, width = 0;
  std::vector<Run> runs;
  int64_t count = 0;

  static PixelSet full(int height, int width);
  // mask: mask_h x mask_w bytes, nonzero = in the set; pixels of the
  // (height x width) image outside the mask are not in the set.
  static PixelSet from_mask(const uint8_t* mask, int mask_h, int mask_w, int height, int width);
  PixelSet complement() const;
};

// A convolution layer packed for one micro-kernel.
class Conv2d {
 public:
  // format: "dense" or a sparse format of kernels.inc; the weights are given
  // densely (OIHW, zeros included) and packed here for the chosen kernel.
  // precision: "f32", "bf16" or "int8"; bf16 or int8 where the level has such
  // a kernel of the format, else f32 (choose_kernel; kernel().precision says
  // which). An int8 kernel quantizes its input by quant (pack_dense_int8).
  Conv2d(const float* weight_oihw, const float* bias, int cout, int cin, int ksize, Isa isa,
         const std::string& format = "dense", const FormatOptions& options = {},
         const std::string& precision = "f32", const Int8Input& quant = {});
  // out[0:cout] (+ residual) = act(conv(in[0:cin])) at the given pixels; cin
  // and cout default (-1) to the whole layer. act: ReLU when relu, the negative
  // slopes of output channels [0, cout) when slopes (leaky ReLU / PReLU; not
  // both), else none.
  void run(const Channels& in, const Channels& out, const PixelSet& pixels, bool relu,
           const float* slopes, int cin, int cout, const Channels* residual) const;
  const KernelInfo& kernel() const { return *kernel_; }
  // Pixel sets with a mean run shorter than this are gathered (run_gathered).
  // Measured on SMSR x2 at 640x360: important pixels (runs of 6-10) gain from
  // gathering; unimportant ones (runs of 25-45) run faster in place, where
  // 1x1 tiles start aligned (a whole pass 1.30 s at 40, 1.22 s at 12-16).
  static constexpr int64_t kGatherMaxMeanRun = 16;
  static bool use_gather(const PixelSet& pixels);
  static int64_t gather_max_mean_run();
  int cout() const { return packed_.cout; }
  int cin() const { return packed_.cin; }
  int ksize() const { return packed_.ksize; }
  int n() const { return packed_.n; }  // N:M formats, else 0
  int m() const { return packed_.m; }
  // Nonzero weights of the layer, whatever the format.
  int64_t nnz() const { return nnz_; }

 private:
  void run_gathered(const Channels& in, const Channels& out, const PixelSet& pixels, bool relu,
                    const float* slopes, int cin, int cout, bool accumulate) const;

  const KernelInfo* kernel_;
  PackedConv packed_;
  int64_t nnz_ = 0;
};

// Feature buffers freed by the network are pooled for reuse (same sizes);
// this returns them to the OS and gives the bytes released.
size_t release_pooled_buffers();
size_t pooled_buffer_bytes();
// Bytes of feature buffers mapped anew (not from the pool) since start: each
// page of them is cleared by the kernel at its first touch.
size_t mapped_buffer_bytes();
// Bytes of features alive now; and their most since the last reset (the
// reset returns that peak and starts the next one from the live bytes).
size_t live_feature_bytes();
size_t reset_peak_feature_bytes();
// The most bytes the pool keeps (default 1 GiB); gives the previous limit.
size_t set_pooled_buffer_limit(size_t bytes);
// Features this thread makes from now on ask the pool for `scale` (>= 1) times
// their bytes, the rest of the buffer unused: band execution makes a short
// band's features as large as the tallest band's, so that one set of buffers
// serves every band. Gives the previous scale.
double set_feature_request_scale(double scale);

// The band arena: one mapping of `bytes` from which the features this thread
// makes while arena use is on (set_arena_use) are carved, first touched once
// and reused by every band after the first, whatever the mix of sizes (the
// pool reuses a buffer only for a request of about its size). A request it
// cannot hold goes to the pool. Reserving keeps an arena at least that large
// (a smaller one is replaced once nothing in it is alive); gives its size.
size_t reserve_band_arena(size_t bytes);
bool set_arena_use(bool on);       // this thread's; gives the previous setting
// This thread's features (while arena use is on) from the arena's top end:
// features that outlive the band. Gives the previous setting.
bool set_arena_top(bool on);
size_t release_band_arena();        // unmapped, or its free pages dropped
size_t band_arena_bytes();          // its size (0: none)
size_t band_arena_touched_bytes();  // the bytes of it ever used (resident since)

// Splits runs into tasks of roughly equal pixel counts for the thread pool.
std::vector<std::pair<size_t, size_t>> split_runs(const PixelSet& pixels, int64_t cost_per_pixel);
// Throws std::invalid_argument naming `what` when a and b differ in height or width.
void check_geometry(const Channels& a, const Channels& b, const char* what);

}  // namespace sparsr
