// Checks shared by every multi-tensor op: the lists line up, and each tuple of tensors can be walked as one flat
// buffer. Errors name the argument and the fix.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/stable.h"

namespace sgdf_erd {

// One tensor of a list argument, borrowed from the list that owns its handle (TensorHandles). Reads go straight
// through the C shim; the few uses that need torch::stable::Tensor's API (error messages) take a new reference.
class TensorRef {
 public:
  explicit TensorRef(AtenTensorHandle handle) : handle_(handle) {}
  AtenTensorHandle get() const { return handle_; }
  void* data_ptr() const {
    void* data = nullptr;
    SGDF_ERD_SHIM_CHECK(aoti_torch_get_data_ptr(handle_, &data));
    return data;
  }
  int64_t numel() const {
    int64_t numel = 0;
    SGDF_ERD_SHIM_CHECK(aoti_torch_get_numel(handle_, &numel));
    return numel;
  }
  int32_t get_device_index() const {
    int32_t index = 0;
    SGDF_ERD_SHIM_CHECK(aoti_torch_get_device_index(handle_, &index));
    return index;
  }
  Tensor tensor() const {
    AtenTensorHandle reference = nullptr;
    SGDF_ERD_SHIM_CHECK(aoti_torch_new_tensor_handle(handle_, &reference));
    return Tensor(reference);
  }
  ScalarType scalar_type() const { return tensor().scalar_type(); }
  torch::stable::Device device() const { return tensor().device(); }
  Layout layout() const { return tensor().layout(); }

 private:
  AtenTensorHandle handle_;
};

// A list of tensors, or a slice of one (a param group's), borrowed from a TensorHandles (as at::TensorList borrows
// a std::vector<at::Tensor>).
class TensorList {
 public:
  TensorList() = default;
  TensorList(const AtenTensorHandle* data, size_t size) : data_(data), size_(size) {}
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  TensorRef operator[](size_t i) const { return TensorRef(data_[i]); }
  TensorList slice(size_t begin, size_t count) const { return {data_ + begin, count}; }

 private:
  const AtenTensorHandle* data_ = nullptr;
  size_t size_ = 0;
};

// A list argument of an op as the op receives it: a handle per tensor, each a reference the op owns (released with
// this object). An op taking lists of thousands of tensors unboxes them here (SGDF_ERD_BOX, common/boxing.h)
// rather than into torch::stable::Tensor objects, each of which would cost a heap allocation (its shared_ptr's
// control block) and atomic reference counting: measured, about a fifth of a fused optimizer step over 1000 small
// tensors.
class TensorHandles {
 public:
  TensorHandles() = default;
  // Takes over `list` (a list of tensors the op received: the list is freed, its tensors' references kept).
  explicit TensorHandles(StableListHandle list) {
    const auto free_list = [&] { SGDF_ERD_SHIM_CHECK(torch_delete_list(list)); };
    try {
      size_t size = 0;
      SGDF_ERD_SHIM_CHECK(torch_list_size(list, &size));
      handles_.reserve(size);
      for (size_t i = 0; i < size; ++i) {
        StableIValue element = 0;
        SGDF_ERD_SHIM_CHECK(torch_list_get_item(list, i, &element));
        handles_.push_back(torch::stable::detail::to<AtenTensorHandle>(element));
      }
    } catch (...) {
      release();
      free_list();
      throw;
    }
    free_list();
  }
  TensorHandles(TensorHandles&& other) noexcept : handles_(std::move(other.handles_)) { other.handles_.clear(); }
  TensorHandles& operator=(TensorHandles&& other) noexcept {
    std::swap(handles_, other.handles_);
    return *this;
  }
  TensorHandles(const TensorHandles&) = delete;
  TensorHandles& operator=(const TensorHandles&) = delete;
  ~TensorHandles() { release(); }
  operator TensorList() const { return {handles_.data(), handles_.size()}; }  // NOLINT: a borrow, as in torch
  size_t size() const { return handles_.size(); }
  bool empty() const { return handles_.empty(); }
  // Releases the references now (the object is then empty). SGDF_ERD_BOX does so holding the GIL: see there.
  void release() noexcept {
    for (AtenTensorHandle h : handles_) aoti_torch_delete_tensor_object(h);  // (cannot fail for a valid handle)
    handles_.clear();
  }

