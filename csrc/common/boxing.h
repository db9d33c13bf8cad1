// SGDF_ERD_BOX(func): TORCH_BOX for ops with tensor-list arguments. A parameter of type TensorHandles (or
// std::optional<TensorHandles>) receives its list as handles (common/tensor_lists.h: no torch::stable::Tensor per
// element); every other parameter is unboxed as TORCH_BOX unboxes it. func returns nothing and takes each argument by
// value or by reference: the unboxed arguments live, as lvalues, until it returns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "common/python_gil.h"
#include "common/stable.h"
#include "common/tensor_lists.h"

namespace sgdf_erd {
namespace detail {

template <typename T>
struct Unbox {
  static T call(StableIValue value) { return torch::stable::detail::to<T>(value); }
};

template <>
struct Unbox<TensorHandles> {
  static TensorHandles call(StableIValue value) {
    return TensorHandles(torch::stable::detail::to<StableListHandle>(value));
  }
};

template <>
struct Unbox<std::optional<TensorHandles>> {
  static std::optional<TensorHandles> call(StableIValue value) {
    const auto list = torch::stable::detail::to<std::optional<StableListHandle>>(value);
    if (!list.has_value()) return std::nullopt;
    return TensorHandles(*list);
  }
};

template <typename T>
void release(T&) {}  // (the rest is released with the arguments)
inline void release(TensorHandles& list) { list.release(); }
inline void release(std::optional<TensorHandles>& list) {
  if (list.has_value()) list->release();
}

template <typename Fn>
struct Boxer;

template <typename... Params>
struct Boxer<void (*)(Params...)> {
  template <void (*func)(Params...)>
  static void boxed_fn(StableIValue* stack, uint64_t num_args, uint64_t num_outputs) {
    STD_TORCH_CHECK(num_args == sizeof...(Params) && num_outputs == 0, "Registered schema has ", num_args,
                    " args and ", num_outputs, " outputs, but the kernel to box has ", sizeof...(Params),
                    " and none");
    call<func>(stack, std::index_sequence_for<Params...>{});
  }

 private:
  template <void (*func)(Params...), size_t... I>
  static void call(StableIValue* stack, std::index_sequence<I...>) {
    // braces: unboxed in order, and those done are released if a later one throws
    using Args = std::tuple<std::decay_t<Params>...>;
    Args args{Unbox<std::decay_t<Params>>::call(stack[I])...};
    // The op's references are mostly the last C++ references to tensors that Python holds: releasing one makes
    // torch hand the Python object's ownership back, which takes the GIL (the dispatcher runs the op without it).
    // Released under one hold of the GIL, whether func returns or throws: once per call instead of once per tensor
    // (measured: about a sixth of a fused SGDF step over 1000 one-element params).
    struct ReleaseHandles {
      Args& args;
      ~ReleaseHandles() {
        const ScopedGil gil;
        std::apply([](auto&... arg) { (release(arg), ...); }, args);
      }
    } release_handles{args};
    std::apply(func, args);
  }
};

}  // namespace detail
}  // namespace sgdf_erd

#define SGDF_ERD_BOX(func) (&::sgdf_erd::detail::Boxer<decltype(func)>::template boxed_fn<func>)
