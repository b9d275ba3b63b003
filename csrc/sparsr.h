// Common types of the sparsr native core.
//
// Activations are channel-planar: every channel is a (h + 2) x ld plane of
// floats with a one-pixel zero border, interior pixel (y, x) at
// plane[(y + 1) * ld + x + 1]. A 3x3 "same" convolution then reads its input
// without bounds checks, and kernels vectorise along a row of pixels while
// broadcasting one weight (the layout the best sparse CPU kernels use).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace sparsr {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // throws std::invalid_argument
Isa detected_isa();                          // best level this CPU and OS support
Isa active_isa();                            // detected, lowered by SPARSR_ISA
bool isa_supported(Isa isa);                 // at or below the active level

// A horizontal run of pixels [x0, x1) in row y (interior coordinates).
struct Run {
  int32_t y;
  int32_t x0;
  int32_t x1;
};

// Extra floats after every feature buffer: vector loads of a row tail may read
// past the last plane (the lanes are masked out on store).
constexpr int64_t kFeatureSlack = 128;
// Row stride alignment in floats.
constexpr int64_t kRowAlign = 16;

inline int64_t padded_row_stride(int w) {
  return (static_cast<int64_t>(w) + 2 + kRowAlign - 1) / kRowAlign * kRowAlign;
}

// Everything one call of a convolution micro-kernel needs. One call covers a
// list of runs and every output-channel block of the layer.
struct ConvTask {
  const float* const* in;        // input plane pointers, cin_total of them
  float* const* out;             // output plane pointers, cout of them
  const float* const* residual;  // nullable: added after the activation
  int64_t ld;                    // row stride shared by all planes
  const Run* runs;
  size_t n_runs;
  int cin;                       // input channels read (a prefix of the layer's)
  int cout;                      // output channels written (a prefix)
  bool relu;                     // max(r, 0), when slopes is null
  // Nullable: leaky ReLU / PReLU, r >= 0 ? r : slopes[o] * r for output
  // channel o (indexed as out), in place of relu.
  const float* slopes = nullptr;
  // The output is larger than the caches and nothing reads it soon: whole
  // aligned vectors may be stored past the caches (no read for ownership).
  bool stream_out = false;
};

// The task's activation of one output of channel o, for the scalar twins (the
// vector kernels compute the same: see negative_slope in simd.h).
inline float conv_activation(const ConvTask& t, int o, float r) {
  if (t.slopes) return r >= 0.0f ? r : t.slopes[o] * r;
  return t.relu && r < 0.0f ? 0.0f : r;
}

// Weights of one layer, packed for one micro-kernel. Each format documents
// how it uses the arrays beside its pack function.
struct PackedConv {
  int cout = 0, cin = 0, ksize = 0;
  int block = 1;                 // output channels per register block
  int n = 0, m = 0;              // N:M formats: N kept of every M input channels
  std::vector<float> bias;       // cout rounded up to block, zero padded
  // dense: [cout / block][cin][ksize * ksize][block]
  std::vector<float> weights;
  std::vector<int32_t> index;    // sparse formats: positions / offsets
  std::vector<int32_t> counts;   // sparse formats: nonzeros per row or group
};

using ConvKernelFn = void (*)(const PackedConv& w, const ConvTask& task);

// One entry per micro-kernel; the single list lives in kernels.inc.
struct KernelInfo {
  const char* name;
  const char* format;  // "dense", ...
  int ksize;
  Isa isa;
  int block;           // output channels per register block
  int tile;            // pixels per register tile
  ConvKernelFn fn;
};

const std::vector<KernelInfo>& kernel_table();
// The kernel for (format, ksize) at the given level, falling back to lower ones.
const KernelInfo& find_kernel(const std::string& format, int ksize, Isa isa);

// Options of a sparse format, as given by the caller (a checkpoint layer).
struct FormatOptions {
  int n = 0, m = 0;  // N:M
};

PackedConv pack_dense(const float* weight_oihw, const float* bias, int cout, int cin,
                      int ksize, int block);
// N:M 3x3 layout (pack_nm): input channels per chunk, and ints per
// (output channel, chunk) in PackedConv::counts.
constexpr int kNmChunkChannels = 16;
constexpr int kNmCountStride = 9;
PackedConv pack_nm(const float* weight_oihw, const float* bias, int cout, int cin, int ksize,
                   int n, int m);
PackedConv pack_csr(const float* weight_oihw, const float* bias, int cout, int cin, int ksize);
// Time of the CSR kernel over the dense one for these weights at this level,
// estimated (< 1: CSR is faster); and the work measure it rests on. csr-cost.cc.
double csr_relative_cost(const float* weight_oihw, int cout, int cin, int ksize, Isa isa);
double csr_work_fraction(const float* weight_oihw, int cout, int cin, int ksize);

// Packs OIHW weights for the given kernel (dispatches on kernel.format).
PackedConv pack_for(const KernelInfo& kernel, const float* weight_oihw, const float* bias,
                    int cout, int cin, int ksize, const FormatOptions& options);

}  // namespace sparsr