 private:
  std::vector<AtenTensorHandle> handles_;
};

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

// The C ABI's code of the strided layout (a call to ask; asked once).
inline int32_t strided_layout_code() {
  static const int32_t code = aoti_torch_layout_strided();
  return code;
}

// What the checks read of a tensor, read once per call: every read is a call through the stable C ABI (and turning
// a dtype, device or layout code into torch's enum is a chain of further calls), while an optimizer step checks
// thousands of tensors. The codes are the C ABI's own and are compared as they are; messages ask the tensor again.
struct TensorMeta {
  int32_t layout = 0, dtype = 0, device_type = 0, device_index = 0;
  IntArrayRef sizes, strides;  // empty for a tensor that is not strided (sparse: it has no strides)
  uintptr_t address = 0;
  // Elements, and elements from the first to one past the last (strides are never negative; 0 when empty): worked
  // out while the tensor's sizes are in cache, for the checks that walk thousands of tensors afterwards.
  int64_t numel = 1, extent = 1;

  TensorMeta() = default;
  explicit TensorMeta(AtenTensorHandle h) {
    SGDF_ERD_SHIM_CHECK(aoti_torch_get_layout(h, &layout));
    SGDF_ERD_SHIM_CHECK(aoti_torch_get_dtype(h, &dtype));
    SGDF_ERD_SHIM_CHECK(aoti_torch_get_device_type(h, &device_type));
    SGDF_ERD_SHIM_CHECK(aoti_torch_get_device_index(h, &device_index));
    if (layout != strided_layout_code()) return;
    int64_t dim = 0;
    int64_t* size_data = nullptr;
    int64_t* stride_data = nullptr;
    void* data = nullptr;
    SGDF_ERD_SHIM_CHECK(aoti_torch_get_dim(h, &dim));
    SGDF_ERD_SHIM_CHECK(aoti_torch_get_sizes(h, &size_data));
    SGDF_ERD_SHIM_CHECK(aoti_torch_get_strides(h, &stride_data));
    SGDF_ERD_SHIM_CHECK(aoti_torch_get_data_ptr(h, &data));
    sizes = IntArrayRef(size_data, static_cast<size_t>(dim));
    strides = IntArrayRef(stride_data, static_cast<size_t>(dim));
    address = reinterpret_cast<uintptr_t>(data);
    for (int64_t d = 0; d < dim; ++d) {
      numel *= size_data[d];
      extent += (size_data[d] - 1) * stride_data[d];
    }
    if (numel == 0) extent = 0;
  }
  bool strided() const { return layout == strided_layout_code(); }
  // False for a tensor with elements but no memory: its storage freed (untyped_storage().resize_(0), as FSDP frees
  // unsharded parameters) or an efficient zero tensor; a kernel would read and write through a null pointer.
  bool has_memory() const { return numel == 0 || address != 0; }
  bool same_device(const TensorMeta& other) const {
    return device_type == other.device_type && device_index == other.device_index;
  }
};

using TensorMetas = std::vector<TensorMeta>;

inline TensorMetas read_metas(TensorList tensors) {
  TensorMetas metas;
  metas.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) metas.emplace_back(tensors[i].get());
  return metas;
}

// One list argument of a multi-tensor op, for check_tensor_lists, which fills in `metas`.
struct NamedList {
  TensorList tensors;
  const char* name;
  bool dtype_of_reference = true;  // false: the op checks this list's dtype itself (e.g. a state dtype)
  TensorMetas metas = {};
};

// Whether two tensors have one shape and walk their elements in the same order through memory: equal strides in
// every dimension of size 2 or more (a stride of a dimension of size 1 is never used to step, and tensors made
// elsewhere may give it any value).
inline bool same_shape_and_layout(const TensorMeta& a, const TensorMeta& b) {
  if (a.sizes.size() != b.sizes.size()) return false;
  for (size_t d = 0; d < a.sizes.size(); ++d) {  // (a loop: a call to memcmp costs more for a few dimensions)
    if (a.sizes[d] != b.sizes[d] || (a.sizes[d] >= 2 && a.strides[d] != b.strides[d])) return false;
  }
  return true;
}

