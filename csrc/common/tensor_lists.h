// Checks shared by every multi-tensor op: the lists line up, and each tuple of tensors can be walked as one flat
// buffer. Errors name the argument and the fix.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/stable.h"

namespace sgdf_erd {

using TensorList = std::vector<Tensor>;

// Whether the elements fill one gap-free, overlap-free block of memory in some dimension order (torch's
// is_non_overlapping_and_dense, computed from sizes and strides: the stable ABI does not expose it before 2.12).
inline bool is_non_overlapping_and_dense(IntArrayRef sizes, IntArrayRef strides) {
  const int64_t dim = static_cast<int64_t>(sizes.size());
  // contiguous, the common case, needs no sort (nor the allocation below): this runs for every tensor of a call
  int64_t contiguous_stride = 1;
  bool contiguous = true;
  for (int64_t d = dim - 1; d >= 0 && contiguous; --d) {
    contiguous = sizes[d] < 2 || strides[d] == contiguous_stride;
    contiguous_stride *= sizes[d];
  }
  if (contiguous) return true;
  std::vector<int64_t> order(dim);
  for (int64_t d = 0; d < dim; ++d) order[d] = d;
  // innermost first; dimensions of size 0 or 1 have no say in the layout and go last
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (sizes[a] < 2 || sizes[b] < 2) return sizes[a] >= 2 && sizes[b] < 2;
    return strides[a] < strides[b];
  });
  int64_t expected_stride = 1;
  for (const int64_t d : order) {
    if (sizes[d] < 2) return true;
    if (strides[d] != expected_stride) return false;
    expected_stride *= sizes[d];
  }
  return true;
}

// One list argument of a multi-tensor op, for check_tensor_lists.
struct NamedList {
  const TensorList* tensors;
  const char* name;
  bool dtype_of_reference = true;  // false: the op checks this list's dtype itself (e.g. a state dtype)
};

// lists[0] is the reference (the parameters); every other list must match it tensor by tensor: device, layout,
// shape and strides, and dtype unless the list has its own.
inline void check_tensor_lists(const std::vector<NamedList>& lists, const char* op) {
  const TensorList& reference = *lists[0].tensors;
  const char* reference_name = lists[0].name;
  const size_t n = reference.size();
  for (const NamedList& l : lists) {
    SGDF_ERD_CHECK(l.tensors->size() == n, op, ": '", l.name, "' has ", l.tensors->size(), " tensors but '",
                   reference_name, "' has ", n, "; pass one entry per parameter");
  }
  for (size_t i = 0; i < n; ++i) {
    const Tensor& ref = reference[i];
    SGDF_ERD_CHECK(ref.layout() == Layout::Strided, op, ": '", reference_name, "[", i, "]' is ",
                   LayoutName{ref.layout()}, "; sparse tensors are not supported, use a dense optimizer path");
    // the reference's metadata read once (each read is a call through the stable C ABI)
    const IntArrayRef sizes = ref.sizes();
    const IntArrayRef strides = ref.strides();
    const auto device = ref.device();
    const ScalarType dtype = ref.scalar_type();
    SGDF_ERD_CHECK(is_non_overlapping_and_dense(sizes, strides), op, ": '", reference_name, "[", i,
                   "]' is not dense (it is a view with gaps or overlaps); use foreach=True instead of fused");
    for (size_t l = 1; l < lists.size(); ++l) {
      const Tensor& t = (*lists[l].tensors)[i];
      const char* name = lists[l].name;
      SGDF_ERD_CHECK(t.layout() == Layout::Strided, op, ": '", name, "[", i, "]' is ", LayoutName{t.layout()},
                     "; sparse tensors are not supported");
      SGDF_ERD_CHECK(t.device() == device, op, ": '", name, "[", i, "]' is on ", DeviceName(t.device()),
                     " but '", reference_name, "[", i, "]' is on ", DeviceName(device),
                     "; move them to one device");
      SGDF_ERD_CHECK(!lists[l].dtype_of_reference || t.scalar_type() == dtype, op, ": '", name, "[", i,
                     "]' is ", t.scalar_type(), " but '", reference_name, "[", i, "]' is ", dtype,
                     "; they must share a dtype");
      SGDF_ERD_CHECK(t.sizes().equals(sizes) && t.strides().equals(strides), op, ": '", name, "[", i,
                     "]' has shape/strides ", Shape{t.sizes()}, "/", Shape{t.strides()}, " but '", reference_name,
                     "[", i, "]' has ", Shape{ref.sizes()}, "/", Shape{ref.strides()},
                     "; they must have the same memory layout");
    }
  }
}

