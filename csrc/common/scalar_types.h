// Element types of the kernels and the dispatch from a runtime dtype to a compile-time one. Header-only torch
// types only, so CPU, CUDA host and CUDA device code share it.
#pragma once

#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <stdexcept>
#include <string>
#include <type_traits>

namespace sgdf_erd {

using Half = torch::headeronly::Half;
using BFloat16 = torch::headeronly::BFloat16;

template <typename T>
inline constexpr bool is_reduced_floating_point_v = std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

// The type a kernel computes in for data of type T: float for the 16-bit types, T itself otherwise.
template <typename T>
using opmath_t = std::conditional_t<is_reduced_floating_point_v<T>, float, T>;

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<scalar_t>{}) for float32, float64, float16 and bfloat16; `what` names the caller in the error
// for any other dtype (callers check dtypes with a better message first, so that one is a safety net).
template <typename Fn>
decltype(auto) dispatch_floating_types(torch::headeronly::ScalarType dtype, const char* what, Fn&& fn) {
  using torch::headeronly::ScalarType;
  switch (dtype) {
    case ScalarType::Float: return fn(TypeTag<float>{});
    case ScalarType::Double: return fn(TypeTag<double>{});
    case ScalarType::Half: return fn(TypeTag<Half>{});
    case ScalarType::BFloat16: return fn(TypeTag<BFloat16>{});
    default:
      throw std::runtime_error(std::string(what) + ": unsupported dtype " + torch::headeronly::toString(dtype));
  }
}

}  // namespace sgdf_erd
