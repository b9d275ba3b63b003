#include <immintrin.h>

#include "peak-loop.h"
#include "peak.h"
#include "simd.h"

namespace sparsr {

// 24 independent accumulator chains hide the FMA latency on two ports.
double fma_loop_avx512(long iterations) {
  __m512 acc[24];
  for (int i = 0; i < 24; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 s = acc[0];
  for (int i = 1; i < 24; ++i) s = _mm512_add_ps(s, acc[i]);
  volatile float sink = _mm512_reduce_add_ps(s);
  (void)sink;
  return 2.0 * 16 * 24 * static_cast<double>(iterations);
}

// 16 chains: enough to hide the FMA latency when loads do not limit.
double fma_load_loop_avx512(long iterations, const float* data) {
  return fma_load_loop<VecAvx512, 16>(iterations, data);
}

}  // namespace sparsr
