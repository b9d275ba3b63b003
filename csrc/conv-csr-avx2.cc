// CSR (unstructured-sparse) convolution, AVX2+FMA; see conv-csr-tile.h. Tiles
// of one output channel: 3x3 over 24 pixels (3 ymm accumulators plus 2 x 4 for
// the kx = 0 / 2 shifts, of 16 registers), 1x1 over 64 pixels (8).
#include "conv-csr-tile.h"
#include "simd.h"

namespace sparsr {
namespace {

struct CsrAvx2 : VecAvx2 {
  // The lanes whose bit is set in bits.
  static __m256i lanes(uint32_t bits) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i set = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), lane_bit);
    return _mm256_cmpeq_epi32(set, lane_bit);
  }
  static void store_lanes(float* p, T v, uint32_t bits) { _mm256_maskstore_ps(p, lanes(bits), v); }
  static T load_lanes(const float* p, uint32_t bits) { return _mm256_maskload_ps(p, lanes(bits)); }
  // [prev[7], cur[0..6]] and [cur[1..7], next[0]]: a 128-bit lane swap, then a byte shift.
  static T shift_in_prev(T prev, T cur) {
    const __m256 mid = _mm256_permute2f128_ps(prev, cur, 0x21);  // [prev_hi, cur_lo]
    return _mm256_castsi256_ps(
        _mm256_alignr_epi8(_mm256_castps_si256(cur), _mm256_castps_si256(mid), 12));
  }
  static T shift_in_next(T cur, T next) {
    const __m256 mid = _mm256_permute2f128_ps(cur, next, 0x21);  // [cur_hi, next_lo]
    return _mm256_castsi256_ps(
        _mm256_alignr_epi8(_mm256_castps_si256(mid), _mm256_castps_si256(cur), 4));
  }
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
