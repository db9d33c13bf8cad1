// What the SGDF CPU kernel reads for one step, as plain data: sgdf_cpu.cpp gathers it once per call, then runs the
// element ranges through one build of the kernel (sgdf_cpu_kernel.h: baseline or AVX-512, chosen at run time).
#pragma once

#include <array>
#include <cstdint>

#include "common/cpu/operand.h"
#include "sgdf/sgdf_math.h"
#include "sgdf/sgdf_operands.h"

namespace sgdf_erd::sgdf {

template <typename acc_t, int Depth>
struct StepPlan {
  // per tensor: its operands at element 0, the index of that element in its whole tensor (a shard's offset; the
  // counter of stochastic rounding) and its step's coefficients
  const std::array<cpu::Operand, Depth>* operands = nullptr;
  const int64_t* first_indices = nullptr;
  const StepCoeffs<acc_t>* coeffs = nullptr;
  Hyper<acc_t> hyper{};
  acc_t lr = 0;
  bool unscale = false;  // divide the gradients by `scale`, in place (GradScaler's unscale, fused)
  acc_t scale = 1;
};

// The kernel over elements [begin, end) of tensor `tensor`.
template <typename acc_t, bool kMaster, bool kUpdate, Preconditioner kPre>
using StepRangeFn = void (*)(const StepPlan<acc_t, ModeOperands<kMaster, kUpdate, kPre>::kDepth>& plan,
                             int64_t tensor, int64_t begin, int64_t end);

template <typename acc_t, bool kMaster, bool kUpdate, Preconditioner kPre>
struct StepRangeSlot {
  StepRangeFn<acc_t, kMaster, kUpdate, kPre> fn = nullptr;
};

// One preconditioner's kernels for every storage the CPU kernel keeps: float arithmetic (float32 or 16-bit params)
// with or without master copies and update buffers, double arithmetic (float64 params, no master copies).
template <Preconditioner kPre>
struct ModeKernels : StepRangeSlot<float, false, false, kPre>, StepRangeSlot<float, false, true, kPre>,
                     StepRangeSlot<float, true, false, kPre>, StepRangeSlot<float, true, true, kPre>,
                     StepRangeSlot<double, false, false, kPre>, StepRangeSlot<double, false, true, kPre> {};

// One build's kernels: SGDF's and AdaSGDF's two preconditioners.
struct StepRangeKernels : ModeKernels<Preconditioner::kNone>, ModeKernels<Preconditioner::kSecondMoment>,
                          ModeKernels<Preconditioner::kVariance> {
  template <typename acc_t, bool kMaster, bool kUpdate, Preconditioner kPre>
  StepRangeFn<acc_t, kMaster, kUpdate, kPre>& get() {
    return StepRangeSlot<acc_t, kMaster, kUpdate, kPre>::fn;
  }
  template <typename acc_t, bool kMaster, bool kUpdate, Preconditioner kPre>
  StepRangeFn<acc_t, kMaster, kUpdate, kPre> get() const {
    return StepRangeSlot<acc_t, kMaster, kUpdate, kPre>::fn;
  }
};

// The AVX-512 build's kernels (sgdf_cpu_avx512.cpp); all null where the library has none.
const StepRangeKernels& avx512_step_range_kernels();

}  // namespace sgdf_erd::sgdf