// lists[0] is the reference (the parameters); every other list must match it tensor by tensor: device, layout,
// shape and strides, and dtype unless the list has its own. Reads each tensor's metadata (NamedList::metas).
inline void check_tensor_lists(std::vector<NamedList>& lists, const char* op) {
  NamedList& reference = lists[0];
  const size_t n = reference.tensors.size();
  for (NamedList& l : lists) {
    SGDF_ERD_CHECK(l.tensors.size() == n, op, ": '", l.name, "' has ", l.tensors.size(), " tensors but '",
                   reference.name, "' has ", n, "; pass one entry per parameter");
    l.metas.resize(n);
  }
  // Read and checked one param at a time: its tensors' metadata are still in cache for the comparisons.
  for (size_t i = 0; i < n; ++i) {
    for (NamedList& l : lists) l.metas[i] = TensorMeta(l.tensors[i].get());
    const TensorMeta& ref = reference.metas[i];
    const TensorRef ref_tensor = reference.tensors[i];
    SGDF_ERD_CHECK(ref.strided(), op, ": '", reference.name, "[", i, "]' is ", LayoutName{ref_tensor.layout()},
                   "; sparse tensors are not supported, use a dense optimizer path");
    SGDF_ERD_CHECK(ref.has_memory(), op, ": '", reference.name, "[", i, "]'", kNoMemory);
    SGDF_ERD_CHECK(is_non_overlapping_and_dense(ref.sizes, ref.strides), op, ": '", reference.name, "[", i,
                   "]' is not dense (it is a view with gaps or overlaps); use foreach=True instead of fused");
    for (size_t l = 1; l < lists.size(); ++l) {
      const TensorMeta& m = lists[l].metas[i];
      const TensorRef t = lists[l].tensors[i];
      const char* name = lists[l].name;
      SGDF_ERD_CHECK(m.strided(), op, ": '", name, "[", i, "]' is ", LayoutName{t.layout()},
                     "; sparse tensors are not supported");
      SGDF_ERD_CHECK(m.has_memory(), op, ": '", name, "[", i, "]'", kNoMemory);
      SGDF_ERD_CHECK(m.same_device(ref), op, ": '", name, "[", i, "]' is on ", DeviceName(t.device()), " but '",
                     reference.name, "[", i, "]' is on ", DeviceName(ref_tensor.device()),
                     "; move them to one device");
      SGDF_ERD_CHECK(!lists[l].dtype_of_reference || m.dtype == ref.dtype, op, ": '", name, "[", i, "]' is ",
                     t.scalar_type(), " but '", reference.name, "[", i, "]' is ", ref_tensor.scalar_type(),
                     "; they must share a dtype");
      SGDF_ERD_CHECK(same_shape_and_layout(m, ref), op, ": '", name, "[", i,
                     "]' has shape/strides ", Shape{m.sizes}, "/", Shape{m.strides}, " but '", reference.name, "[",
                     i, "]' has ", Shape{ref.sizes}, "/", Shape{ref.strides},
                     "; they must have the same memory layout");
    }
  }
}

// Operands of one multi-tensor call, for check_no_shared_memory: the tensors the kernel may write (each must own its
// memory) and those it only reads (single tensors, or lists the caller marks so: these may share memory with each
// other, not with written ones). Kept as whole lists (the metadata check_tensor_lists read): names are built only for an error message.
class MemoryOperands {
 public:
  // `group`: the param group, in a call over several (its lists are then numbered within it), else -1.
  // `written`: false for a list the call only reads (it may then share memory with other read-only operands).
  void add_list(const TensorMetas& metas, const char* name, int64_t group = -1, bool written = true) {
    sources_.push_back({metas.data(), metas.size(), name, group, true, written});
    count_ += metas.size();
  }
  void add_single(const TensorMeta& meta, const char* name, int64_t group = -1) {
    sources_.push_back({&meta, 1, name, group, false, false});
    count_ += 1;
  }

