// Elementwise operators over whole features: activations, add/sub/mul (equal
// shapes, (C,1,1) / (1,1,1) broadcasts, per-channel or scalar constants) and
// per-channel mean / std. Each writes the interior only, so the zero border
// survives; the output may be an input (same planes in the same order).
//
// The row loops are compiled once per ISA (elementwise-{scalar,avx2,avx512}.cc
// from elementwise-rows.h); `isa` picks one, lowered to the active level.
#pragma once

#include <string>
#include <vector>

#include "runtime.h"

namespace sparsr {

enum class UnaryKind { kRelu, kLeakyRelu, kPrelu, kSigmoid, kSilu, kGelu, kGeluTanh, kTanh, kClamp };
enum class BinaryKind { kAdd, kSub, kMul };

// "relu", "leaky_relu", "prelu", "sigmoid", "silu", "gelu", "gelu_tanh",
// "tanh", "clamp"; throws std::invalid_argument listing them.
UnaryKind unary_kind_from_name(const std::string& name);
// "add", "sub", "mul".
BinaryKind binary_kind_from_name(const std::string& name);

// dst = f(src). leaky_relu: alpha is the slope. prelu: slopes has one value
// per channel or one for all. clamp: min(max(x, alpha), beta) (PyTorch's
// order: beta wins when alpha > beta; pass +-inf for a missing bound).
void unary(UnaryKind kind, const Channels& src, const Channels& dst, float alpha, float beta,
           const std::vector<float>& slopes, Isa isa);

// dst = a op b. Each of a, b has dst's shape, or is 1x1 with dst's channel
// count or one channel (a broadcast); dst may be a or b.
void binary(BinaryKind kind, const Channels& a, const Channels& b, const Channels& dst, Isa isa);

// dst = a op values[c] (reverse: values[c] op a); values has one value per
// channel or one for all.
void binary_const(BinaryKind kind, const Channels& a, const std::vector<float>& values,
                  bool reverse, const Channels& dst, Isa isa);

// Per-channel mean and population standard deviation over the interior,
// accumulated in double, written to (C,1,1) features; either may be null.
void global_stats(const Channels& src, const Channels* mean, const Channels* std_dev, Isa isa);

}  // namespace sparsr
