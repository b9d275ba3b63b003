// Checks, ISA choice and threading of the elementwise operators; the row loops
// are in elementwise-rows.h.
#include "elementwise.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <unordered_map>

#include "elementwise-rows.h"
#include "threadpool.h"

namespace sparsr {
namespace {

const ElementwiseRows& rows_for(Isa isa) {
  // At most the active level, as Conv2d's kernel choice.
  if (static_cast<int>(isa) > static_cast<int>(active_isa())) isa = active_isa();
  switch (f32_level(isa)) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512: return elementwise_rows_avx512();
    case Isa::kAvx2: return elementwise_rows_avx2();
    case Isa::kScalar: break;
  }
  return elementwise_rows_scalar();
}

std::string shape_of(const Channels& c) {
  return "(" + std::to_string(c.size()) + ", " + std::to_string(c.height) + ", " +
         std::to_string(c.width) + ")";
}

// An operand that dst may alias must alias it plane by plane, in order: a
// channel written before another reads it would be read modified.
void check_aliasing(const Channels& dst, const std::vector<const Channels*>& inputs,
                    const char* what) {
  std::unordered_map<const float*, int> index;
  for (int c = 0; c < dst.size(); ++c)
    if (!index.emplace(dst.planes[c], c).second)
      throw std::invalid_argument(std::string(what) + ": the output lists one plane twice");
  for (const Channels* in : inputs)
    for (int c = 0; c < in->size(); ++c) {
      auto it = index.find(in->planes[c]);
      if (it != index.end() && it->second != c)
        throw std::invalid_argument(std::string(what) +
                                    ": the output overlaps an input at other channels");
    }
}

void check_same_shape(const Channels& src, const Channels& dst, const char* what) {
  if (src.size() != dst.size() || src.height != dst.height || src.width != dst.width)
    throw std::invalid_argument(std::string(what) + ": output shape " + shape_of(dst) +
                                " differs from the input's " + shape_of(src));
}

// Runs fn(c, y0, y1) over bands of rows of every channel: whole planes when
// the channels alone keep the pool busy, else bands, so that a 3-channel image
// still uses every thread.
void for_each_band(int channels, int height, const std::function<void(int, int, int)>& fn) {
  const int wanted_tasks = 4 * num_threads();
  const int bands = std::min(height, std::max(1, (wanted_tasks + channels - 1) / channels));
  const int rows = (height + bands - 1) / bands;
  parallel_for(static_cast<size_t>(channels) * bands, [&](size_t task) {
    const int c = static_cast<int>(task / bands);
    const int y0 = static_cast<int>(task % bands) * rows;
    const int y1 = std::min(height, y0 + rows);
    if (y0 < y1) fn(c, y0, y1);
  });
}

inline const float* row(const Channels& ch, int c, int y) {
  return ch.planes[c] + (y + 1) * ch.ld + 1;
}
inline float* row_out(const Channels& ch, int c, int y) {
  return ch.planes[c] + (y + 1) * ch.ld + 1;
}
inline float interior_value(const Channels& ch, int c) { return ch.planes[c][ch.ld + 1]; }

// One value per channel of dst from values of size C or 1, else throws.
std::vector<float> per_channel(const std::vector<float>& values, int channels, const char* what,
                               const char* name) {
  if (static_cast<int>(values.size()) == channels) return values;
  if (values.size() == 1) return std::vector<float>(channels, values[0]);
  throw std::invalid_argument(std::string(what) + ": " + std::to_string(values.size()) + " " +
                              name + " for " + std::to_string(channels) +
                              " channels (expected one per channel, or one)");
}

}  // namespace

UnaryKind unary_kind_from_name(const std::string& name) {
  static const std::unordered_map<std::string, UnaryKind> kinds = {
      {"relu", UnaryKind::kRelu},       {"leaky_relu", UnaryKind::kLeakyRelu},
      {"prelu", UnaryKind::kPrelu},     {"sigmoid", UnaryKind::kSigmoid},
      {"silu", UnaryKind::kSilu},       {"gelu", UnaryKind::kGelu},
      {"gelu_tanh", UnaryKind::kGeluTanh}, {"tanh", UnaryKind::kTanh},
      {"clamp", UnaryKind::kClamp}};
  auto it = kinds.find(name);
  if (it == kinds.end())
    throw std::invalid_argument("unknown unary op '" + name +
                                "' (expected relu, leaky_relu, prelu, sigmoid, silu, gelu, "
                                "gelu_tanh, tanh or clamp)");
  return it->second;
}

BinaryKind binary_kind_from_name(const std::string& name) {
  if (name == "add") return BinaryKind::kAdd;
  if (name == "sub") return BinaryKind::kSub;
  if (name == "mul") return BinaryKind::kMul;
  throw std::invalid_argument("unknown binary op '" + name + "' (expected add, sub or mul)");
}

