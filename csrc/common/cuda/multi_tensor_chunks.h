// The index arithmetic of CUDA multi-tensor apply (multi_tensor_apply.cuh), free of CUDA so that host code can
// run it too: how tensors' chunks are packed into launch tables, and which elements each thread of a chunk's block
// takes, as vectors of kILP elements or one by one. tests/test_multi_tensor_chunks.py compiles a host program over
// this header and checks that the walk covers every element exactly once.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define SGDF_ERD_HOST_DEVICE __host__ __device__
#else
#define SGDF_ERD_HOST_DEVICE
#endif

namespace sgdf_erd::cuda {

constexpr int kBlockSize = 512;
constexpr int kILP = 4;                // elements per thread per vector iteration (one 16-byte load for fp32)
constexpr int64_t kChunkSize = 65536;  // elements per block (a multiple of kILP: every chunk starts aligned)
constexpr int kMaxBlocksPerLaunch = 320;
constexpr int kMaxVectorBytes = 16;  // widest load one thread issues (ld.global.v4.b32); wider packs take several

static_assert(kChunkSize % kILP == 0, "chunks must start on a vector boundary");

// Kernel-argument budget is 4 KiB; the tensor count shrinks as the depth grows.
template <int Depth>
constexpr int max_tensors_per_launch() {
  return Depth == 1 ? 64 : Depth <= 4 ? 36 : Depth == 5 ? 30 : 28;
}

// Alignment (bytes) an operand of elements of `element_size` bytes needs for kILP-element vector accesses:
// the pack's size, up to 16 bytes (float64 packs of 32 bytes move as two 16-byte accesses).
SGDF_ERD_HOST_DEVICE constexpr int64_t vector_alignment(int64_t element_size) {
  return kILP * element_size < kMaxVectorBytes ? kILP * element_size : kMaxVectorBytes;
}

// Elements [begin, end) of one chunk: [begin, vector_end) in kILP-element vectors (when every operand is aligned
// for them), [vector_end, end) one by one (fewer than kILP elements; the whole chunk when not aligned).
struct ChunkSpan {
  int64_t begin, vector_end, end;
};

SGDF_ERD_HOST_DEVICE constexpr ChunkSpan chunk_span(int64_t numel, int64_t chunk, bool aligned) {
  const int64_t begin = chunk * kChunkSize;
  const int64_t end = begin + kChunkSize < numel ? begin + kChunkSize : numel;
  return {begin, aligned ? begin + (end - begin) / kILP * kILP : begin, end};
}

// Thread `thread` of `threads` in a chunk's block: vector(i) for each of its kILP-element runs [i, i + kILP), then
// scalar(i) for each of its single elements.
template <typename Vector, typename Scalar>
SGDF_ERD_HOST_DEVICE inline void walk_chunk(const ChunkSpan& span, int64_t thread, int64_t threads,
                                            const Vector& vector, const Scalar& scalar) {
  for (int64_t i = span.begin + thread * kILP; i < span.vector_end; i += threads * kILP) vector(i);
  for (int64_t i = span.vector_end + thread; i < span.end; i += threads) scalar(i);
}

// Packs the chunks of tensors 0 .. n_tensors-1 (numel_of(t) elements each; empty ones are skipped) into launches
// of at most kMaxBlocksPerLaunch blocks and MaxTensors table entries, in order. Calls place(t, entry) when tensor
// t takes table entry `entry` of the launch being filled, writes each block's (entry, chunk) into
// block_to_tensor / block_to_chunk, and calls launch(blocks) when a launch is full and at the end. A tensor whose
// chunks do not all fit continues in the next launch, as that launch's entry 0.
template <int MaxTensors, typename NumelOf, typename Place, typename Launch>
void plan_launches(size_t n_tensors, const NumelOf& numel_of, const Place& place, const Launch& launch,
                   unsigned char* block_to_tensor, int32_t* block_to_chunk) {
  static_assert(MaxTensors <= 256, "table entries are numbered in an unsigned char");
  int entries = 0;
  int blocks = 0;
  for (size_t t = 0; t < n_tensors; ++t) {
    const int64_t numel = numel_of(t);
    if (numel == 0) continue;
    place(t, entries);
    const int64_t chunks = (numel + kChunkSize - 1) / kChunkSize;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      block_to_tensor[blocks] = static_cast<unsigned char>(entries);
      block_to_chunk[blocks] = static_cast<int32_t>(chunk);
      ++blocks;
      const bool last_chunk = chunk == chunks - 1;
      if (blocks == kMaxBlocksPerLaunch || (last_chunk && entries + 1 == MaxTensors)) {
        launch(blocks);
        blocks = 0;
        if (last_chunk) {
          entries = -1;  // the tensor is finished: the next launch starts with an empty table
        } else {
          entries = 0;  // the tensor continues into the next launch as its entry 0
          place(t, 0);
        }
      }
    }
    ++entries;
  }
  if (blocks > 0) launch(blocks);
}

}  // namespace sgdf_erd::cuda
