// Measured FMA throughput of one level, for the benchmarks' "% of peak".
#pragma once

#include "sparsr.h"

namespace sparsr {

// GFLOP/s (2 per FMA lane) of an FMA loop on every pool thread: register
// only, or (with_loads) each FMA taking one aligned vector from a buffer that
// stays in L1, the ceiling of a kernel that cannot share its input loads.
double measure_fma_peak(Isa isa, double seconds, bool with_loads = false);

// Floats of the buffer the loading loops read (12 KB: L1-resident).
constexpr int kLoadPeakFloats = 3072;

double fma_loop_avx512(long iterations);  // FLOPs done
double fma_loop_avx2(long iterations);
double fma_loop_scalar(long iterations);
// data: kLoadPeakFloats floats, 64-byte aligned.
double fma_load_loop_avx512(long iterations, const float* data);
double fma_load_loop_avx2(long iterations, const float* data);
double fma_load_loop_scalar(long iterations, const float* data);

}  // namespace sparsr
