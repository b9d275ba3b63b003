#include "peak.h"

#include <algorithm>
#include <atomic>
#include <chrono>

#include "threadpool.h"

namespace sparsr {

double fma_loop_scalar(long iterations) {
  float acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = 0.001f * i;
  for (long it = 0; it < iterations; ++it)
    for (int i = 0; i < 8; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
  volatile float sink = acc[0] + acc[7];
  (void)sink;
  return 2.0 * 8 * static_cast<double>(iterations);
}

double fma_load_loop_scalar(long iterations, const float* data) {
  float acc[8] = {};
  for (long it = 0; it < iterations; ++it)
    for (int base = 0; base < kLoadPeakFloats; base += 8)
      for (int i = 0; i < 8; ++i) acc[i] += 1e-7f * data[base + i];
  volatile float sink = acc[0] + acc[7];
  (void)sink;
  return 2.0 * kLoadPeakFloats * static_cast<double>(iterations);
}

double measure_fma_peak(Isa isa, double seconds, bool with_loads) {
  if (!isa_supported(isa)) throw std::invalid_argument("level not available on this CPU");
  isa = f32_level(isa);
  double (*plain)(long) = isa == Isa::kAvx512 ? fma_loop_avx512
                          : isa == Isa::kAvx2 ? fma_loop_avx2
                                              : fma_loop_scalar;
  double (*loading)(long, const float*) = isa == Isa::kAvx512 ? fma_load_loop_avx512
                                          : isa == Isa::kAvx2 ? fma_load_loop_avx2
                                                              : fma_load_loop_scalar;
  auto loop = [&](long iterations) {
    if (!with_loads) return plain(iterations);
    alignas(64) float data[kLoadPeakFloats];  // per thread
    for (int i = 0; i < kLoadPeakFloats; ++i) data[i] = 1e-3f * static_cast<float>(i % 97);
    return loading(iterations, data);
  };
  // Calibrate an iteration count of about seconds / 4 per call, then take the
  // best of four timed calls on every thread at once.
  long iterations = 1 << 16;
  for (;;) {
    auto t0 = std::chrono::steady_clock::now();
    loop(iterations);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > seconds / 16 || iterations > (1L << 40)) break;
    iterations *= 2;
  }
  double best = 0.0;
  for (int rep = 0; rep < 4; ++rep) {
    std::atomic<double> flops{0.0};
    auto t0 = std::chrono::steady_clock::now();
    parallel_for(num_threads(), [&](size_t) {
      double f = loop(iterations);
      double cur = flops.load();
      while (!flops.compare_exchange_weak(cur, cur + f)) {
      }
    });
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, flops.load() / dt / 1e9);
  }
  return best;
}

}  // namespace sparsr