// Operands of one multi-tensor call, for check_no_shared_memory: tensors of lists the kernel may write (each must
// own its memory) and single tensors it only reads (these may share memory with each other, not with the lists).
// Names are built only for an error message: this runs on every optimizer step.
struct MemoryOperand {
  const Tensor* tensor;
  const char* name;  // the argument
  int64_t index;     // position in the list, or -1 for a single tensor
  bool exclusive;
};

inline void add_operands(std::vector<MemoryOperand>& out, const TensorList& list, const char* name) {
  for (size_t i = 0; i < list.size(); ++i) out.push_back({&list[i], name, static_cast<int64_t>(i), true});
}

inline std::string operand_name(const MemoryOperand& o) {
  return o.index < 0 ? std::string(o.name) : std::string(o.name) + "[" + std::to_string(o.index) + "]";
}

// Rejects operands that share memory (the same tensor twice, `params[i] is grads[i]`, overlapping views of one
// storage): a kernel walking them as separate buffers would read values another operand already overwrote, and
// threads would race on them. All operands must be on one device (check that first). Sorting the byte ranges keeps
// this O(n log n): optimizer calls pass thousands of tensors.
inline void check_no_shared_memory(const std::vector<MemoryOperand>& operands, const char* op) {
  struct Range {
    uintptr_t begin, end;
    const MemoryOperand* operand;
  };
  std::vector<Range> ranges;
  ranges.reserve(operands.size());
  for (const auto& o : operands) {
    const Tensor& t = *o.tensor;
    if (t.numel() == 0) continue;  // no memory to share
    const IntArrayRef sizes = t.sizes();
    const IntArrayRef strides = t.strides();
    int64_t extent = 1;  // elements from the first to one past the last (strides are never negative)
    for (size_t d = 0; d < sizes.size(); ++d) extent += (sizes[d] - 1) * strides[d];
    const auto begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
    ranges.push_back({begin, begin + static_cast<uintptr_t>(extent) * t.element_size(), &o});
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  // Sweep in order of start: a range overlaps an earlier one iff it starts before the furthest end seen so far.
  const Range* furthest = nullptr;            // among all earlier ranges
  const Range* furthest_exclusive = nullptr;  // among earlier ranges that must own their memory
  for (const auto& r : ranges) {
    const Range* clash = nullptr;
    if (furthest_exclusive != nullptr && r.begin < furthest_exclusive->end) {
      clash = furthest_exclusive;
    } else if (r.operand->exclusive && furthest != nullptr && r.begin < furthest->end) {
      clash = furthest;
    }
    if (clash != nullptr) {
      // name the pair in argument order, whatever order equal addresses were sorted in
      const auto [first, second] = std::minmax(clash->operand, r.operand);
      SGDF_ERD_CHECK(false, op, ": '", operand_name(*first), "' and '", operand_name(*second),
                     "' share memory (the same tensor, or views of one storage that overlap); every tensor of the "
                     "call must have memory of its own: pass distinct tensors (e.g. .clone() one of them)");
    }
    if (furthest == nullptr || r.end > furthest->end) furthest = &r;
    if (r.operand->exclusive && (furthest_exclusive == nullptr || r.end > furthest_exclusive->end)) {
      furthest_exclusive = &r;
    }
  }
}

}  // namespace sgdf_erd
