// Max and average pooling over Channels (PyTorch max_pool2d / avg_pool2d with
// ceil_mode=False; average counts the zero padding, max pads with -inf).
#pragma once

#include <utility>

#include "conv-general.h"

namespace sparsr {

// Floor output size per axis; throws std::invalid_argument when not positive,
// or when the padding exceeds half the kernel (as PyTorch does: a window
// would then see padding only). The window's dilation must be 1.
std::pair<int, int> pool_out_size(const Window2d& window, int height, int width);
void max_pool(const Channels& src, const Channels& dst, const Window2d& window);
void avg_pool(const Channels& src, const Channels& dst, const Window2d& window);

}  // namespace sparsr
