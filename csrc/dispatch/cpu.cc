// CPU feature detection. Built for the baseline target: no AVX code here.
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "sparsr.h"

namespace sparsr {
namespace {

uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

Isa detect() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return Isa::kScalar;
  const bool osxsave = ecx & bit_OSXSAVE;
  const bool avx = ecx & bit_AVX;
  const bool fma = ecx & bit_FMA;
  if (!osxsave || !avx || !fma) return Isa::kScalar;
  const uint64_t xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;          // SSE + AVX state
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;        // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!os_ymm) return Isa::kScalar;
  if (__get_cpuid_max(0, nullptr) < 7) return Isa::kScalar;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool avx2 = ebx & bit_AVX2;
  const bool avx512f = ebx & bit_AVX512F;
  const bool avx512dq = ebx & bit_AVX512DQ;
  const bool avx512bw = ebx & bit_AVX512BW;
  const bool avx512vl = ebx & bit_AVX512VL;
  if (avx512f && avx512dq && avx512bw && avx512vl && os_zmm) {
    // AVX512_BF16: leaf 7, sub-leaf 1, EAX bit 5 (its zmm state is checked
    // above); AVX512_VNNI (the int8 kernels): leaf 7 ECX bit 11. Every CPU with
    // the first has the second, so both make the one level kAvx512Bf16.
    const bool vnni = ecx & (1u << 11);
    unsigned eax1 = 0, ebx1, ecx1, edx1;
    if (eax >= 1) __cpuid_count(7, 1, eax1, ebx1, ecx1, edx1);
    if (!(eax1 & (1u << 5)) || !vnni) return Isa::kAvx512;
    // AMX-BF16 and AMX-TILE (leaf 7 EDX bits 22, 24), their state in XCR0
    // (bits 17, 18), and the kernel's leave to use the 8 KB of tile data
    // (Linux: arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA; granted
    // to the whole process, once).
    const bool amx = (edx & (1u << 22)) && (edx & (1u << 24));
    const bool os_tiles = (xcr0 & (3u << 17)) == (3u << 17);
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (amx && os_tiles && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0)
      return Isa::kAmx;
    return Isa::kAvx512Bf16;
  }
  if (avx2) return Isa::kAvx2;
  return Isa::kScalar;
}

Isa choose() {
  Isa isa = detect();
  // SPARSR_ISA may only lower the level: forcing an unsupported one would crash.
  if (const char* env = std::getenv("SPARSR_ISA")) {
    if (*env) {
      Isa wanted = isa_from_name(env);
      if (static_cast<int>(wanted) < static_cast<int>(isa)) isa = wanted;
    }
  }
  return isa;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Bf16: return "avx512bf16";
    case Isa::kAmx: return "amx";
  }
  return "unknown";
}

Isa isa_from_name(const std::string& name) {
  if (name == "scalar") return Isa::kScalar;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "avx512") return Isa::kAvx512;
  if (name == "avx512bf16") return Isa::kAvx512Bf16;
  if (name == "amx") return Isa::kAmx;
  throw std::invalid_argument("unknown ISA level '" + name +
                              "' (expected one of: scalar, avx2, avx512, avx512bf16, amx)");
}

Isa detected_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa active_isa() {
  static const Isa isa = choose();
  return isa;
}

// A level above the active one counts as unsupported, so SPARSR_ISA makes the
// process behave as on a CPU that has only that level.
bool isa_supported(Isa isa) { return static_cast<int>(isa) <= static_cast<int>(active_isa()); }

}  // namespace sparsr
