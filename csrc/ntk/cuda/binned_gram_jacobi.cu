// CUDA kernel of sgdf_erd::binned_gram_eigvalsh: one thread block per bin forms the bin's Gram matrix in shared
// memory (tiles of the features, scaled by a power of two, staged through shared memory) and diagonalises it there
// by cyclic Jacobi with the round-robin ordering (jacobi_math.h). Per round: rotation angles of mp/2 disjoint
// pairs, all row updates, all column updates, then the exact 2x2 results on the rotated diagonal (more accurate
// than the updated entries).
// Sweeps stop when the off-diagonal Frobenius norm is below eps * ||A||_F (typically 6-12 sweeps), at most 30.
//
// Limits: Gram order m = min(count, k) <= kMaxDim = 128, and the block's shared memory, about
// 8 * (m + 1)^2 + 8 * 17 * m + 4.5 KB bytes in float64 (154 KB at m = 128; half in float32), must fit the
// device's opt-in limit (sm_80: 163 KB, sm_90: 227 KB); jacobi_max_dim() gives the bound. Larger bins are solved
// by the host's fallback.
#include <cuda_runtime.h>

#include <limits>

#include "common/cuda/block_reduce.cuh"
#include "erd/cuda/launch.h"
#include "ntk/binned_gram.h"
#include "ntk/cuda/binned_gram_jacobi.h"
#include "ntk/jacobi_math.h"

namespace sgdf_erd::ntk::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxDim = 128;
constexpr int kMaxPairs = kMaxDim / 2;
constexpr int kTile = 16;  // contraction columns staged per step
constexpr int kMaxSweeps = 30;
constexpr int kWarps = kThreads / 32;

