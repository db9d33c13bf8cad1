#include "ntk/binned_gram.h"

#include <algorithm>

namespace sgdf_erd::ntk {
namespace {

using torch::headeronly::ScalarType;

bool is_integral(ScalarType t) {
  return t == ScalarType::Byte || t == ScalarType::Char || t == ScalarType::Short || t == ScalarType::Int ||
         t == ScalarType::Long || t == ScalarType::UInt16 || t == ScalarType::UInt32 || t == ScalarType::UInt64;
}

void check_args(const Tensor& features, const Tensor& bin_ids, int64_t num_bins) {
  SGDF_ERD_CHECK_VALUE(num_bins >= 1 && num_bins <= kMaxNumBins, kOpName, ": 'num_bins' must lie in [1, ", kMaxNumBins,
                       "] (each bin is a row of the output), got ", num_bins);
  SGDF_ERD_CHECK_VALUE(features.dim() == 2, kOpName, ": 'features' must be 2-D [n, k], got shape ",
                       Shape{features.sizes()});
  SGDF_ERD_CHECK_TYPE(features.scalar_type() == ScalarType::Float || features.scalar_type() == ScalarType::Double,
                      kOpName, ": 'features' must be float32 or float64, got ", features.scalar_type(),
                      "; convert with .float() or .double()");
  SGDF_ERD_CHECK_VALUE(bin_ids.dim() == 1, kOpName, ": 'bin_ids' must be 1-D [n], got shape ",
                       Shape{bin_ids.sizes()});
  SGDF_ERD_CHECK_TYPE(is_integral(bin_ids.scalar_type()), kOpName, ": 'bin_ids' must be an integer tensor, got ",
                      bin_ids.scalar_type(), "; convert with .long()");
  SGDF_ERD_CHECK_VALUE(bin_ids.size(0) == features.size(0), kOpName, ": 'bin_ids' has ", bin_ids.size(0),
                       " entries but 'features' has ", features.size(0), " rows; pass one bin id per row");
  SGDF_ERD_CHECK_VALUE(bin_ids.device() == features.device(), kOpName, ": 'bin_ids' is on ",
                       DeviceName{bin_ids.device()}, " but 'features' is on ", DeviceName{features.device()},
                       "; move them to one device");
  SGDF_ERD_CHECK(features.layout() == torch::headeronly::Layout::Strided &&
                 bin_ids.layout() == torch::headeronly::Layout::Strided,
                 kOpName, ": sparse tensors are not supported; pass dense tensors");
  SGDF_ERD_CHECK_VALUE(has_memory(features), kOpName, ": 'features'", kNoMemory);
  SGDF_ERD_CHECK_VALUE(has_memory(bin_ids), kOpName, ": 'bin_ids'", kNoMemory);
}

BinGroups group_rows(const Tensor& ids, int64_t num_bins) {
  const int64_t n = ids.numel();
  const int64_t* id = ids.const_data_ptr<int64_t>();
  BinGroups g;
  g.offsets.assign(num_bins + 1, 0);
  int64_t lowest = 0, highest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = id[i];
    lowest = std::min(lowest, b);
    highest = std::max(highest, b);
    if (b >= 0 && b < num_bins) ++g.offsets[b + 1];
  }
  SGDF_ERD_CHECK_VALUE(lowest >= 0 && highest < num_bins, kOpName, ": 'bin_ids' must lie in [0, num_bins) = [0, ",
                       num_bins, "), found values in [", lowest, ", ", highest, "]");
  for (int64_t b = 0; b < num_bins; ++b) {
    g.max_count = std::max(g.max_count, g.offsets[b + 1]);
    g.offsets[b + 1] += g.offsets[b];
  }
  g.rows.resize(n);
  std::vector<int64_t> next(g.offsets.begin(), g.offsets.end() - 1);
  for (int64_t i = 0; i < n; ++i) g.rows[next[id[i]]++] = i;
  return g;
}

}  // namespace

BinnedGramCall prepare_binned_gram(const Tensor& features, const Tensor& bin_ids, int64_t num_bins) {
  check_args(features, bin_ids, num_bins);
  BinnedGramCall call;
  call.features = features.is_contiguous() ? features : torch::stable::contiguous(features);
  const Tensor ids = torch::stable::to(bin_ids, ScalarType::Long, std::nullopt,
                                       torch::stable::Device(torch::headeronly::DeviceType::CPU));
  call.groups = group_rows(ids.is_contiguous() ? ids : torch::stable::contiguous(ids), num_bins);
  call.eig = torch::stable::new_zeros(call.features, {num_bins, call.groups.max_count});
  call.counts = new_empty_contiguous(ids, {num_bins}, ScalarType::Long);
  int64_t* c = call.counts.mutable_data_ptr<int64_t>();
  for (int64_t b = 0; b < num_bins; ++b) c[b] = call.groups.count(b);
  return call;
}

}  // namespace sgdf_erd::ntk