 private:
  struct Source {
    const TensorMeta* metas;
    size_t size;
    const char* name;  // the argument
    int64_t group;
    bool is_list;  // else a single tensor
    bool written;  // else only read: it may share memory with other operands that are only read
  };
  std::vector<Source> sources_;
  size_t count_ = 0;
  friend void check_no_shared_memory(const MemoryOperands& operands, const char* op);
};

// Rejects operands that share memory (the same tensor twice, `params[i] is grads[i]`, overlapping views of one
// storage): a kernel walking them as separate buffers would read values another operand already overwrote, and
// threads would race on them. All operands must be strided and on one device (check that first). Sorting the byte
// ranges keeps this O(n log n): optimizer calls pass thousands of tensors.
inline void check_no_shared_memory(const MemoryOperands& operands, const char* op) {
  struct Range {
    uintptr_t begin, end;
    uint32_t source, index;  // the operand: operands.sources_[source], its tensor `index`
  };
  std::vector<Range> ranges;
  ranges.reserve(operands.count_);
  int32_t sized_dtype = -1;  // element sizes looked up once per dtype (the operands mostly share one)
  size_t element_size = 0;
  for (size_t s = 0; s < operands.sources_.size(); ++s) {
    const MemoryOperands::Source& source = operands.sources_[s];
    for (size_t i = 0; i < source.size; ++i) {
      const TensorMeta& m = source.metas[i];
      if (m.numel == 0) continue;  // no memory to share
      if (m.dtype != sized_dtype) {
        sized_dtype = m.dtype;
        element_size = aoti_torch_dtype_element_size(m.dtype);
      }
      ranges.push_back({m.address, m.address + static_cast<uintptr_t>(m.extent) * element_size,
                        static_cast<uint32_t>(s), static_cast<uint32_t>(i)});
    }
  }
  auto by_begin = [](const Range& a, const Range& b) { return a.begin < b.begin; };
  if (!std::is_sorted(ranges.begin(), ranges.end(), by_begin)) std::sort(ranges.begin(), ranges.end(), by_begin);
  auto exclusive = [&](const Range& r) { return operands.sources_[r.source].written; };
  // Sweep in order of start: a range overlaps an earlier one iff it starts before the furthest end seen so far.
  const Range* furthest = nullptr;            // among all earlier ranges
  const Range* furthest_exclusive = nullptr;  // among earlier ranges that must own their memory
  for (const Range& r : ranges) {
    const Range* clash = nullptr;
    if (furthest_exclusive != nullptr && r.begin < furthest_exclusive->end) {
      clash = furthest_exclusive;
    } else if (exclusive(r) && furthest != nullptr && r.begin < furthest->end) {
      clash = furthest;
    }
    if (C10_UNLIKELY(clash != nullptr)) {
      // name the pair in argument order, whatever order equal addresses were sorted in
      auto name = [&](const Range* o) {
        const MemoryOperands::Source& source = operands.sources_[o->source];
        std::string name = source.is_list ? str_cat(source.name, "[", o->index, "]") : std::string(source.name);
        return source.group < 0 ? name : str_cat(name, " of param group ", source.group);
      };
      auto order = [](const Range* o) { return std::pair{o->source, o->index}; };
      const auto [first, second] = order(clash) < order(&r) ? std::pair{clash, &r} : std::pair{&r, clash};
      SGDF_ERD_CHECK(false, op, ": '", name(first), "' and '", name(second),
                     "' share memory (the same tensor, or views of one storage that overlap); every tensor of the "
                     "call must have memory of its own: pass distinct tensors (e.g. .clone() one of them)");
    }
    if (furthest == nullptr || r.end > furthest->end) furthest = &r;
    if (exclusive(r) && (furthest_exclusive == nullptr || r.end > furthest_exclusive->end)) furthest_exclusive = &r;
  }
}

}  // namespace sgdf_erd
