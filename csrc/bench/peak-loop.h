// The loading FMA loop of peak.h, shared by the AVX2 and AVX-512 files (each
// compiles it with its own flags).
#pragma once

#include "peak.h"

namespace sparsr {

// CHAINS accumulators; each FMA reads its own aligned vector of the buffer.
template <class V, int CHAINS>
double fma_load_loop(long iterations, const float* data) {
  using T = typename V::T;
  constexpr int W = V::kWidth;
  static_assert(kLoadPeakFloats % (CHAINS * W) == 0, "whole groups of chains");
  T acc[CHAINS];
  for (int i = 0; i < CHAINS; ++i) acc[i] = V::zero();
  const T w = V::set1(1e-7f);
  for (long it = 0; it < iterations; ++it) {
    for (int base = 0; base < kLoadPeakFloats; base += CHAINS * W) {
#pragma GCC unroll 16
      for (int i = 0; i < CHAINS; ++i) acc[i] = V::fmadd(w, V::load(data + base + W * i), acc[i]);
    }
  }
  T s = acc[0];
  for (int i = 1; i < CHAINS; ++i) s = V::add(s, acc[i]);
  alignas(64) float lanes[W];
  V::store(lanes, s);
  volatile float sink = lanes[0];
  (void)sink;
  return 2.0 * kLoadPeakFloats * static_cast<double>(iterations);
}

}  // namespace sparsr
