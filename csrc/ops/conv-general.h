// General direct convolutions over Channels, for what the packed Conv2d does
// not take: kernels 1..11 (kh, kw independent), stride 1..4, any zero padding,
// dilation and groups (depthwise included), and the transposed convolution in
// gather form. Input and output each keep their own geometry.
//
// Every tap of every output row reads a per-thread copy of the input rows it
// needs, zero padded on both sides and split into `stride` column phases
// (conv-general-impl.h): the vector loop then loads contiguous floats for any
// stride, padding or dilation, and needs no border cases.
#pragma once

#include <utility>
#include <vector>

#include "runtime.h"

namespace sparsr {

// A convolution window along both axes (height first).
struct Window2d {
  int kh = 1, kw = 1;  // kernel
  int sh = 1, sw = 1;  // stride
  int ph = 0, pw = 0;  // zero padding before and after
  int dh = 1, dw = 1;  // dilation
};

constexpr int kConvGeneralMaxKernel = 11;
constexpr int kConvGeneralMaxStride = 4;
constexpr int kConvGeneralMaxPadding = 64;
constexpr int kConvGeneralMaxDilation = 16;

// Weights of one layer for the row kernel, both directions: per group and per
// block of `block` output channels, [cin / groups][kh][kw][block], output
// channels past the group's count zero. ConvTranspose stores its
// (cin, cout / groups, kh, kw) weights the same way, cin and cout in their roles.
struct PackedGeneralConv {
  int cout = 0, cin = 0, groups = 1, block = 1;
  Window2d window;
  int output_padding_h = 0, output_padding_w = 0;  // ConvTranspose only
  std::vector<float> weights;
  std::vector<float> bias;  // cout, zero when the layer has none

  int cin_per_group() const { return cin / groups; }
  int cout_per_group() const { return cout / groups; }
  int blocks_per_group() const { return (cout_per_group() + block - 1) / block; }
  size_t block_stride() const {
    return static_cast<size_t>(cin_per_group()) * window.kh * window.kw * block;
  }
};

// The ISA twins (conv-general-{scalar,avx2,avx512}.cc). Sizes are checked by
// the callers below.
void conv_general_scalar(const PackedGeneralConv& w, const Channels& src, const Channels& dst,
                         bool relu, const float* slopes, const Channels* residual);
void conv_general_avx2(const PackedGeneralConv& w, const Channels& src, const Channels& dst,
                       bool relu, const float* slopes, const Channels* residual);
void conv_general_avx512(const PackedGeneralConv& w, const Channels& src, const Channels& dst,
                         bool relu, const float* slopes, const Channels* residual);
void conv_transpose_scalar(const PackedGeneralConv& w, const Channels& src, const Channels& dst);
void conv_transpose_avx2(const PackedGeneralConv& w, const Channels& src, const Channels& dst);
void conv_transpose_avx512(const PackedGeneralConv& w, const Channels& src, const Channels& dst);

// Output channels per register block of the ISA's row kernel for a group of
// cout_per_group outputs (conv-general.cc; the ISA files instantiate these).
int conv_general_block(Isa isa, int cout_per_group);

class ConvGeneral {
 public:
  // weight: (cout, cin / groups, kh, kw) as in PyTorch; bias: cout or null.
  // Throws std::invalid_argument on sizes out of range or not divisible.
  ConvGeneral(const float* weight, const float* bias, int cout, int cin, int groups,
              const Window2d& window, Isa isa);
  // dst (+ residual) = act(conv(src)); dst must be out_size(src) with cout
  // channels and must not share planes with src. act: ReLU when relu, the
  // negative slopes of the cout outputs when slopes (leaky ReLU / PReLU; not
  // both), else none.
  void run(const Channels& src, const Channels& dst, bool relu, const float* slopes,
           const Channels* residual) const;
  // (H + 2p - d (k - 1) - 1) / s + 1 per axis; throws when not positive.
  std::pair<int, int> out_size(int height, int width) const;

  int cout() const { return packed_.cout; }
  int cin() const { return packed_.cin; }
  int groups() const { return packed_.groups; }
  const Window2d& window() const { return packed_.window; }
  Isa isa() const { return isa_; }

 private:
  PackedGeneralConv packed_;
  Isa isa_;
};

class ConvTranspose {
 public:
  // weight: (cin, cout / groups, kh, kw) as in PyTorch; bias: cout or null.
  // The window's dilation must be 1; output padding below the stride.
  ConvTranspose(const float* weight, const float* bias, int cin, int cout, int groups,
                const Window2d& window, int output_padding_h, int output_padding_w, Isa isa);
  void run(const Channels& src, const Channels& dst) const;
  // (H - 1) s - 2 p + k + output_padding per axis; throws when not positive.
  std::pair<int, int> out_size(int height, int width) const;

  int cout() const { return packed_.cout; }
  int cin() const { return packed_.cin; }
  int groups() const { return packed_.groups; }
  const Window2d& window() const { return packed_.window; }
  Isa isa() const { return isa_; }

 private:
  PackedGeneralConv packed_;
  Isa isa_;
};

}  // namespace sparsr
