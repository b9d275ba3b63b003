// When the CSR kernels beat the dense ones: a cost model fitted to measurements.
//
// The CSR kernels' work is their entries (conv-csr-tile.h): a (ci, ky) input
// row with its kx mask costs about the cycles below for a tile of 8 zmm
// vectors (load-bound single taps, FMA-bound rows of two and three taps;
// microbenchmark on Sapphire Rapids). work_fraction is a layer's entry cost
// over the same layer with no zeros (a 1x1: its density). Relative to the
// dense kernel, time is close to linear in it: alpha + beta * work_fraction,
// fitted per ISA level and kernel size to csr / dense times with random
// unstructured zeros, 2 threads at 360x640 (scalar 45x80), then moved to the
// slow side of the shapes measured (cin->cout) so that no layer is made slower:
//   3x3 AVX-512: refitted after the kernel's prefetch and streaming stores to
//                the slowest of 64->64, 32->64, 64->32, 64->16 and 128->64 at
//                sparsity 0.1-0.7: 64->64 within 0.02, 64->16 at s = 0.7
//                within 0.01, the others up to 0.1 faster than modelled.
//   1x1 AVX-512: fit to 32->32 and 64->256, the slowest relative to dense;
//                256->64 and 64->64 run up to 0.2 faster than modelled.
//   3x3 AVX2: raised by 0.14 to cover 32->64 and 64->16; 1x1 AVX2 and the
//   scalar ones: 64->64, within 0.04 (scalar 3x3: 0.08).
// csr_beneficial (bindings) asks for a margin of 0.05 on top.
#include <algorithm>
#include <cstddef>

#include "sparsr.h"

namespace sparsr {
namespace {

// Cycles per 3x3 entry by kx mask (bit kx), index = mask.
constexpr double kEntryCycles[8] = {0.0, 6.0, 5.8, 9.7, 6.0, 9.3, 9.7, 13.1};

struct Fit {
  double alpha, beta;
};

// [isa][ksize == 3]
constexpr Fit kFits[3][2] = {
    {{-0.06, 1.54}, {0.55, 1.09}},  // scalar: 1x1, 3x3
    {{0.63, 0.57}, {0.30, 0.85}},   // avx2
    {{0.30, 0.92}, {0.23, 0.89}},   // avx512
};

}  // namespace

double csr_work_fraction(const float* weight_oihw, int cout, int cin, int ksize) {
  const size_t rows = static_cast<size_t>(cout) * cin * ksize;
  if (rows == 0) return 0.0;
  double work = 0.0;
  for (size_t r = 0; r < rows; ++r) {
    const float* w = weight_oihw + r * ksize;
    if (ksize == 1) {
      work += w[0] != 0.0f;
    } else {
      work += kEntryCycles[(w[0] != 0.0f) | (w[1] != 0.0f) << 1 | (w[2] != 0.0f) << 2];
    }
  }
  return work / (static_cast<double>(rows) * (ksize == 1 ? 1.0 : kEntryCycles[7]));
}

double csr_relative_cost(const float* weight_oihw, int cout, int cin, int ksize, Isa isa) {
  if (ksize != 1 && ksize != 3)
    throw std::invalid_argument("CSR kernels exist for 1x1 and 3x3 convolutions only");
  const Fit fit = kFits[static_cast<int>(f32_level(isa))][ksize == 3];
  return fit.alpha + fit.beta * csr_work_fraction(weight_oihw, cout, cin, ksize);
}

}  // namespace sparsr

// bcsr: a kept block position costs about what a dense position does (the
// same tile, one pointer more per position), so time relative to dense is
// alpha + beta * kept fraction (the block positions with a nonzero),
// measured like the CSR fits: bcsr / dense times with random whole blocks
// zero (s = 0, 0.35, 0.5, 0.7, 0.9), 2 threads at 360x640 (scalar 45x80),
// CPU time, and lines put on the slow side of the shapes:
//   3x3 (64->64, 32->64, 64->16, 128->64): AVX-512 and AVX2 within 0.03 of
//       the slowest except 64->16, memory-bound at high sparsity (AVX-512 up
//       to 0.16 slower than modelled at s = 0.7, still 0.58 of dense; AVX2
//       0.02); the slowest at no zeros AVX-512 1.05 (64->16), AVX2 0.98.
//   1x1 (64->64, 256->64, 32->32, 64->256): fit to the slowest, 256->64 on
//       AVX-512 (near flat: 0.75 of dense at s = 0.7) and 64->256 / 32->32
//       on AVX2; the others run up to 0.35 faster than modelled. The bcsr
//       1x1 kernels beat the dense ones even without zeros (AVX-512 0.52-0.92
//       of dense, AVX2 0.6-0.91: one tile per band, where dense runs four),
//       but the lines stay above 0.95 at no zeros (AVX2 raised by 0.04), so
//       that "sparse" keeps a layer without zeros dense.
//   scalar: the twins, not tuned (3x3 5.6x dense at no zeros).
namespace sparsr {
namespace {

// [isa][ksize == 3]
constexpr Fit kBcsrFits[3][2] = {
    {{0.14, 1.31}, {0.15, 5.60}},  // scalar: 1x1, 3x3
    {{0.26, 0.70}, {0.05, 0.95}},  // avx2
    {{0.68, 0.29}, {0.15, 0.90}},  // avx512
};

}  // namespace

double bcsr_kept_fraction(const float* weight_oihw, int cout, int cin, int ksize, int block) {
  if (block < 1)
    throw std::invalid_argument("a bcsr block holds at least one output channel, got " +
                                std::to_string(block));
  const int taps = ksize * ksize;
  const int blocks = (cout + block - 1) / block;
  const size_t positions = static_cast<size_t>(blocks) * cin * taps;
  if (positions == 0) return 0.0;
  size_t kept = 0;
  for (int b = 0; b < blocks; ++b)
    for (int i = 0; i < cin; ++i)
      for (int t = 0; t < taps; ++t) {
        bool any = false;
        for (int o = b * block; o < std::min(cout, (b + 1) * block) && !any; ++o)
          any = weight_oihw[(static_cast<size_t>(o) * cin + i) * taps + t] != 0.0f;
        kept += any;
      }
  return static_cast<double>(kept) / static_cast<double>(positions);
}

double bcsr_relative_cost(const float* weight_oihw, int cout, int cin, int ksize, Isa isa) {
  if (ksize != 1 && ksize != 3)
    throw std::invalid_argument("bcsr kernels exist for 1x1 and 3x3 convolutions only");
  const Fit fit = kBcsrFits[static_cast<int>(f32_level(isa))][ksize == 3];
  return fit.alpha + fit.beta * bcsr_kept_fraction(weight_oihw, cout, cin, ksize, kBcsrBlock);
}

}  // namespace sparsr
