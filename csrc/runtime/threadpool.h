// A small persistent thread pool: parallel_for hands out task indices from an
// atomic counter, and the calling thread works too.
#pragma once

#include <cstddef>
#include <functional>

namespace sparsr {

// Number of threads used (SPARSR_NUM_THREADS, else the hardware's count).
int num_threads();
void set_num_threads(int n);

// Runs fn(i) for i in [0, n) on up to num_threads() threads and waits for all.
// An exception thrown by fn is re-thrown in the caller.
void parallel_for(size_t n, const std::function<void(size_t)>& fn);

}  // namespace sparsr
