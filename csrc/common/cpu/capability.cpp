#include "common/cpu/capability.h"

#include <cstdlib>
#include <cstring>

#include "common/cpu/isa.h"
#include "common/cpu/vec.h"  // SGDF_ERD_VEC_AVX2: the baseline

namespace sgdf_erd::cpu {
namespace {

Capability detect() {
#if defined(SGDF_ERD_AVX512_KERNELS)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the 512-bit registers
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512bf16");
  const char* requested = std::getenv("SGDF_ERD_CPU_CAPABILITY");
  const bool keep_avx2 = requested != nullptr && std::strcmp(requested, "avx2") == 0;
  if (avx512 && !keep_avx2) return Capability::kAvx512;
#endif
#if defined(SGDF_ERD_VEC_AVX2)
  return Capability::kAvx2;
#else
  return Capability::kGeneric;
#endif
}

}  // namespace

Capability capability() {
  static const Capability chosen = detect();
  return chosen;
}

const char* capability_name(Capability c) {
  switch (c) {
    case Capability::kAvx512: return "avx512";
    case Capability::kAvx2: return "avx2";
    default: return "generic";
  }
}

}  // namespace sgdf_erd::cpu
