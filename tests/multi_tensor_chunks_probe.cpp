// Runs csrc/common/cuda/multi_tensor_chunks.h on the host as the CUDA multi-tensor apply does on the device, for
// tests/test_multi_tensor_chunks.py: the launch tables of a list of tensors, then every block's threads walking
// their chunk. Input (stdin): "depth n", then n lines "numel aligned" (aligned: 1 when every operand of the tensor
// is aligned for vector accesses). Output: "launches L max_blocks B max_entries E", one line "problem ..." per
// broken rule of the tables or the vectors, then per tensor "covered_not_once vector_elements scalar_elements".
#include <cstdint>
#include <cstdio>
#include <vector>

#include "common/cuda/multi_tensor_chunks.h"

using namespace sgdf_erd::cuda;

template <int Depth>
int run(const std::vector<int64_t>& numel, const std::vector<int>& aligned) {
  constexpr int kMaxTensors = max_tensors_per_launch<Depth>();
  const size_t n = numel.size();
  std::vector<std::vector<unsigned char>> covered(n);
  for (size_t t = 0; t < n; ++t) covered[t].assign(static_cast<size_t>(numel[t]), 0);
  std::vector<int64_t> vector_elements(n, 0), scalar_elements(n, 0);
  unsigned char block_to_tensor[kMaxBlocksPerLaunch];
  int32_t block_to_chunk[kMaxBlocksPerLaunch];
  long entry_tensor[kMaxTensors];  // the tensor each table entry holds in the launch being filled (-1: none)
  for (long& e : entry_tensor) e = -1;
  int launches = 0, max_blocks = 0, max_entries = 0;
  auto place = [&](size_t t, int entry) {
    if (entry < 0 || entry >= kMaxTensors) {
      std::printf("problem entry %d out of the table\n", entry);
      return;
    }
    entry_tensor[entry] = static_cast<long>(t);
    max_entries = entry + 1 > max_entries ? entry + 1 : max_entries;
  };
  auto launch = [&](int blocks) {
    ++launches;
    max_blocks = blocks > max_blocks ? blocks : max_blocks;
    if (blocks < 1 || blocks > kMaxBlocksPerLaunch) std::printf("problem launch of %d blocks\n", blocks);
    for (int b = 0; b < blocks; ++b) {
      const int entry = block_to_tensor[b];
      const long t = entry < kMaxTensors ? entry_tensor[entry] : -1;
      if (t < 0) {
        std::printf("problem block %d reads entry %d, not filled for this launch\n", b, entry);
        continue;
      }
      const int64_t chunk = block_to_chunk[b];
      if (chunk < 0 || chunk * kChunkSize >= numel[t]) std::printf("problem chunk %lld of tensor %ld\n", (long long)chunk, t);
      const ChunkSpan span = chunk_span(numel[t], chunk, aligned[t] != 0);
      for (int64_t thread = 0; thread < kBlockSize; ++thread) {
        walk_chunk(
            span, thread, kBlockSize,
            [&](int64_t i) {
              if (i % kILP != 0 || i + kILP > span.end) std::printf("problem vector at %lld of tensor %ld\n", (long long)i, t);
              for (int k = 0; k < kILP && i + k < numel[t]; ++k) ++covered[t][i + k];
              vector_elements[t] += kILP;
            },
            [&](int64_t i) {
              ++covered[t][i];
              ++scalar_elements[t];
            });
      }
    }
    for (long& e : entry_tensor) e = -1;  // the next launch's table starts empty
  };
  plan_launches<kMaxTensors>(n, [&](size_t t) { return numel[t]; }, place, launch, block_to_tensor, block_to_chunk);
  std::printf("launches %d max_blocks %d max_entries %d\n", launches, max_blocks, max_entries);
  for (size_t t = 0; t < n; ++t) {
    int64_t not_once = 0;
    for (unsigned char c : covered[t]) not_once += c != 1;
    std::printf("%lld %lld %lld\n", (long long)not_once, (long long)vector_elements[t], (long long)scalar_elements[t]);
  }
  return 0;
}

int main() {
  int depth = 0;
  long n = 0;
  if (std::scanf("%d %ld", &depth, &n) != 2) return 2;
  std::vector<int64_t> numel(n);
  std::vector<int> aligned(n);
  for (long t = 0; t < n; ++t) {
    long long size = 0;
    if (std::scanf("%lld %d", &size, &aligned[t]) != 2) return 2;
    numel[t] = size;
  }
  switch (depth) {
    case 1: return run<1>(numel, aligned);
    case 4: return run<4>(numel, aligned);
    case 5: return run<5>(numel, aligned);
    case 6: return run<6>(numel, aligned);
    default: return 2;
  }
}
