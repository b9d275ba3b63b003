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

// kAvx512Bf16: AVX-512 with AVX512_BF16 (vdpbf16ps) and AVX512_VNNI
// (vpdpbusd; every CPU with AVX512_BF16 has it, so it is no level of its own);
// kAmx: that plus AMX-TILE and AMX-BF16 (tile matrix multiplies) that the OS
// lets the process use. Both run the f32 kernels of kAvx512 and add bf16 and
// int8 ones (KernelInfo::precision).
enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };

const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // throws std::invalid_argument
Isa detected_isa();                          // best level this CPU and OS support
Isa active_isa();                            // detected, lowered by SPARSR_ISA
bool isa_supported(Isa isa);                 // at or below the active level
// The level whose f32 code runs at isa: operators without bf16 code run their
// kAvx512 code at kAvx512Bf16 and kAmx.
inline Isa f32_level(Isa isa) {
  return static_cast<int>(isa) > static_cast<int>(Isa::kAvx512) ? Isa::kAvx512 : isa;
}

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
  // bf16 formats: pairs of bf16 weights of input channels (2p, 2p + 1), 2p in
  // the low half; dense: [cout / block][(cin + 1) / 2][ksize * ksize][block].
  std::vector<uint32_t> pairs;
  // int8 formats (pack_dense_int8): pairs holds quads of s8 weights of input
  // channels 4q..4q + 3, channel 4q in the low byte; scales[o] turns output
  // o's int32 sum into f32 (in_scale * its weight scale); counts the prefix
  // sums of its s8 weights over input channels (the zero point's correction
  // for a call reading a prefix of them); in_inv and in_zero quantize inputs.
  std::vector<float> scales;
  float in_inv = 0.0f;
  int in_zero = 0;
};

using ConvKernelFn = void (*)(const PackedConv& w, const ConvTask& task);

// Quantization of a layer's input for int8 kernels (checkpoint calibration):
// u8 q = clamp(round(x / scale + zero_point), 0, 255), zero_point 0 (ReLU
// outputs, never negative) or 128.
struct Int8Input {
  float scale = 0.0f;
  int zero_point = 0;
};

// One entry per micro-kernel; the single list lives in kernels.inc.
struct KernelInfo {
  const char* name;
  const char* format;  // "dense", ...
  // "f32", or "bf16": weights and activations rounded to bfloat16 (RNE),
  // products summed in f32; or "int8": s8 weights (per output channel) times
  // u8 activations (Int8Input), summed in int32, dequantized to f32.
  const char* precision;
  int ksize;
  Isa isa;
  int block;           // output channels per register block
  int tile;            // pixels per register tile
  ConvKernelFn fn;
};

const std::vector<KernelInfo>& kernel_table();
// The kernel for (format, ksize) at the given level, falling back to lower ones.
const KernelInfo& find_kernel(const std::string& format, int ksize, Isa isa,
                              const std::string& precision = "f32");
// The kernel a layer asking for `precision` runs: a bf16 or int8 kernel of a
// vector level needs that level (kAvx512Bf16), so below it such a request runs
// the f32 kernel of the level; the scalar twins run at the scalar level only.
const KernelInfo& choose_kernel(const std::string& format, int ksize, Isa isa,
                                const std::string& precision);

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
// pack_dense's layout with pairs of bf16 (RNE) weights in PackedConv::pairs.
PackedConv pack_dense_bf16(const float* weight_oihw, const float* bias, int cout, int cin,
                           int ksize, int block);
// AMX tiles of bf16 weight pairs: see pack.cc.
constexpr int kAmxChunkChannels = 32;
PackedConv pack_dense_amx(const float* weight_oihw, const float* bias, int cout, int cin,
                          int ksize);
// float -> bfloat16 bits, round to nearest even; NaN stays NaN (quiet) and
// denormals become zero of the same sign, as vcvtne2ps2bf16 does.
inline uint16_t bf16_round(float v) {
  uint32_t u;
  __builtin_memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) == 0) return static_cast<uint16_t>((u >> 16) & 0x8000u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float v;
  __builtin_memcpy(&v, &u, 4);
  return v;
}
// Dense int8 (see pack.cc): pack_dense's layout over quads of input channels.
// Throws std::invalid_argument on a bad Int8Input or a layer whose int32 sums
// could overflow (cin * ksize^2 > kInt8MaxTerms).
constexpr int64_t kInt8MaxTerms = (int64_t{1} << 31) / (255 * 127) - 1;
PackedConv pack_dense_int8(const float* weight_oihw, const float* bias, int cout, int cin,
                           int ksize, int block, const Int8Input& quant);
PackedConv pack_nm(const float* weight_oihw, const float* bias, int cout, int cin, int ksize,
                   int n, int m);
PackedConv pack_csr(const float* weight_oihw, const float* bias, int cout, int cin, int ksize);
// Block-sparse ("bcsr"): output channels per block, which share one pattern of
// kept (input channel, tap) positions (pack_bcsr in pack.cc).
constexpr int kBcsrBlock = 8;
PackedConv pack_bcsr(const float* weight_oihw, const float* bias, int cout, int cin, int ksize,
                     int block);
// Time of the bcsr kernel over the dense one for these weights at this level,
// estimated (< 1: bcsr is faster); and the kept fraction it rests on: the
// block positions with a nonzero over all block positions. csr-cost.cc.
double bcsr_relative_cost(const float* weight_oihw, int cout, int cin, int ksize, Isa isa);
double bcsr_kept_fraction(const float* weight_oihw, int cout, int cin, int ksize, int block);
// Time of the CSR kernel over the dense one for these weights at this level,
// estimated (< 1: CSR is faster); and the work measure it rests on. csr-cost.cc.
double csr_relative_cost(const float* weight_oihw, int cout, int cin, int ksize, Isa isa);
double csr_work_fraction(const float* weight_oihw, int cout, int cin, int ksize);

// Packs OIHW weights for the given kernel (dispatches on kernel.format).
PackedConv pack_for(const KernelInfo& kernel, const float* weight_oihw, const float* bias,
                    int cout, int cin, int ksize, const FormatOptions& options,
                    const Int8Input& quant = {});

}  // namespace sparsr
