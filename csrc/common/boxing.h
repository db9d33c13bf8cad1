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
    std::tuple<std::decay_t<Params>...> args{Unbox<std::decay_t<Params>>::call(stack[I])...};
    std::apply(func, args);
  }
};

}  // namespace detail
}  // namespace sgdf_erd

#define SGDF_ERD_BOX(func) (&::sgdf_erd::detail::Boxer<decltype(func)>::template boxed_fn<func>)