void unary(UnaryKind kind, const Channels& src, const Channels& dst, float alpha, float beta,
           const std::vector<float>& slopes, Isa isa) {
  check_same_shape(src, dst, "unary");
  check_aliasing(dst, {&src}, "unary");
  std::vector<float> alphas;
  if (kind == UnaryKind::kPrelu) alphas = per_channel(slopes, src.size(), "prelu", "slopes");
  if (kind == UnaryKind::kClamp && (std::isnan(alpha) || std::isnan(beta)))
    throw std::invalid_argument("clamp: bounds must not be NaN");
  const ElementwiseRows& k = rows_for(isa);
  for_each_band(dst.size(), dst.height, [&](int c, int y0, int y1) {
    const float a = alphas.empty() ? alpha : alphas[c];
    for (int y = y0; y < y1; ++y) k.unary(kind, row(src, c, y), row_out(dst, c, y), dst.width, a, beta);
  });
}

void binary(BinaryKind kind, const Channels& a, const Channels& b, const Channels& dst, Isa isa) {
  // An operand is full (dst's shape) or a broadcast: 1x1 with C or 1 channels.
  auto full = [&](const Channels& x) {
    return x.size() == dst.size() && x.height == dst.height && x.width == dst.width;
  };
  auto broadcast = [&](const Channels& x) {
    return x.height == 1 && x.width == 1 && (x.size() == dst.size() || x.size() == 1);
  };
  for (const Channels* x : {&a, &b})
    if (!full(*x) && !broadcast(*x))
      throw std::invalid_argument("binary: operand shape " + shape_of(*x) + " does not match the "
                                  "output " + shape_of(dst) + " nor broadcast to it (C or 1 "
                                  "channels of 1x1)");
  check_aliasing(dst, {&a, &b}, "binary");
  if (full(a) && full(b)) {
    const ElementwiseRows& k = rows_for(isa);
    for_each_band(dst.size(), dst.height, [&](int c, int y0, int y1) {
      for (int y = y0; y < y1; ++y)
        k.binary(kind, row(a, c, y), row(b, c, y), row_out(dst, c, y), dst.width);
    });
    return;
  }
  if (!full(a) && !full(b))
    throw std::invalid_argument("binary: both operands " + shape_of(a) + " and " + shape_of(b) +
                                " are broadcasts of the output " + shape_of(dst));
  // One side is a per-channel constant: read it before dst (which may be the
  // other side) is written.
  const Channels& x = full(a) ? a : b;
  const Channels& bc = full(a) ? b : a;
  std::vector<float> values(bc.size());
  for (int c = 0; c < bc.size(); ++c) values[c] = interior_value(bc, c);
  binary_const(kind, x, values, /*reverse=*/!full(a), dst, isa);
}

void binary_const(BinaryKind kind, const Channels& a, const std::vector<float>& values,
                  bool reverse, const Channels& dst, Isa isa) {
  check_same_shape(a, dst, "binary_const");
  check_aliasing(dst, {&a}, "binary_const");
  const std::vector<float> v = per_channel(values, a.size(), "binary_const", "values");
  const ElementwiseRows& k = rows_for(isa);
  for_each_band(dst.size(), dst.height, [&](int c, int y0, int y1) {
    for (int y = y0; y < y1; ++y)
      k.binary_scalar(kind, row(a, c, y), v[c], reverse, row_out(dst, c, y), dst.width);
  });
}

void global_stats(const Channels& src, const Channels* mean, const Channels* std_dev, Isa isa) {
  for (const Channels* out : {mean, std_dev})
    if (out && (out->size() != src.size() || out->height != 1 || out->width != 1))
      throw std::invalid_argument("global_stats: output shape " + shape_of(*out) +
                                  " must be (" + std::to_string(src.size()) + ", 1, 1)");
  const ElementwiseRows& k = rows_for(isa);
  std::vector<double> means(src.size()), stds(src.size());
  parallel_for(src.size(), [&](size_t c) {
    // Sums of x - x[0, 0]: no cancellation in E[d^2] - E[d]^2 when the mean
    // is large against the spread.
    const double shift = interior_value(src, static_cast<int>(c));
    double sum = 0.0, sum_squares = 0.0;
    for (int y = 0; y < src.height; ++y)
      k.moments(row(src, static_cast<int>(c), y), src.width, shift, &sum, &sum_squares);
    const double n = static_cast<double>(src.height) * src.width;
    const double m = sum / n;
    means[c] = shift + m;
    stds[c] = std::sqrt(std::max(0.0, sum_squares / n - m * m));
  });
  for (int c = 0; c < src.size(); ++c) {
    if (mean) mean->planes[c][mean->ld + 1] = static_cast<float>(means[c]);
    if (std_dev) std_dev->planes[c][std_dev->ld + 1] = static_cast<float>(stds[c]);
  }
}

}  // namespace sparsr
