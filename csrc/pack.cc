#include "sparsr.h"

namespace sparsr {

PackedConv pack_dense(const float* weight_oihw, const float* bias, int cout, int cin, int ksize,
                      int block) {
  PackedConv p;
  p.cout = cout;
  p.cin = cin;
  p.ksize = ksize;
  p.block = block;
  const int taps = ksize * ksize;
  const int blocks = (cout + block - 1) / block;
  p.bias.assign(static_cast<size_t>(blocks) * block, 0.0f);
  if (bias)
    for (int o = 0; o < cout; ++o) p.bias[o] = bias[o];
  p.weights.assign(static_cast<size_t>(blocks) * cin * taps * block, 0.0f);
  for (int o = 0; o < cout; ++o) {
    const int b = o / block, lane = o % block;
    for (int i = 0; i < cin; ++i)
      for (int t = 0; t < taps; ++t)
        p.weights[((static_cast<size_t>(b) * cin + i) * taps + t) * block + lane] =
            weight_oihw[(static_cast<size_t>(o) * cin + i) * taps + t];
  }
  return p;
}

PackedConv pack_for(const KernelInfo& kernel, const float* weight_oihw, const float* bias,
                    int cout, int cin, int ksize, const FormatOptions& options) {
  const std::string format = kernel.format;
  (void)options;
  if (format == "dense") return pack_dense(weight_oihw, bias, cout, cin, ksize, kernel.block);
  throw std::invalid_argument("unknown weight format '" + format + "'");
}

}  // namespace sparsr
