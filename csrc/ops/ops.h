// Whole-feature operations on channel lists (see runtime.h for the layout).
#pragma once

#include <vector>

#include "runtime.h"

namespace sparsr {

void fill(const Channels& out, const PixelSet& pixels, float value);
// dst[c] = src[c] * scale[c] + residual[c] over the whole interior (in place allowed).
void scale_add(const Channels& src, const std::vector<float>& scale, const Channels& residual,
               const Channels& dst);
std::vector<double> channel_means(const Channels& src);
// x = max(x, 0) over the whole interior, in place.
void relu_inplace(const Channels& x);
// 2x2 average pooling, floor of odd sizes.
void avg_pool2(const Channels& src, const Channels& dst);
// Transposed 3x3 convolution, stride 2, padding 1, output padding 1:
// (cin, h, w) -> (cout, 2h, 2w). weight is (cin, cout, 3, 3) as in PyTorch.
void conv_transpose3x3_s2(const Channels& src, const float* weight, const float* bias, int cout,
                          const Channels& dst);


}  // namespace sparsr
