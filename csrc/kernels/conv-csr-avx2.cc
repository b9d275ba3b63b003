// CSR (unstructured-sparse) convolution, AVX2+FMA; see conv-csr-tile.h. Tiles
// of one output channel: 3x3 over 24 pixels (3 ymm accumulators plus 2 x 4 for
// the kx = 0 / 2 shifts, of 16 registers), 1x1 over 64 pixels (8).
#include "conv-csr-tile.h"
#include "simd.h"

namespace sparsr {
namespace {

struct CsrAvx2 : VecAvx2 {
  // One input column: lane 0 of an xmm register.
  using Edge = __m128;
  static Edge edge_zero() { return _mm_setzero_ps(); }
  static Edge edge_fmadd(T w, const float* p, Edge acc) {
    return _mm_fmadd_ps(_mm256_castps256_ps128(w), _mm_load_ss(p), acc);
  }
  static T edge_as_last(Edge e) { return _mm256_broadcastss_ps(e); }
  static T edge_as_first(Edge e) { return _mm256_zextps128_ps256(e); }
};

}  // namespace

void conv3x3_csr_1x24_avx2(const PackedConv& w, const ConvTask& t) {
  conv_csr_simd<CsrAvx2, 3, 3>(w, t);
}
void conv1x1_csr_1x64_avx2(const PackedConv& w, const ConvTask& t) {
  conv_csr_simd<CsrAvx2, 1, 8>(w, t);
}

}  // namespace sparsr
