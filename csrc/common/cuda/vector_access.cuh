// Aligned vector loads and stores for elementwise CUDA kernels: a Pack of N elements of T moves as one
// 16-byte (or smaller) memory transaction. can_use_packs() is the host-side test that a launch may use them.
#pragma once

#include <cstdint>
#include <initializer_list>

namespace sgdf_erd::cuda {

constexpr int kPackBytes = 16;  // widest load one thread issues (ld.global.v4.b32)

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements of T per 16-byte pack.
template <typename T>
constexpr int pack_size() {
  return kPackBytes / static_cast<int>(sizeof(T));
}

template <typename T>
using Pack16 = Pack<T, pack_size<T>()>;

// Pack i of an array of T (i counts packs, not elements); base must be 16-byte aligned.
template <typename T>
__device__ __forceinline__ Pack16<T> load_pack(const T* base, int64_t i) {
  return reinterpret_cast<const Pack16<T>*>(base)[i];
}

template <typename T>
__device__ __forceinline__ void store_pack(T* base, int64_t i, const Pack16<T>& value) {
  reinterpret_cast<Pack16<T>*>(base)[i] = value;
}

// True when every non-null pointer is 16-byte aligned and every run of `run_length` elements (a sample, a chunk)
// starts on a pack boundary, so that all of a kernel's accesses can be whole packs.
template <typename T>
inline bool can_use_packs(std::initializer_list<const void*> ptrs, int64_t run_length) {
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<std::uintptr_t>(p) % kPackBytes != 0) return false;
  }
  return run_length % pack_size<T>() == 0;
}

}  // namespace sgdf_erd::cuda
