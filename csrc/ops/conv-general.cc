// ConvGeneral and ConvTranspose: argument checks, weight packing and the
// choice of the ISA twin. Built for the baseline target.
#include "conv-general.h"

#include <algorithm>
#include <string>

namespace sparsr {
namespace {

std::string size_text(int h, int w) { return std::to_string(h) + "x" + std::to_string(w); }

void check_range(const char* op, const char* what, int h, int w, int lo, int hi) {
  if (h < lo || h > hi || w < lo || w > hi)
    throw std::invalid_argument(std::string(op) + ": " + what + " must be in [" +
                                std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                                size_text(h, w));
}

void check_window(const char* op, const Window2d& k) {
  check_range(op, "kernel", k.kh, k.kw, 1, kConvGeneralMaxKernel);
  check_range(op, "stride", k.sh, k.sw, 1, kConvGeneralMaxStride);
  check_range(op, "padding", k.ph, k.pw, 0, kConvGeneralMaxPadding);
  check_range(op, "dilation", k.dh, k.dw, 1, kConvGeneralMaxDilation);
}

void check_channels(const char* op, int cin, int cout, int groups) {
  if (cin < 1 || cout < 1 || groups < 1)
    throw std::invalid_argument(std::string(op) + ": channel and group counts must be positive");
  if (cin % groups != 0 || cout % groups != 0)
    throw std::invalid_argument(std::string(op) + ": " + std::to_string(groups) +
                                " groups do not divide " + std::to_string(cin) + " inputs and " +
                                std::to_string(cout) + " outputs");
}

void check_isa(const char* op, Isa isa) {
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string(op) + ": level " + isa_name(isa) +
                                " is not available: the active level is " +
                                isa_name(active_isa()) + " (CPU or SPARSR_ISA)");
}

// weight_at(g, o, i, ky, kx): output o and input i counted within group g.
template <class WeightAt>
void pack(PackedGeneralConv& p, const float* bias, WeightAt weight_at) {
  const Window2d& k = p.window;
  const int cin_g = p.cin_per_group(), cout_g = p.cout_per_group(), blocks = p.blocks_per_group();
  p.weights.assign(static_cast<size_t>(p.groups) * blocks * p.block_stride(), 0.0f);
  for (int g = 0; g < p.groups; ++g)
    for (int o = 0; o < cout_g; ++o) {
      float* wb = p.weights.data() + (static_cast<size_t>(g) * blocks + o / p.block) * p.block_stride();
      for (int i = 0; i < cin_g; ++i)
        for (int ky = 0; ky < k.kh; ++ky)
          for (int kx = 0; kx < k.kw; ++kx)
            wb[((i * k.kh + ky) * k.kw + kx) * p.block + o % p.block] = weight_at(g, o, i, ky, kx);
    }
  p.bias.assign(p.cout, 0.0f);
  if (bias) std::copy(bias, bias + p.cout, p.bias.begin());
}

// dst planes must not be src planes: rows of src are read after dst rows are written.
void check_no_alias(const char* op, const Channels& src, const Channels& dst) {
  std::vector<const float*> in(src.planes.begin(), src.planes.end());
  std::sort(in.begin(), in.end());
  for (const float* p : dst.planes)
    if (std::binary_search(in.begin(), in.end(), p))
      throw std::invalid_argument(std::string(op) + ": output shares a plane with the input");
}

void check_sizes(const char* op, const Channels& src, const Channels& dst, int cin, int cout,
                 std::pair<int, int> expected) {
  if (src.size() != cin)
    throw std::invalid_argument(std::string(op) + ": input has " + std::to_string(src.size()) +
                                " channels, the layer takes " + std::to_string(cin));
  if (dst.size() != cout)
    throw std::invalid_argument(std::string(op) + ": output has " + std::to_string(dst.size()) +
                                " channels, the layer makes " + std::to_string(cout));
  if (dst.height != expected.first || dst.width != expected.second)
    throw std::invalid_argument(std::string(op) + ": output is " +
                                size_text(dst.height, dst.width) + " but a " +
                                size_text(src.height, src.width) + " input gives " +
                                size_text(expected.first, expected.second));
  check_no_alias(op, src, dst);
}

}  // namespace

int conv_general_block(Isa isa, int cout_per_group) {
  // Register tiles (the ISA files instantiate exactly these): AVX-512 8x3,
  // 4x6 or 1x8 vectors, AVX2 4x3 or 1x8, scalar 4x2 or 1x8 floats. One
  // output channel per block (depthwise) loads once per FMA.
  if (f32_level(isa) == Isa::kAvx512 && cout_per_group >= 8) return 8;
  return cout_per_group >= 4 ? 4 : 1;
}

// ---------------------------------------------------------------- ConvGeneral

