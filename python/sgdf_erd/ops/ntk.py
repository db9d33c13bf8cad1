"""``binned_gram_eigvalsh``: per-bin Gram spectra (the kernels: csrc/ntk), its argument checks and fake."""

from typing import Tuple

import torch
from torch import Tensor

from .. import _native
from ._fake_checks import check_one_device

__all__ = ["binned_gram_eigvalsh", "MAX_NUM_BINS"]

# Most bins binned_gram_eigvalsh accepts (the kernels' bound, csrc/ntk/binned_gram.h): each bin is a row of the
# output, so a larger count would only allocate.
MAX_NUM_BINS = 1 << 24


def binned_gram_eigvalsh(features: Tensor, bin_ids: Tensor, num_bins: int) -> Tuple[Tensor, Tensor]:
    r"""Eigenvalues of the Gram matrix of each bin's rows, all bins in one call.

    For bin ``b``, let ``F_b`` be the rows ``features[bin_ids == b]`` (in their input order). Returns
    ``(eigenvalues, counts)``:

    - ``eigenvalues``: ``[num_bins, max_count]`` tensor of ``features``' dtype; row ``b`` holds the ``counts[b]``
      eigenvalues of ``F_b @ F_b.T`` sorted in descending order, then zeros. A Gram matrix is positive semidefinite,
      so round-off below zero is reported as 0. A bin with a non-finite feature gets NaN eigenvalues. Each bin's
      features are scaled by a power of two before the Gram product (exact), so any finite features give finite
      eigenvalues unless an eigenvalue itself exceeds the dtype's range (e.g. float32 rows of norm above 1.8e19),
      which is then reported as ``inf``.
    - ``counts``: ``[num_bins]`` int64, the number of rows in each bin (0 for an empty bin, whose row is all
      zeros). ``max_count = counts.max()``.

    Args:
        features: ``[n, k]`` float32 or float64 tensor, CPU or CUDA.
        bin_ids: ``[n]`` integer tensor on the same device, values in ``[0, num_bins)``.
        num_bins: number of bins, in ``[1, 2**24]``.

    Each bin is solved through the smaller of ``F_b F_b^T`` (``c x c``) and ``F_b^T F_b`` (``k x k``), which share
    their nonzero eigenvalues; so the cost per bin is ``O(c k min(c, k) + min(c, k)^3)``.

    - CPU: bins run in parallel (``torch.get_num_threads()`` workers, largest bins first); per bin a vectorised
      Gram product, a Householder tridiagonalisation and QL iteration, all on the worker's thread.
    - CUDA: one thread block per bin builds the Gram matrix in shared memory and diagonalises it there by cyclic
      Jacobi (parallel ordering) when ``min(c, k) <= 128`` and the matrix fits the GPU's shared memory (float32 and
      float64 up to 128 on sm_80/sm_90; a smaller bound on GPUs with less shared memory). Each larger bin is solved
      on its own by ``torch.linalg.eigvalsh`` (cuSOLVER) from a Gram matrix formed in float64, so TF32 matmul
      settings never affect it. The output shape depends on the data, so a CUDA call waits once for the bin counts
      (and once more per larger bin).

    The result is not differentiable (``features`` is detached).

    Example::

        >>> f = torch.randn(10, 3)
        >>> eig, counts = binned_gram_eigvalsh(f, torch.tensor([0, 1] * 5), 2)
        >>> eig.shape, counts.tolist()   # each bin: rank <= 3, so eig[:, 3:] == 0
        (torch.Size([2, 5]), [5, 5])
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"binned_gram_eigvalsh: 'features' must be a torch.Tensor, got {type(features).__name__}")
    if not isinstance(bin_ids, Tensor):
        raise TypeError(f"binned_gram_eigvalsh: 'bin_ids' must be a torch.Tensor, got {type(bin_ids).__name__}")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int):
        raise TypeError(f"binned_gram_eigvalsh: 'num_bins' must be an int, got {type(num_bins).__name__}")
    if not 1 <= num_bins <= MAX_NUM_BINS:
        raise ValueError(f"binned_gram_eigvalsh: 'num_bins' must lie in [1, 2**24] (each bin is a row of the "
                         f"output), got {num_bins}")
    for name, t in (("features", features), ("bin_ids", bin_ids)):
        if t.is_nested or t.layout is not torch.strided:  # (torch's own errors about these name no argument)
            raise ValueError(f"binned_gram_eigvalsh: '{name}' must be a dense tensor, got "
                             f"{'a nested tensor' if t.is_nested else t.layout}; pass one dense tensor (e.g. "
                             "t.to_dense(), or the samples stacked with torch.stack)")
    if features.dim() != 2:
        raise ValueError(
            f"binned_gram_eigvalsh: 'features' must be 2-D [n, k], got shape {tuple(features.shape)}; "
            "flatten each sample's features with features.reshape(n, -1)")
    if features.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"binned_gram_eigvalsh: 'features' must be float32 or float64, got {features.dtype}; "
                        "convert with .float() or .double()")
    if bin_ids.dim() != 1:
        raise ValueError(f"binned_gram_eigvalsh: 'bin_ids' must be 1-D [n], got shape {tuple(bin_ids.shape)}")
    if bin_ids.dtype == torch.bool or bin_ids.is_floating_point() or bin_ids.is_complex():
        raise TypeError(f"binned_gram_eigvalsh: 'bin_ids' must be an integer tensor, got {bin_ids.dtype}; "
                        "convert with .long()")
    if bin_ids.shape[0] != features.shape[0]:
        raise ValueError(f"binned_gram_eigvalsh: 'bin_ids' has {bin_ids.shape[0]} entries but 'features' has "
                         f"{features.shape[0]} rows; pass one bin id per row")
    if bin_ids.device != features.device:
        raise ValueError(f"binned_gram_eigvalsh: 'bin_ids' is on {bin_ids.device} but 'features' is on "
                         f"{features.device}; move them to one device")
    _native.require(features.device, "binned_gram_eigvalsh")
    return _native.ops.binned_gram_eigvalsh(features.detach(), bin_ids, num_bins)


@torch.library.register_fake("sgdf_erd::binned_gram_eigvalsh")
def _binned_gram_eigvalsh_fake(features: Tensor, bin_ids: Tensor, num_bins: int) -> Tuple[Tensor, Tensor]:
    # The width (the largest bin's count) is data-dependent, so only fake tensors (torch.compile) get a result.
    check_one_device("binned_gram_eigvalsh", [("features", features), ("bin_ids", bin_ids)])
    max_count = torch.library.get_ctx().new_dynamic_size()
    return features.new_empty((num_bins, max_count)), bin_ids.new_empty((num_bins,), dtype=torch.long)
