// Measured FMA throughput of one level, for the benchmarks' "% of peak".
#pragma once

#include "sparsr.h"

namespace sparsr {

// GFLOP/s (2 per FMA lane) of a register-only FMA loop on every pool thread.
double measure_fma_peak(Isa isa, double seconds);

double fma_loop_avx512(long iterations);  // FLOPs done
double fma_loop_avx2(long iterations);
double fma_loop_scalar(long iterations);

}  // namespace sparsr
