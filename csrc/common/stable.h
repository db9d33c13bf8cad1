// The one header through which host code reaches torch: the LibTorch stable ABI (torch/csrc/stable) and the
// header-only API (torch/headeronly), nothing else, so that one build loads into every torch from the targeted
// version on. Also the checks whose failures reach Python as exceptions, and the formatting their messages use.
#pragma once

// The oldest torch whose stable ABI this library may use. Defining it hides every newer stable feature and makes
// torch's non-stable headers (ATen, c10) refuse to compile. setup.py passes the same value to every file.
#ifndef TORCH_TARGET_VERSION
#define TORCH_TARGET_VERSION (((0ULL + 2) << 56) | ((0ULL + 11) << 48))
#endif

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/DeviceType.h>
#include <torch/headeronly/core/Layout.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/macros/Macros.h>
#include <torch/headeronly/util/Exception.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>
#include <torch/headeronly/util/shim_utils.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

// Checks a C shim call's error code. torch 2.14's stable macro carries the shim's own message (an allocation failure
// says so); torch 2.11's headers (the oldest targeted, and the GPU machine's) have only the header-only macro.
#ifdef STABLE_TORCH_ERROR_CODE_CHECK
#define SGDF_ERD_SHIM_CHECK(call) STABLE_TORCH_ERROR_CODE_CHECK(call)
#else
#define SGDF_ERD_SHIM_CHECK(call) TORCH_ERROR_CODE_CHECK(call)
#endif

namespace sgdf_erd {

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using DeviceType = torch::headeronly::DeviceType;
using Layout = torch::headeronly::Layout;
using IntArrayRef = torch::headeronly::IntHeaderOnlyArrayRef;

// An uninitialised contiguous tensor of `sizes` and `dtype` on the device of `like`, allocated through the C shim:
// torch::stable::new_empty goes through the dispatcher (boxing its arguments) from torch 2.10 on, a few microseconds
// per tensor, and a small op call allocates several.
inline Tensor new_empty_contiguous(const Tensor& like, IntArrayRef sizes, ScalarType dtype) {
  int32_t device_type = 0, device_index = 0;
  SGDF_ERD_SHIM_CHECK(aoti_torch_get_device_type(like.get(), &device_type));
  SGDF_ERD_SHIM_CHECK(aoti_torch_get_device_index(like.get(), &device_index));
  int64_t strides[8];
  STD_TORCH_CHECK(sizes.size() <= 8, "new_empty_contiguous: at most 8 dimensions");
  int64_t stride = 1;
  for (size_t d = sizes.size(); d-- > 0;) {
    strides[d] = stride;
    stride *= sizes[d] > 1 ? sizes[d] : 1;
  }
  AtenTensorHandle handle = nullptr;
  SGDF_ERD_SHIM_CHECK(aoti_torch_empty_strided(
      static_cast<int64_t>(sizes.size()), sizes.data(), strides,
      torch::stable::detail::to<int32_t>(torch::stable::detail::from(dtype)), device_type, device_index, &handle));
  return Tensor(handle);
}

// Message pieces for check failures. Each formats a value the way torch's own messages did before the port, so
// messages read the same: dtypes as "Float", devices as "cpu" / "cuda:0", shapes as "[2, 3]", layouts as "Strided".
struct Shape {
  IntArrayRef dims;
};
inline std::ostream& operator<<(std::ostream& os, const Shape& s) {
  os << '[';
  for (size_t i = 0; i < s.dims.size(); ++i) os << (i ? ", " : "") << s.dims[i];
  return os << ']';
}

// A double as the shortest decimal that reads back as it: beta1=0.999999999 where the stream's default 6 digits
// print 1, the bound it is refused for.
struct Exact {
  double value;
};
inline std::ostream& operator<<(std::ostream& os, Exact x) {
  char text[32];
  for (int digits = 6; digits <= 17; ++digits) {  // (NaN never reads back equal: it prints with 17)
    std::snprintf(text, sizeof text, "%.*g", digits, x.value);
    if (digits == 17 || std::strtod(text, nullptr) == x.value) break;
  }
  return os << text;
}

// (type and index rather than the Device itself: torch::stable types have hidden visibility)
struct DeviceName {
  DeviceType type;
  int index;  // -1: none
  explicit DeviceName(const torch::stable::Device& d)
      : type(d.type()), index(d.has_index() ? static_cast<int>(d.index()) : -1) {}
};
inline std::ostream& operator<<(std::ostream& os, const DeviceName& d) {
  switch (d.type) {
    case DeviceType::CPU: os << "cpu"; break;
    case DeviceType::CUDA: os << "cuda"; break;
    case DeviceType::Meta: os << "meta"; break;
    default: os << "device_type_" << static_cast<int>(d.type); break;
  }
  if (d.index >= 0) os << ':' << d.index;
  return os;
}

struct LayoutName {
  Layout layout;
};
inline std::ostream& operator<<(std::ostream& os, const LayoutName& l) {
  switch (l.layout) {
    case Layout::Strided: return os << "Strided";
    case Layout::Sparse: return os << "Sparse";
    case Layout::SparseCsr: return os << "SparseCsr";
    case Layout::SparseCsc: return os << "SparseCsc";
    case Layout::SparseBsr: return os << "SparseBsr";
    case Layout::SparseBsc: return os << "SparseBsc";
    case Layout::Mkldnn: return os << "Mkldnn";
    case Layout::Jagged: return os << "Jagged";
    default: return os << "Layout(" << static_cast<int>(l.layout) << ")";
  }
}

// The Python spelling of a dtype ("torch.float32"), for messages that talk to Python users.
inline const char* python_dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "torch.float32";
    case ScalarType::Double: return "torch.float64";
    case ScalarType::Half: return "torch.float16";
    case ScalarType::BFloat16: return "torch.bfloat16";
    case ScalarType::Int: return "torch.int32";
    case ScalarType::Long: return "torch.int64";
    case ScalarType::Short: return "torch.int16";
    case ScalarType::Char: return "torch.int8";
    case ScalarType::Byte: return "torch.uint8";
    case ScalarType::Bool: return "torch.bool";
    case ScalarType::ComplexFloat: return "torch.complex64";
    case ScalarType::ComplexDouble: return "torch.complex128";
    default: return torch::headeronly::toString(t);
  }
}

