// Branch-free float approximations of exp, sigmoid, tanh and GELU: plain code
// the compiler vectorises in a loop (selects become blends, the 2^n scale an
// integer shift), accurate to about 1e-6 relative, and finite for any finite x.
//
// Internal linkage on purpose: each elementwise-<isa>.cc compiles its own copy
// with its flags; shared inline definitions would let the linker keep one ISA's
// code for every caller.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace sparsr {
namespace {

inline float float_from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline uint32_t float_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

// c ? a : b by bit masks. GCC (with its default -ftrapping-math) will not
// vectorise a ternary whose arm holds float arithmetic, as that would compute
// it for every lane; it only can with AVX-512's masked operations.
inline float select(bool c, float a, float b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return float_from_bits((float_bits(a) & mask) | (float_bits(b) & ~mask));
}

// e^x, Cephes expf: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6
// polynomial, 2^n put in the exponent bits. About 1 ulp on [-87.3, 88]; 0
// below (where e^x is subnormal); callers pass x <= 0 or barely above.
inline float exp_approx(float x) {
  const float kMin = -87.33654f;  // ln of the smallest normal float
  const float kMax = 88.0f;
  const bool underflow = x < kMin;
  x = select(underflow, kMin, x);
  x = select(x > kMax, kMax, x);
  // Adding 1.5 * 2^23 rounds to an integer (round to nearest even).
  const float kRound = 12582912.0f;
  const float n = (x * 1.44269504f + kRound) - kRound;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // ln 2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = float_from_bits(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return select(underflow, 0.0f, p * scale);
}

// 1 / (1 + e^-x) from e = e^-|x| <= 1: no overflow, and e / (1 + e) keeps the
// relative precision of tiny results for negative x.
inline float sigmoid_approx(float x) {
  const float e = exp_approx(-std::fabs(x));
  const float s = 1.0f / (1.0f + e);
  return select(x >= 0.0f, s, e * s);
}

// tanh: Cephes tanhf's odd polynomial below 0.625 (where 1 - e^-2x would
// cancel), (1 - e) / (1 + e) with e = e^-2|x| above.
inline float tanh_approx(float x) {
  const float a = std::fabs(x);
  const float e = exp_approx(-2.0f * a);
  const float large = (1.0f - e) / (1.0f + e);
  const float z = a * a;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * a + a;
  return std::copysign(select(a < 0.625f, small, large), x);
}

// erfc(z) for z >= 0: the Chebyshev fit of Numerical Recipes' erfcc
// (fractional error below 1.2e-7), t e^(P(t) - z^2) with t = 1 / (1 + z / 2).
inline float erfc_nonnegative(float z) {
  const float t = 1.0f / (1.0f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  return t * exp_approx(p - z * z);
}

// x Phi(x) with Phi(-|x|) = erfc(|x| / sqrt 2) / 2: unlike 1 + erf(x / sqrt 2)
// it does not cancel for negative x.
inline float gelu_approx(float x) {
  const float lower_tail = 0.5f * erfc_nonnegative(std::fabs(x) * 0.707106781f);
  return x * select(x >= 0.0f, 1.0f - lower_tail, lower_tail);
}

// PyTorch's tanh form, x (1 + tanh u) / 2 = x sigmoid(2u), which does not
// cancel for negative x either.
inline float gelu_tanh_approx(float x) {
  const float u = 0.7978845608f * (x + 0.044715f * x * x * x);
  return x * sigmoid_approx(2.0f * u);
}

}  // namespace
}  // namespace sparsr