template <typename T>
size_t shared_bytes(int m) {
  const int mp = m + (m & 1);
  const size_t values = static_cast<size_t>(mp) * (mp + 1)  // A, leading dimension mp + 1 (odd: no bank conflicts)
                        + static_cast<size_t>(m) * (kTile + 1)  // feature tile
                        + kWarps                                // reductions
                        + 5 * kMaxPairs                         // c, s, t and the pre-rotation a_pp, a_qq
                        + kMaxDim;                              // the diagonal, for the final sort
  return values * sizeof(T) + 2 * kMaxPairs * sizeof(int);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    binned_gram_jacobi_kernel(const T* __restrict__ features, int64_t k, const int64_t* __restrict__ order,
                              const int64_t* __restrict__ starts, const int64_t* __restrict__ counts,
                              T* __restrict__ eig, int64_t eig_stride, int max_dim) {
  const int64_t bin = blockIdx.x;
  const int64_t count = counts[bin];
  const int64_t m64 = count < k ? count : k;
  if (m64 == 0 || m64 > max_dim) return;  // empty, k == 0 (all zeros) or the host's fallback
  const int m = static_cast<int>(m64);
  const int mp = m + (m & 1);  // even order for the pairing; index m (if any) is a zero row and column
  const int lda = mp + 1;
  const int half = mp / 2;
  const int tid = threadIdx.x;
  // X = F_b (rows: m = count, contraction over k) or F_b^T (m = k, contraction over the bin's rows)
  const bool rows_of_f = count <= k;
  const int64_t length = rows_of_f ? k : count;
  const int64_t* rows = order + starts[bin];
  T* out = eig + bin * eig_stride;

  extern __shared__ __align__(16) unsigned char smem[];
  T* a = reinterpret_cast<T*>(smem);
  T* tile = a + mp * lda;
  T* scratch = tile + m * (kTile + 1);
  T* rot_c = scratch + kWarps;
  T* rot_s = rot_c + kMaxPairs;
  T* rot_t = rot_s + kMaxPairs;
  T* old_pp = rot_t + kMaxPairs;
  T* old_qq = old_pp + kMaxPairs;
  T* diag = old_qq + kMaxPairs;
  int* pair_p = reinterpret_cast<int*>(diag + kMaxDim);
  int* pair_q = pair_p + kMaxPairs;

  // The bin's largest |feature| fixes its power-of-two scale (binned_gram.h): the Gram matrix of the scaled
  // features is finite for any finite features, and the eigenvalues scale back exactly.
  T max_abs = T(0), bad = T(0);
  for (int64_t e = tid; e < count * k; e += kThreads) {
    const T v = ::fabs(features[rows[e / k] * k + e % k]);
    if (!(v <= std::numeric_limits<T>::max())) bad = T(1);  // NaN or infinity
    max_abs = ::fmax(max_abs, v);
  }
  bad = sgdf_erd::cuda::block_max<kThreads>(bad, scratch);
  max_abs = sgdf_erd::cuda::block_max<kThreads>(max_abs, scratch);
  if (bad != T(0)) {
    for (int64_t i = tid; i < count; i += kThreads) out[i] = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  if (max_abs == T(0)) return;  // all-zero rows: eig is pre-zeroed
  const int exponent = bin_scale_exponent(max_abs);
  const T factor = ::ldexp(T(1), -exponent);

  // Gram matrix A = X X^T. Both triangles are summed in the same order, so A is exactly symmetric.
  for (int e = tid; e < mp * lda; e += kThreads) a[e] = T(0);
  for (int64_t l0 = 0; l0 < length; l0 += kTile) {
    const int64_t width = length - l0 < kTile ? length - l0 : kTile;
    __syncthreads();  // the previous tile is consumed
    for (int e = tid; e < m * kTile; e += kThreads) {
      // threads run along the memory-contiguous feature index in both layouts
      const int i = rows_of_f ? e / kTile : e % m;
      const int l = rows_of_f ? e % kTile : e / m;
      T v = T(0);
      if (l < width) v = factor * (rows_of_f ? features[rows[i] * k + l0 + l] : features[rows[l0 + l] * k + i]);
      tile[i * (kTile + 1) + l] = v;
    }
    __syncthreads();
    for (int e = tid; e < m * m; e += kThreads) {
      const int i = e / m, j = e % m;
      const T* ti = tile + i * (kTile + 1);
      const T* tj = tile + j * (kTile + 1);
      T acc = T(0);
#pragma unroll
      for (int l = 0; l < kTile; ++l) acc += ti[l] * tj[l];
      a[i * lda + j] += acc;
    }
  }
  __syncthreads();

  // Scale to unit max entry (rotation angles and the stopping test are then free of overflow and underflow).
  T amax = T(0);
  for (int e = tid; e < m * m; e += kThreads) amax = ::fmax(amax, ::fabs(a[(e / m) * lda + e % m]));
  amax = sgdf_erd::cuda::block_max<kThreads>(amax, scratch);
  if (amax == T(0)) return;  // rows that underflowed to zero (subnormal features)
  const T inv = T(1) / amax;
  T fro = T(0);
  for (int e = tid; e < m * m; e += kThreads) {
    T& v = a[(e / m) * lda + e % m];
    v *= inv;
    fro += v * v;
  }
  fro = sgdf_erd::cuda::block_sum<kThreads>(fro, scratch);  // invariant under the rotations
  const T eps = std::numeric_limits<T>::epsilon();
  const T tol = eps * eps * fro;

  for (int sweep = 0; sweep < kMaxSweeps; ++sweep) {
    T off = T(0);
    for (int e = tid; e < m * m; e += kThreads) {
      const int i = e / m, j = e % m;
      if (i != j) off += a[i * lda + j] * a[i * lda + j];
    }
    off = sgdf_erd::cuda::block_sum<kThreads>(off, scratch);  // ends with a barrier; every thread sees the same value
    if (off <= tol) break;
    for (int round = 0; round < mp - 1; ++round) {
      if (tid < half) {
        int p, q;
        jacobi_pair(round, tid, mp, p, q);
        const T app = a[p * lda + p], aqq = a[q * lda + q], apq = a[p * lda + q];
        T c, s, t;
        jacobi_rotation(app, aqq, apq, c, s, t);
        pair_p[tid] = p;
        pair_q[tid] = q;
        rot_c[tid] = c;
        rot_s[tid] = s;
        rot_t[tid] = t * apq;
        old_pp[tid] = app;
        old_qq[tid] = aqq;
      }
      __syncthreads();
      for (int e = tid; e < half * mp; e += kThreads) {  // rows p, q <- J^T A
        const int slot = e / mp, j = e % mp;
        const int p = pair_p[slot], q = pair_q[slot];
        const T c = rot_c[slot], s = rot_s[slot];
        const T ap = a[p * lda + j], aq = a[q * lda + j];
        a[p * lda + j] = c * ap - s * aq;
        a[q * lda + j] = s * ap + c * aq;
      }
      __syncthreads();
      for (int e = tid; e < half * mp; e += kThreads) {  // columns p, q <- (J^T A) J
        const int slot = e / mp, i = e % mp;
        const int p = pair_p[slot], q = pair_q[slot];
        const T c = rot_c[slot], s = rot_s[slot];
        const T ap = a[i * lda + p], aq = a[i * lda + q];
        a[i * lda + p] = c * ap - s * aq;
        a[i * lda + q] = s * ap + c * aq;
      }
      __syncthreads();
      if (tid < half) {  // the 2x2 block's exact result
        const int p = pair_p[tid], q = pair_q[tid];
        a[p * lda + p] = old_pp[tid] - rot_t[tid];
        a[q * lda + q] = old_qq[tid] + rot_t[tid];
        a[p * lda + q] = T(0);
        a[q * lda + p] = T(0);
      }
      __syncthreads();
    }
  }

  // Descending order by rank (m <= 128: the quadratic count is cheap), clamped at 0, unscaled.
  for (int i = tid; i < m; i += kThreads) diag[i] = a[i * lda + i];
  __syncthreads();
  for (int i = tid; i < m; i += kThreads) {
    const T v = diag[i];
    int rank = 0;
    for (int j = 0; j < m; ++j) rank += (diag[j] > v) || (diag[j] == v && j < i);
    out[rank] = ::ldexp(::fmax(v, T(0)) * amax, 2 * exponent);
  }
}

// CUDA runtime errors here (no device, a failed attribute query) surface as RuntimeError.
void check_cuda(cudaError_t status, const char* what) {
  SGDF_ERD_CHECK(status == cudaSuccess, kOpName, ": ", what, " failed: ", cudaGetErrorString(status));
}

template <typename T>
int64_t max_dim_for_device() {
  int device = 0, optin = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  int m = kMaxDim;
  while (m > 0 && shared_bytes<T>(m) > static_cast<size_t>(optin)) --m;
  return m;
}

template <typename T>
void launch(const Tensor& features, const Tensor& order, const Tensor& starts, const Tensor& counts, int64_t max_dim,
            int64_t launch_dim, Tensor& eig) {
  const size_t bytes = shared_bytes<T>(static_cast<int>(launch_dim));
  auto kernel = binned_gram_jacobi_kernel<T>;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
             "cudaFuncSetAttribute");
  kernel<<<static_cast<unsigned>(eig.size(0)), kThreads, bytes,
           sgdf_erd::cuda::current_stream(features.get_device_index())>>>(
      features.const_data_ptr<T>(), features.size(1), order.const_data_ptr<int64_t>(),
      starts.const_data_ptr<int64_t>(), counts.const_data_ptr<int64_t>(), eig.mutable_data_ptr<T>(), eig.size(1),
      static_cast<int>(max_dim));
  sgdf_erd::cuda::check_launch(kOpName);
}

}  // namespace

int64_t jacobi_max_dim(torch::headeronly::ScalarType dtype) {
  return dtype == torch::headeronly::ScalarType::Double ? max_dim_for_device<double>() : max_dim_for_device<float>();
}

void launch_binned_jacobi(const Tensor& features, const Tensor& order, const Tensor& starts, const Tensor& counts,
                          int64_t max_dim, int64_t launch_dim, Tensor& eig) {
  SGDF_ERD_CHECK(launch_dim >= 1 && launch_dim <= max_dim && max_dim <= kMaxDim, kOpName, ": bad Jacobi launch size");
  if (features.scalar_type() == torch::headeronly::ScalarType::Double) {
    launch<double>(features, order, starts, counts, max_dim, launch_dim, eig);
  } else {
    launch<float>(features, order, starts, counts, max_dim, launch_dim, eig);
  }
}

}  // namespace sgdf_erd::ntk::cuda
