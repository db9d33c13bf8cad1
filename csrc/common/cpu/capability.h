// The instruction set of the CPU kernels that have an AVX-512 build (common/cpu/avx512_target.h; SGDF's), chosen
// once per process: AVX-512 where the library has such builds and the CPU and OS support them, else the build's
// baseline (AVX2, or generic code off x86-64); the other kernels always run their baseline build.
// SGDF_ERD_CPU_CAPABILITY=avx2 keeps the AVX2 kernels (as ATEN_CPU_CAPABILITY does for torch's), to compare the two
// or to rule one out.
#pragma once

namespace sgdf_erd::cpu {

enum class Capability { kGeneric, kAvx2, kAvx512 };

Capability capability();

// "generic", "avx2" or "avx512"
const char* capability_name(Capability c);

}  // namespace sgdf_erd::cpu
