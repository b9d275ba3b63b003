#include <algorithm>

#include "sparsr.h"

namespace sparsr {

#define SPARSR_KERNEL(symbol, format, ksize, isa, block, tile) \
  void symbol(const PackedConv& w, const ConvTask& task);
#include "kernels.inc"
#undef SPARSR_KERNEL

const std::vector<KernelInfo>& kernel_table() {
  static const std::vector<KernelInfo> table = {
#define SPARSR_KERNEL(symbol, format, ksize, isa, block, tile) \
  KernelInfo{#symbol, format, ksize, Isa::isa, block, tile, &symbol},
#include "kernels.inc"
#undef SPARSR_KERNEL
  };
  return table;
}

const KernelInfo& find_kernel(const std::string& format, int ksize, Isa isa) {
  const KernelInfo* best = nullptr;
  for (const KernelInfo& k : kernel_table()) {
    if (format != k.format || k.ksize != ksize) continue;
    if (static_cast<int>(k.isa) > static_cast<int>(isa)) continue;
    if (!best || static_cast<int>(k.isa) > static_cast<int>(best->isa)) best = &k;
  }
  if (!best)
    throw std::invalid_argument("no '" + format + "' kernel for " + std::to_string(ksize) + "x" +
                                std::to_string(ksize) + " convolution");
  return *best;
}

}  // namespace sparsr
