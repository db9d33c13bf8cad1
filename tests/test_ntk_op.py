"""sgdf_erd.ops.binned_gram_eigvalsh against per-bin numpy float64 eigvalsh (tests/reference/ntk_reference.py)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference.ntk_reference import binned_gram_eigvalsh_reference
from sgdf_erd.ops import binned_gram_eigvalsh

DTYPES = [torch.float32, torch.float64]
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tolerance(dtype, ref, k):
    """Backward-stable eigenvalues of a Gram matrix built in `dtype`: error ~ eps * (m + k) * ||G||, per bin."""
    eps = torch.finfo(dtype).eps
    scale = np.abs(ref).max(axis=1, keepdims=True) if ref.shape[1] else np.zeros((ref.shape[0], 1))
    return 8 * eps * (ref.shape[1] + k + 1) * scale + 1e-300


def check_against_reference(features, bin_ids, num_bins):
    eig, counts = binned_gram_eigvalsh(features, bin_ids, num_bins)
    ref, ref_counts = binned_gram_eigvalsh_reference(features.cpu().double().numpy(), bin_ids.cpu().numpy(),
                                                     num_bins)
    assert eig.dtype == features.dtype and eig.device == features.device
    assert counts.dtype == torch.int64 and counts.shape == (num_bins,)
    np.testing.assert_array_equal(counts.cpu().numpy(), ref_counts)
    assert eig.shape == ref.shape
    got = eig.cpu().double().numpy()
    assert np.all(np.abs(got - ref) <= tolerance(features.dtype, ref, features.shape[1]))
    for b in range(num_bins):  # descending, and exact zeros past each bin's count
        row = got[b, :ref_counts[b]]
        assert np.all(row[:-1] >= row[1:]) and np.all(row >= 0)
        assert np.all(got[b, ref_counts[b]:] == 0)
    return eig, counts


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 70), k=st.integers(0, 40), num_bins=st.integers(1, 9), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_random_sizes_match_numpy(n, k, num_bins, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, k, generator=g, dtype=dtype) * torch.rand(1, generator=g, dtype=dtype).add(0.1) * 10
    bin_ids = torch.randint(0, num_bins, (n,), generator=g)
    check_against_reference(features, bin_ids, num_bins)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [5, 64, 300])
def test_skewed_bins(dtype, k):
    # one big bin (200 rows: k x k path when k < 200, 200 x 200 Gram when k = 300), singletons, pairs, empties
    g = torch.Generator().manual_seed(k)
    bin_ids = torch.cat([torch.full((200,), 3), torch.tensor([0, 5, 5, 7]), torch.full((17,), 1)])
    bin_ids = bin_ids[torch.randperm(len(bin_ids), generator=g)]
    features = torch.randn(len(bin_ids), k, generator=g, dtype=dtype)
    eig, counts = check_against_reference(features, bin_ids, 9)
    assert counts.tolist() == [1, 17, 0, 200, 0, 2, 0, 1, 0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_bins_and_empty_input(dtype):
    features = torch.randn(6, 4, dtype=dtype)
    eig, counts = binned_gram_eigvalsh(features, torch.full((6,), 2), 5)
    assert counts.tolist() == [0, 0, 6, 0, 0]
    assert eig.shape == (5, 6) and torch.all(eig[[0, 1, 3, 4]] == 0)
    eig, counts = binned_gram_eigvalsh(torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=torch.long), 3)
    assert eig.shape == (3, 0) and counts.tolist() == [0, 0, 0]
    eig, counts = binned_gram_eigvalsh(torch.zeros(5, 0, dtype=dtype), torch.tensor([0, 0, 1, 1, 1]), 2)
    assert eig.shape == (2, 3) and torch.all(eig == 0) and counts.tolist() == [2, 3]


@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicate_rows_give_rank_one(dtype):
    # c copies of one row f: F F^T = ||f||^2 * ones(c, c), eigenvalues c ||f||^2 and c - 1 zeros
    f = torch.randn(1, 50, dtype=torch.float64)
    features = f.repeat(12, 1).to(dtype)
    eig, _ = binned_gram_eigvalsh(features, torch.zeros(12, dtype=torch.long), 1)
    expected = 12 * (f.to(dtype).double() ** 2).sum().item()
    tol = 100 * torch.finfo(dtype).eps * expected
    assert abs(eig[0, 0].item() - expected) <= tol
    assert torch.all(eig[0, 1:].double().abs() <= tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,rank", [(40, 30, 3), (30, 60, 7), (64, 256, 1)])
def test_rank_deficient(dtype, n, k, rank):
    g = torch.Generator().manual_seed(rank)
    features = (torch.randn(n, rank, generator=g, dtype=torch.float64)
                @ torch.randn(rank, k, generator=g, dtype=torch.float64)).to(dtype)
    bin_ids = torch.zeros(n, dtype=torch.long)
    eig, _ = check_against_reference(features, bin_ids, 1)
    assert torch.all(eig[0, rank:] <= 100 * torch.finfo(dtype).eps * (n + k) * eig[0, 0])
    assert torch.all(eig[0, :rank] > 1e-3 * eig[0, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_orthogonal_rows_give_squared_norms(dtype):
    # Rows q_i * s_i with orthonormal q: F F^T = diag(s^2) exactly known; includes equal (degenerate) values.
    q, _ = torch.linalg.qr(torch.randn(80, 20, dtype=torch.float64))
    s = torch.tensor([3.0] * 5 + [2.0] * 5 + list(np.linspace(0.01, 1.0, 10)), dtype=torch.float64)
    features = (q.T * s[:, None]).to(dtype)
    eig, _ = binned_gram_eigvalsh(features, torch.zeros(20, dtype=torch.long), 1)
    expected = torch.sort(s**2, descending=True).values
    torch.testing.assert_close(eig[0].double(), expected, rtol=0, atol=50 * torch.finfo(dtype).eps * 9)


@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1e8, 1e30])
def test_scale_covariance_float64(scale):
    features = torch.randn(30, 20, dtype=torch.float64)
    bin_ids = torch.arange(30) % 3
    base, _ = binned_gram_eigvalsh(features, bin_ids, 3)
    scaled, _ = binned_gram_eigvalsh(features * scale, bin_ids, 3)
    torch.testing.assert_close(scaled / scale**2, base, rtol=1e-12, atol=1e-12 * base.max().item())


def test_graded_spectrum_float64():
    # eigenvalues spanning 12 decades are all recovered to absolute accuracy eps * ||G||
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    features = q * torch.logspace(0, -6, 40, dtype=torch.float64)
    check_against_reference(features, torch.zeros(40, dtype=torch.long), 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(8))
def test_spectrum_far_below_round_off(dtype, seed):
    # One dominant direction and 63 singular values down to 1e-7 (float32) / 1e-16 (float64): most eigenvalues lie
    # below eps * ||G|| (the NTK of a trained denoiser looks like this). The solver must converge and stay within
    # absolute round-off; a relative-only deflation test never converged here.
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(256, 64, generator=g, dtype=torch.float64))
    low = -7 if dtype == torch.float32 else -16
    s = torch.cat([torch.tensor([10.0], dtype=torch.float64), torch.logspace(0, low, 63, dtype=torch.float64)])
    features = ((q * s) @ right.T).to(dtype)
    check_against_reference(features, torch.zeros(64, dtype=torch.long), 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_rows_poison_only_their_bin(dtype):
    features = torch.randn(10, 4, dtype=dtype)
    features[3, 1] = float("nan")
    bin_ids = torch.tensor([0, 1] * 5)
    eig, counts = binned_gram_eigvalsh(features, bin_ids, 2)
    assert torch.all(torch.isnan(eig[1]))
    ref, _ = binned_gram_eigvalsh(features[bin_ids == 0], torch.zeros(5, dtype=torch.long), 1)
    torch.testing.assert_close(eig[0], ref[0])


def test_bin_id_dtypes_and_layouts():
    features = torch.randn(20, 33, dtype=torch.float64).T.contiguous().T  # non-contiguous (column-major) view
    assert not features.is_contiguous()
    ids = torch.arange(20) % 4
    expected, _ = binned_gram_eigvalsh(features.contiguous(), ids, 4)
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64):
        eig, counts = binned_gram_eigvalsh(features, ids.to(dtype), 4)
        torch.testing.assert_close(eig, expected, rtol=0, atol=0)
    big = torch.randn(40, 7, dtype=torch.float64)[::2]  # row-strided view
    check_against_reference(big, torch.arange(20) % 3, 3)


def test_single_thread_matches_parallel():
    features = torch.randn(500, 48)
    ids = torch.randint(0, 13, (500,))
    parallel = binned_gram_eigvalsh(features, ids, 13)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = binned_gram_eigvalsh(features, ids, 13)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(parallel[0], serial[0]) and torch.equal(parallel[1], serial[1])


def test_requires_grad_input_is_accepted_and_detached():
    features = torch.randn(8, 3, requires_grad=True)
    eig, _ = binned_gram_eigvalsh(features, torch.zeros(8, dtype=torch.long), 1)
    assert not eig.requires_grad


@pytest.mark.parametrize("features,bin_ids,num_bins,error,match", [
    (torch.randn(4), torch.zeros(4, dtype=torch.long), 1, ValueError, "2-D"),
    (torch.randn(4, 2, dtype=torch.float16), torch.zeros(4, dtype=torch.long), 1, TypeError, "float32 or float64"),
    (torch.randn(4, 2).int(), torch.zeros(4, dtype=torch.long), 1, TypeError, "float32 or float64"),
    (torch.randn(4, 2), torch.zeros(4), 1, TypeError, "integer"),
    (torch.randn(4, 2), torch.zeros(4, dtype=torch.bool), 1, TypeError, "integer"),
    (torch.randn(4, 2), torch.zeros(4, 1, dtype=torch.long), 1, ValueError, "1-D"),
    (torch.randn(4, 2), torch.zeros(3, dtype=torch.long), 1, ValueError, "one bin id per row"),
    (torch.randn(4, 2), torch.zeros(4, dtype=torch.long), 0, ValueError, "num_bins"),
    (torch.randn(4, 2), torch.zeros(4, dtype=torch.long), True, TypeError, "num_bins"),
    (torch.randn(4, 2), torch.zeros(4, dtype=torch.long), 2.0, TypeError, "num_bins"),
    (torch.randn(4, 2), torch.tensor([0, 1, 2, 3]), 3, ValueError, r"\[0, 3\]"),
    (torch.randn(4, 2), torch.tensor([0, -1, 2, 0]), 3, ValueError, r"\[-1, 2\]"),
    ([[1.0]], torch.zeros(1, dtype=torch.long), 1, TypeError, "features"),
])
def test_bad_inputs(features, bin_ids, num_bins, error, match):
    with pytest.raises(error, match=match):
        binned_gram_eigvalsh(features, bin_ids, num_bins)


def test_raw_op_checks_too():
    # the compiled op validates on its own (torch.ops.sgdf_erd.binned_gram_eigvalsh called directly)
    from sgdf_erd._native import ops
    with pytest.raises(ValueError, match="num_bins"):
        ops.binned_gram_eigvalsh(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        ops.binned_gram_eigvalsh(torch.randn(4, 2), torch.tensor([0, 5, 0, 0]), 2)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.binned_gram_eigvalsh(torch.randn(4, 2).half(), torch.zeros(4, dtype=torch.long), 1)


@cuda_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count,k", [(1, 3), (7, 5), (33, 256), (64, 256), (64, 20), (127, 512), (128, 128),
                                     (129, 300), (200, 64), (300, 1000)])
def test_cuda_matches_numpy(dtype, count, k):
    # sizes on both sides of the on-chip Jacobi limit (128) and of the F F^T / F^T F switch
    g = torch.Generator().manual_seed(count * 1000 + k)
    ids = torch.cat([torch.full((count,), 2), torch.tensor([0, 0, 3]), torch.randint(0, 6, (40,), generator=g)])
    features = torch.randn(len(ids), k, generator=g, dtype=dtype)
    eig, counts = check_against_reference(features.cuda(), ids.cuda(), 6)
    cpu_eig, cpu_counts = binned_gram_eigvalsh(features, ids, 6)
    assert torch.equal(counts.cpu(), cpu_counts)


@cuda_only
def test_cuda_special_inputs():
    f = torch.randn(1, 50, dtype=torch.float64, device="cuda").repeat(40, 1)
    eig, _ = binned_gram_eigvalsh(f, torch.zeros(40, dtype=torch.long, device="cuda"), 2)
    assert abs(eig[0, 0].item() - 40 * (f[0] ** 2).sum().item()) <= 1e-10 * eig[0, 0].item()
    assert torch.all(eig[1] == 0)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        binned_gram_eigvalsh(f, torch.full((40,), 2, device="cuda"), 2)
    with pytest.raises(ValueError, match="one device"):
        binned_gram_eigvalsh(f, torch.zeros(40, dtype=torch.long), 2)
    nan = torch.randn(10, 4, device="cuda")
    nan[0, 0] = float("inf")
    eig, _ = binned_gram_eigvalsh(nan, torch.tensor([0] * 5 + [1] * 5, device="cuda"), 2)
    assert torch.all(torch.isnan(eig[0])) and torch.all(torch.isfinite(eig[1]))
