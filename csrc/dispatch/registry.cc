#include <algorithm>

#include "sparsr.h"

namespace sparsr {

#define SPARSR_KERNEL(symbol, format, precision, ksize, isa, block, tile) \
  void symbol(const PackedConv& w, const ConvTask& task);
#include "kernels.inc"
#undef SPARSR_KERNEL

const std::vector<KernelInfo>& kernel_table() {
  static const std::vector<KernelInfo> table = {
#define SPARSR_KERNEL(symbol, format, precision, ksize, isa, block, tile) \
  KernelInfo{#symbol, format, precision, ksize, Isa::isa, block, tile, &symbol},
#include "kernels.inc"
#undef SPARSR_KERNEL
  };
  return table;
}

const KernelInfo& find_kernel(const std::string& format, int ksize, Isa isa,
                              const std::string& precision) {
  const KernelInfo* best = nullptr;
  for (const KernelInfo& k : kernel_table()) {
    if (format != k.format || precision != k.precision || k.ksize != ksize) continue;
    if (static_cast<int>(k.isa) > static_cast<int>(isa)) continue;
    if (!best || static_cast<int>(k.isa) > static_cast<int>(best->isa)) best = &k;
  }
  if (!best)
    throw std::invalid_argument("no '" + format + "' " + precision + " kernel for " +
                                std::to_string(ksize) + "x" + std::to_string(ksize) +
                                " convolution");
  return *best;
}

const KernelInfo& choose_kernel(const std::string& format, int ksize, Isa isa,
                                const std::string& precision) {
  if (precision != "f32" && precision != "bf16" && precision != "int8")
    throw std::invalid_argument("unknown precision '" + precision +
                                "' (expected one of: f32, bf16, int8)");
  if (precision != "f32") {
    const KernelInfo* best = nullptr;
    for (const KernelInfo& k : kernel_table())
      if (format == k.format && precision == k.precision && k.ksize == ksize &&
          static_cast<int>(k.isa) <= static_cast<int>(isa) &&
          (!best || static_cast<int>(k.isa) > static_cast<int>(best->isa)))
        best = &k;
    // The scalar twin is the reference of the vector kernels, not a fallback
    // for them: a vector level without bf16 runs its own f32 kernel.
    if (best && (best->isa != Isa::kScalar || isa == Isa::kScalar)) return *best;
  }
  return find_kernel(format, ksize, isa, "f32");
}

}  // namespace sparsr
