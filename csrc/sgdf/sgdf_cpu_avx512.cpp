// The AVX-512 build of the SGDF CPU kernel (sgdf_cpu_kernel.h); sgdf_cpu.cpp runs it where
// common/cpu/capability.h says the CPU has AVX-512.
#include "common/cpu/avx512_target.h"  // first: it sets the instruction set of what follows

#include "sgdf/sgdf_cpu_plan.h"

#if defined(SGDF_ERD_AVX512_KERNELS)
#include "sgdf/sgdf_cpu_kernel.h"
#endif

namespace sgdf_erd::sgdf {

const StepRangeKernels& avx512_step_range_kernels() {
#if defined(SGDF_ERD_AVX512_KERNELS)
  static const StepRangeKernels kernels = step_range_kernels();
#else
  static const StepRangeKernels kernels;
#endif
  return kernels;
}

}  // namespace sgdf_erd::sgdf

SGDF_ERD_END_AVX512
