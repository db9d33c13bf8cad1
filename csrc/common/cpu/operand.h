// One operand of a CPU multi-tensor kernel's element range: plain data, the same for every instruction-set build of
// the kernels (common/cpu/vec.h), so the code that gathers operands is built once.
#pragma once

#include <cstdint>

#include <torch/headeronly/core/ScalarType.h>

namespace sgdf_erd::cpu {

// How results are written into 16-bit storage.
struct Rounding {
  bool stochastic = false;
  uint32_t key = 0;  // random::tensor_key of the tensor and its stream, when stochastic
};

// Where an operand's elements are, their dtype, and whether (and how) results are stored back.
struct Operand {
  void* data = nullptr;  // the range's first element
  torch::headeronly::ScalarType dtype = torch::headeronly::ScalarType::Float;
  bool write = false;
  Rounding rounding;  // for 16-bit storage

  // The same operand `elements` further on.
  Operand advanced(int64_t elements) const {
    using torch::headeronly::ScalarType;
    const int64_t size = dtype == ScalarType::Double ? 8 : dtype == ScalarType::Float ? 4 : 2;
    Operand o = *this;
    o.data = static_cast<char*>(data) + elements * size;
    return o;
  }
};

}  // namespace sgdf_erd::cpu