template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return std::move(os).str();
}

}  // namespace sgdf_erd

// Checks with a message made of its arguments, streamed in order (ScalarType prints as "Float"; wrap devices,
// shapes and layouts in DeviceName / Shape / LayoutName). Unlike STD_TORCH_CHECK, the message is only what the
// arguments say (no source location), so it starts with the op name the caller passes.
//
// Only the message of a stable-ABI kernel's exception reliably reaches Python: torch up to 2.14 raises ValueError
// for std::invalid_argument, torch 2.15 raises RuntimeError for every exception (its shim keeps only what()), and no
// C++ exception becomes TypeError. So a check meaning a Python type other than RuntimeError starts its message with
// that type's name, and sgdf_erd's op face (python/sgdf_erd/_kernel_errors.py) raises that type, marker removed:
//   SGDF_ERD_CHECK        -> RuntimeError  (std::runtime_error, no marker)
//   SGDF_ERD_CHECK_VALUE  -> ValueError    (std::invalid_argument, "ValueError: ")
//   SGDF_ERD_CHECK_TYPE   -> TypeError     (std::invalid_argument, "TypeError: ")
// A direct torch.ops.sgdf_erd call keeps the marker, as ValueError up to torch 2.14 and RuntimeError from 2.15.
#define SGDF_ERD_CHECK_AS(exception, cond, ...)                        \
  do {                                                                 \
    if (C10_UNLIKELY(!(cond))) throw exception(::sgdf_erd::str_cat(__VA_ARGS__)); \
  } while (false)
#define SGDF_ERD_CHECK(cond, ...) SGDF_ERD_CHECK_AS(std::runtime_error, cond, __VA_ARGS__)
#define SGDF_ERD_CHECK_VALUE(cond, ...) SGDF_ERD_CHECK_AS(std::invalid_argument, cond, "ValueError: ", __VA_ARGS__)
#define SGDF_ERD_CHECK_TYPE(cond, ...) SGDF_ERD_CHECK_AS(std::invalid_argument, cond, "TypeError: ", __VA_ARGS__)

namespace sgdf_erd {

// The end of the message for a tensor with elements but no memory, after its name: its storage freed
// (untyped_storage().resize_(0), as FSDP frees unsharded parameters) or an efficient zero tensor, which a kernel
// would read and write through a null pointer.
inline constexpr const char* kNoMemory =
    " has elements but no memory (its storage was freed, e.g. by untyped_storage().resize_(0), or it is an efficient "
    "zero tensor); pass a tensor whose memory is allocated";

inline bool has_memory(const Tensor& t) { return t.numel() == 0 || t.data_ptr() != nullptr; }

}  // namespace sgdf_erd
