#include <immintrin.h>

#include "peak-loop.h"
#include "peak.h"
#include "simd.h"

namespace sparsr {

double fma_loop_avx2(long iterations) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(0.001f * i);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  volatile float sink = lanes[0];
  (void)sink;
  return 2.0 * 8 * 12 * static_cast<double>(iterations);
}

// 12 chains: enough to hide the FMA latency when loads do not limit.
double fma_load_loop_avx2(long iterations, const float* data) {
  return fma_load_loop<VecAvx2, 12>(iterations, data);
}

}  // namespace sparsr
