// Checks shared by every multi-tensor op: the lists line up, and each tuple of tensors can be walked as one flat
// buffer. Errors name the argument and the fix.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace sgdf_erd {

// lists[0] is the reference (the parameters); every other list must match it tensor by tensor.
inline void check_tensor_lists(const std::vector<at::TensorList>& lists, const std::vector<std::string>& names,
                               const char* op) {
  const auto n = lists[0].size();
  for (const auto l : c10::irange(lists.size())) {
    TORCH_CHECK(lists[l].size() == n, op, ": '", names[l], "' has ", lists[l].size(), " tensors but '", names[0],
                "' has ", n, "; pass one entry per parameter");
  }
  for (const auto i : c10::irange(n)) {
    const at::Tensor& ref = lists[0][i];
    TORCH_CHECK(ref.layout() == at::kStrided, op, ": '", names[0], "[", i, "]' is ", ref.layout(),
                "; sparse tensors are not supported, use a dense optimizer path");
    TORCH_CHECK(ref.is_non_overlapping_and_dense(), op, ": '", names[0], "[", i,
                "]' is not dense (it is a view with gaps or overlaps); use foreach=True instead of fused");
    for (const auto l : c10::irange(size_t{1}, lists.size())) {
      const at::Tensor& t = lists[l][i];
      TORCH_CHECK(t.layout() == at::kStrided, op, ": '", names[l], "[", i, "]' is ", t.layout(),
                  "; sparse gradients are not supported");
      TORCH_CHECK(t.device() == ref.device(), op, ": '", names[l], "[", i, "]' is on ", t.device(), " but '",
                  names[0], "[", i, "]' is on ", ref.device(), "; move them to one device");
      TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": '", names[l], "[", i, "]' is ", t.scalar_type(),
                  " but '", names[0], "[", i, "]' is ", ref.scalar_type(), "; they must share a dtype");
      TORCH_CHECK(t.sizes() == ref.sizes() && t.strides() == ref.strides(), op, ": '", names[l], "[", i,
                  "]' has shape/strides ", t.sizes(), "/", t.strides(), " but '", names[0], "[", i, "]' has ",
                  ref.sizes(), "/", ref.strides(), "; they must have the same memory layout");
    }
  }
}

// Operands of one multi-tensor call, for check_no_shared_memory: tensors of lists the kernel may write (each must
// own its memory) and single tensors it only reads (these may share memory with each other, not with the lists).
// Names are built only for an error message: this runs on every optimizer step.
struct MemoryOperand {
  const at::Tensor* tensor;
  const char* name;  // the argument
  int64_t index;     // position in the list, or -1 for a single tensor
  bool exclusive;
};

inline void add_operands(std::vector<MemoryOperand>& out, at::TensorList list, const char* name) {
  for (const auto i : c10::irange(list.size())) out.push_back({&list[i], name, static_cast<int64_t>(i), true});
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
    const at::Tensor& t = *o.tensor;
    if (t.numel() == 0) continue;  // no memory to share
    int64_t extent = 1;  // elements from the first to one past the last (strides are never negative)
    for (const auto d : c10::irange(t.dim())) extent += (t.size(d) - 1) * t.stride(d);
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
      TORCH_CHECK(false, op, ": '", operand_name(*first), "' and '", operand_name(*second),
                  "' share memory (the same tensor, or views of one storage that overlap); every tensor of the call "
                  "must have memory of its own: pass distinct tensors (e.g. .clone() one of them)");
    }
    if (furthest == nullptr || r.end > furthest->end) furthest = &r;
    if (r.operand->exclusive && (furthest_exclusive == nullptr || r.end > furthest_exclusive->end)) {
      furthest_exclusive = &r;
    }
  }
}

}  // namespace sgdf_erd