ConvGeneral::ConvGeneral(const float* weight, const float* bias, int cout, int cin, int groups,
                         const Window2d& window, Isa isa)
    : isa_(isa) {
  check_channels("conv_general", cin, cout, groups);
  check_window("conv_general", window);
  check_isa("conv_general", isa);
  packed_.cout = cout;
  packed_.cin = cin;
  packed_.groups = groups;
  packed_.window = window;
  packed_.block = conv_general_block(isa, cout / groups);
  const int cin_g = cin / groups, cout_g = cout / groups, taps = window.kh * window.kw;
  pack(packed_, bias, [&](int g, int o, int i, int ky, int kx) {
    return weight[((static_cast<size_t>(g) * cout_g + o) * cin_g + i) * taps + ky * window.kw + kx];
  });
}

std::pair<int, int> ConvGeneral::out_size(int height, int width) const {
  const Window2d& k = packed_.window;
  const int span_h = height + 2 * k.ph - k.dh * (k.kh - 1) - 1;
  const int span_w = width + 2 * k.pw - k.dw * (k.kw - 1) - 1;
  if (height < 1 || width < 1 || span_h < 0 || span_w < 0)
    throw std::invalid_argument("conv_general: a " + size_text(height, width) +
                                " input is smaller than the " + size_text(k.kh, k.kw) +
                                " kernel (dilation " + size_text(k.dh, k.dw) + ", padding " +
                                size_text(k.ph, k.pw) + ")");
  return {span_h / k.sh + 1, span_w / k.sw + 1};
}

void ConvGeneral::run(const Channels& src, const Channels& dst, bool relu, const float* slopes,
                      const Channels* residual) const {
  check_sizes("conv_general", src, dst, packed_.cin, packed_.cout,
              out_size(src.height, src.width));
  if (relu && slopes)
    throw std::invalid_argument("conv_general: ReLU and negative slopes are exclusive");
  if (residual) {
    check_geometry(*residual, dst, "conv_general residual");
    if (residual->size() < packed_.cout)
      throw std::invalid_argument("conv_general: residual has " +
                                  std::to_string(residual->size()) + " channels, the output " +
                                  std::to_string(packed_.cout));
  }
  switch (f32_level(isa_)) {
    case Isa::kAvx512: conv_general_avx512(packed_, src, dst, relu, slopes, residual); break;
    case Isa::kAvx2: conv_general_avx2(packed_, src, dst, relu, slopes, residual); break;
    default: conv_general_scalar(packed_, src, dst, relu, slopes, residual); break;
  }
}

// -------------------------------------------------------------- ConvTranspose

ConvTranspose::ConvTranspose(const float* weight, const float* bias, int cin, int cout,
                             int groups, const Window2d& window, int output_padding_h,
                             int output_padding_w, Isa isa)
    : isa_(isa) {
  check_channels("conv_transpose", cin, cout, groups);
  check_window("conv_transpose", window);
  check_isa("conv_transpose", isa);
  if (window.dh != 1 || window.dw != 1)
    throw std::invalid_argument("conv_transpose: dilation is not supported");
  if (output_padding_h < 0 || output_padding_w < 0 || output_padding_h >= window.sh ||
      output_padding_w >= window.sw)
    throw std::invalid_argument("conv_transpose: output padding " +
                                size_text(output_padding_h, output_padding_w) +
                                " must be below the stride " + size_text(window.sh, window.sw));
  packed_.cout = cout;
  packed_.cin = cin;
  packed_.groups = groups;
  packed_.window = window;
  packed_.output_padding_h = output_padding_h;
  packed_.output_padding_w = output_padding_w;
  packed_.block = conv_general_block(isa, cout / groups);
  const int cin_g = cin / groups, cout_g = cout / groups, taps = window.kh * window.kw;
  pack(packed_, bias, [&](int g, int o, int i, int ky, int kx) {
    return weight[((static_cast<size_t>(g) * cin_g + i) * cout_g + o) * taps + ky * window.kw + kx];
  });
}

std::pair<int, int> ConvTranspose::out_size(int height, int width) const {
  const Window2d& k = packed_.window;
  const int oh = (height - 1) * k.sh - 2 * k.ph + k.kh + packed_.output_padding_h;
  const int ow = (width - 1) * k.sw - 2 * k.pw + k.kw + packed_.output_padding_w;
  if (height < 1 || width < 1 || oh < 1 || ow < 1)
    throw std::invalid_argument("conv_transpose: a " + size_text(height, width) +
                                " input gives a " + size_text(oh, ow) + " output (padding " +
                                size_text(k.ph, k.pw) + " too large)");
  return {oh, ow};
}

void ConvTranspose::run(const Channels& src, const Channels& dst) const {
  check_sizes("conv_transpose", src, dst, packed_.cin, packed_.cout,
              out_size(src.height, src.width));
  switch (f32_level(isa_)) {
    case Isa::kAvx512: conv_transpose_avx512(packed_, src, dst); break;
    case Isa::kAvx2: conv_transpose_avx2(packed_, src, dst); break;
    default: conv_transpose_scalar(packed_, src, dst); break;
  }
}

}  // namespace sparsr
