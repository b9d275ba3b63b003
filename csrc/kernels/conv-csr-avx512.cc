// CSR (unstructured-sparse) convolution, AVX-512; see conv-csr-tile.h. Tiles
// of one output channel: 3x3 over 128 pixels (8 zmm accumulators plus 2 x 9
// for the kx = 0 / 2 shifts, of 32 registers), 1x1 over 192 pixels (12).
#include "conv-csr-tile.h"
#include "simd.h"

namespace sparsr {
namespace {

struct CsrAvx512 : VecAvx512 {
  // One input column: lane 0 of an xmm register.
  using Edge = __m128;
  static Edge edge_zero() { return _mm_setzero_ps(); }
  static Edge edge_fmadd(T w, const float* p, Edge acc) {
    return _mm_fmadd_ps(_mm512_castps512_ps128(w), _mm_load_ss(p), acc);
  }
  static T edge_as_last(Edge e) { return _mm512_broadcastss_ps(e); }
  static T edge_as_first(Edge e) { return _mm512_zextps128_ps512(e); }
};

}  // namespace

void conv3x3_csr_1x128_avx512(const PackedConv& w, const ConvTask& t) {
  conv_csr_simd<CsrAvx512, 3, 8>(w, t);
}
void conv1x1_csr_1x192_avx512(const PackedConv& w, const ConvTask& t) {
  conv_csr_simd<CsrAvx512, 1, 12>(w, t);
}

}  // namespace sparsr
