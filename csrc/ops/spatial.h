// Operators that move pixels: pixel (un)shuffle and resizing, as PyTorch's
// pixel_shuffle, pixel_unshuffle and interpolate compute them in float.
#pragma once

#include <string>

#include "runtime.h"

namespace sparsr {

// (C r^2, H, W) -> (C, H r, W r): dst[c, y r + i, x r + j] = src[(c r + i) r + j, y, x].
void pixel_shuffle(const Channels& src, const Channels& dst, int factor);
// The inverse: (C, H r, W r) -> (C r^2, H, W).
void pixel_unshuffle(const Channels& src, const Channels& dst, int factor);

enum class ResizeMode { kNearest, kBilinear, kBicubic };
// "nearest", "bilinear", "bicubic"; throws std::invalid_argument listing them.
ResizeMode resize_mode_from_name(const std::string& name);

// src resized to dst's height and width. nearest is PyTorch's legacy one
// (src = floor(dst * in / out)); bicubic uses a = -0.75 and clamps at the
// borders. scale_h, scale_w > 0: the factors the output size came from, which
// PyTorch then uses as 1 / scale to map coordinates (unless align_corners);
// 0: in / out.
void resize(const Channels& src, const Channels& dst, ResizeMode mode, bool align_corners,
            double scale_h, double scale_w, Isa isa);

}  // namespace sparsr
