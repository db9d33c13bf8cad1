"""sgdf_erd.ops.binned_gram_eigvalsh against per-bin numpy float64 eigvalsh (tests/reference/ntk_reference.py), on
every device (tests/devices.py)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.devices import DEVICES, requires_cuda
from tests.reference.ntk_reference import binned_gram_eigvalsh_reference
from sgdf_erd._native import ops
from sgdf_erd.ops import binned_gram_eigvalsh

DTYPES = [torch.float32, torch.float64]


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


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 70), k=st.integers(0, 40), num_bins=st.integers(1, 9), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_random_sizes_match_numpy(device, n, k, num_bins, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, k, generator=g, dtype=dtype) * torch.rand(1, generator=g, dtype=dtype).add(0.1) * 10
    bin_ids = torch.randint(0, num_bins, (n,), generator=g)
    check_against_reference(features.to(device), bin_ids.to(device), num_bins)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [5, 64, 300])
def test_skewed_bins(device, dtype, k):
    # one big bin (200 rows: k x k path when k < 200, 200 x 200 Gram when k = 300), singletons, pairs, empties
    g = torch.Generator().manual_seed(k)
    bin_ids = torch.cat([torch.full((200,), 3), torch.tensor([0, 5, 5, 7]), torch.full((17,), 1)])
    bin_ids = bin_ids[torch.randperm(len(bin_ids), generator=g)]
    features = torch.randn(len(bin_ids), k, generator=g, dtype=dtype)
    eig, counts = check_against_reference(features.to(device), bin_ids.to(device), 9)
    assert counts.tolist() == [1, 17, 0, 200, 0, 2, 0, 1, 0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_bins_and_empty_input(device, dtype):
    features = torch.randn(6, 4, dtype=dtype, device=device)
    eig, counts = binned_gram_eigvalsh(features, torch.full((6,), 2, device=device), 5)
    assert counts.tolist() == [0, 0, 6, 0, 0]
    assert eig.shape == (5, 6) and torch.all(eig[[0, 1, 3, 4]] == 0)
    eig, counts = binned_gram_eigvalsh(torch.zeros(0, 4, dtype=dtype, device=device),
                                       torch.zeros(0, dtype=torch.long, device=device), 3)
    assert eig.shape == (3, 0) and counts.tolist() == [0, 0, 0]
    eig, counts = binned_gram_eigvalsh(torch.zeros(5, 0, dtype=dtype, device=device),
                                       torch.tensor([0, 0, 1, 1, 1], device=device), 2)
    assert eig.shape == (2, 3) and torch.all(eig == 0) and counts.tolist() == [2, 3]
    # single-sample bins: the one eigenvalue is the row's squared norm
    features = torch.randn(3, 7, dtype=dtype, device=device)
    eig, counts = binned_gram_eigvalsh(features, torch.tensor([2, 0, 1], device=device), 3)
    assert eig.shape == (3, 1) and counts.tolist() == [1, 1, 1]
    expected = (features.double() ** 2).sum(1)[[1, 2, 0]]
    torch.testing.assert_close(eig[:, 0].double(), expected, rtol=10 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("copies,k", [(12, 50), (40, 50), (200, 300)])
def test_duplicate_rows_give_rank_one(device, dtype, copies, k):
    # c copies of one row f: F F^T = ||f||^2 * ones(c, c), eigenvalues c ||f||^2 and c - 1 zeros (200 x 300: a
    # bin above the on-chip limit on CUDA)
    f = torch.randn(1, k, dtype=torch.float64)
    features = f.repeat(copies, 1).to(dtype)
    eig, _ = binned_gram_eigvalsh(features.to(device), torch.zeros(copies, dtype=torch.long, device=device), 1)
    expected = copies * (f.to(dtype).double() ** 2).sum().item()
    tol = 100 * torch.finfo(dtype).eps * expected
    assert abs(eig[0, 0].item() - expected) <= tol
    assert torch.all(eig[0, 1:].double().abs() <= tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,rank", [(40, 30, 3), (30, 60, 7), (64, 256, 1), (160, 200, 5)])
def test_rank_deficient(device, dtype, n, k, rank):
    g = torch.Generator().manual_seed(rank)
    features = (torch.randn(n, rank, generator=g, dtype=torch.float64)
                @ torch.randn(rank, k, generator=g, dtype=torch.float64)).to(dtype)
    bin_ids = torch.zeros(n, dtype=torch.long)
    eig, _ = check_against_reference(features.to(device), bin_ids.to(device), 1)
    assert torch.all(eig[0, rank:] <= 100 * torch.finfo(dtype).eps * (n + k) * eig[0, 0])
    assert torch.all(eig[0, :rank] > 1e-3 * eig[0, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_orthogonal_rows_give_squared_norms(device, dtype):
    # Rows q_i * s_i with orthonormal q: F F^T = diag(s^2) exactly known; includes equal (degenerate) values.
    q, _ = torch.linalg.qr(torch.randn(80, 20, dtype=torch.float64))
    s = torch.tensor([3.0] * 5 + [2.0] * 5 + list(np.linspace(0.01, 1.0, 10)), dtype=torch.float64)
    features = (q.T * s[:, None]).to(dtype)
    eig, _ = binned_gram_eigvalsh(features.to(device), torch.zeros(20, dtype=torch.long, device=device), 1)
    expected = torch.sort(s**2, descending=True).values
    torch.testing.assert_close(eig[0].cpu().double(), expected, rtol=0, atol=50 * torch.finfo(dtype).eps * 9)


@pytest.mark.parametrize("dtype,scale", [(torch.float64, 1e-150), (torch.float64, 1e-30), (torch.float64, 1e-8),
                                         (torch.float64, 1e8), (torch.float64, 1e30), (torch.float64, 1e150),
                                         (torch.float32, 2.0**-60), (torch.float32, 2.0**56)])
@pytest.mark.parametrize("k", [20, 300])
def test_scale_covariance(device, dtype, scale, k):
    # eigenvalues scale by scale^2 exactly up to round-off, also where the Gram entries themselves would overflow
    # or underflow (float64 1e+-150, float32 2^-60 and 2^56); k = 300: 10-row bins through F F^T, 300 > 128 columns
    features = torch.randn(30, k, dtype=dtype, device=device)
    bin_ids = torch.arange(30, device=device) % 3
    base, _ = binned_gram_eigvalsh(features, bin_ids, 3)
    scaled, _ = binned_gram_eigvalsh(features * scale, bin_ids, 3)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(scaled.double() / scale**2, base.double(), rtol=rtol,
                               atol=rtol * base.max().item())


@pytest.mark.parametrize("count,k", [(2, 2), (3, 40), (200, 3), (150, 150)])
def test_float32_near_overflow_is_exact_or_inf(device, count, k):
    # Finite float32 features near 3e19 square past float32's range. Their Gram matrix is formed from features
    # scaled by a power of two, so the eigenvalues are right; only one beyond float32's range is inf, never NaN.
    g = torch.Generator().manual_seed(count + k)
    features = torch.randn(count, k, generator=g, dtype=torch.float64)
    features[0] *= 3e19 / features[0].abs().max()  # one huge row: its eigenvalue is > 9e38, above float32's max
    features[1:] *= 5e17
    eig, _ = binned_gram_eigvalsh(features.float().to(device), torch.zeros(count, dtype=torch.long, device=device), 1)
    ref, _ = binned_gram_eigvalsh_reference(features.float().double().numpy(), np.zeros(count), 1)
    eig = eig.cpu().double().numpy()[0]
    assert not np.isnan(eig).any()
    assert eig[0] == np.inf and ref[0, 0] > torch.finfo(torch.float32).max
    assert np.all(np.abs(eig[1:] - ref[0, 1:]) <= 8 * torch.finfo(torch.float32).eps * (count + k) * ref[0, 0])
    # rows whose eigenvalues fit float32 come out finite
    small = features[1:].float().to(device)
    eig2, _ = binned_gram_eigvalsh(small, torch.zeros(count - 1, dtype=torch.long, device=device), 1)
    assert torch.isfinite(eig2).all() and eig2[0, 0] > 1e35


@pytest.mark.parametrize("dtype", DTYPES)
def test_graded_spectrum(device, dtype):
    # eigenvalues spanning 12 decades are all recovered to absolute accuracy eps * ||G||
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    features = (q * torch.logspace(0, -6, 40, dtype=torch.float64)).to(dtype)
    check_against_reference(features.to(device), torch.zeros(40, dtype=torch.long, device=device), 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(8))
def test_spectrum_far_below_round_off(device, dtype, seed):
    # One dominant direction and 63 singular values down to 1e-7 (float32) / 1e-16 (float64): most eigenvalues lie
    # below eps * ||G|| (the NTK of a trained denoiser looks like this). The solver must converge and stay within
    # absolute round-off; a relative-only deflation test never converged here.
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(256, 64, generator=g, dtype=torch.float64))
    low = -7 if dtype == torch.float32 else -16
    s = torch.cat([torch.tensor([10.0], dtype=torch.float64), torch.logspace(0, low, 63, dtype=torch.float64)])
    features = ((q * s) @ right.T).to(dtype)
    check_against_reference(features.to(device), torch.zeros(64, dtype=torch.long, device=device), 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("count,k", [(5, 4), (150, 200)])
def test_non_finite_rows_poison_only_their_bin(device, dtype, bad, count, k):
    features = torch.randn(2 * count, k, dtype=dtype)
    features[3, 1] = bad
    bin_ids = torch.tensor([0, 1] * count)
    eig, counts = binned_gram_eigvalsh(features.to(device), bin_ids.to(device), 2)
    assert torch.all(torch.isnan(eig[1]))
    ref, _ = binned_gram_eigvalsh(features[bin_ids == 0].to(device), torch.zeros(count, dtype=torch.long,
                                                                               device=device), 1)
    torch.testing.assert_close(eig[0], ref[0])


@pytest.mark.parametrize("count,k", [(64, 64), (200, 300)])
def test_tf32_setting_does_not_change_the_result(device, count, k):
    # 200 x 300: a Gram order above the on-chip limit, which CUDA forms with a matmul; TF32 (10-bit mantissa)
    # would cost ~3 digits there, so the op must give float32 accuracy whatever the user enabled
    g = torch.Generator().manual_seed(count)
    features = torch.randn(count, k, generator=g) + 0.5  # non-zero mean: one dominant eigenvalue, as NTKs have
    ids = torch.zeros(count, dtype=torch.long)
    precision = torch.get_float32_matmul_precision()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.set_float32_matmul_precision("high")
        torch.backends.cuda.matmul.allow_tf32 = True
        check_against_reference(features.to(device), ids.to(device), 1)
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count,k", [(1, 3), (7, 5), (33, 256), (64, 256), (64, 20), (127, 512), (128, 128),
                                     (129, 300), (200, 64), (300, 1000)])
def test_sizes_around_the_on_chip_limit(device, dtype, count, k):
    # sizes on both sides of CUDA's on-chip Jacobi limit (128) and of the F F^T / F^T F switch
    g = torch.Generator().manual_seed(count * 1000 + k)
    ids = torch.cat([torch.full((count,), 2), torch.tensor([0, 0, 3]), torch.randint(0, 6, (40,), generator=g)])
    features = torch.randn(len(ids), k, generator=g, dtype=dtype)
    check_against_reference(features.to(device), ids.to(device), 6)


def test_bin_id_dtypes_and_layouts(device):
    features = torch.randn(20, 33, dtype=torch.float64, device=device).T.contiguous().T  # column-major view
    assert not features.is_contiguous()
    ids = torch.arange(20, device=device) % 4
    expected, _ = binned_gram_eigvalsh(features.contiguous(), ids, 4)
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64):
        eig, counts = binned_gram_eigvalsh(features, ids.to(dtype), 4)
        torch.testing.assert_close(eig, expected, rtol=0, atol=0)
    big = torch.randn(40, 7, dtype=torch.float64, device=device)[::2]  # row-strided view
    check_against_reference(big, torch.arange(20, device=device) % 3, 3)
    odd = torch.randn(20 * 7 + 1, dtype=torch.float32, device=device)[1:].view(20, 7)  # odd storage offset
    check_against_reference(odd, torch.arange(20, device=device) % 3, 3)


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


def test_requires_grad_input_is_accepted_and_detached(device):
    features = torch.randn(8, 3, device=device, requires_grad=True)
    eig, _ = binned_gram_eigvalsh(features, torch.zeros(8, dtype=torch.long, device=device), 1)
    assert not eig.requires_grad


BAD_INPUTS = [
    (torch.randn(4), torch.zeros(4, dtype=torch.long), 1, ValueError, "2-D"),
    (torch.randn(4, 2, dtype=torch.float16), torch.zeros(4, dtype=torch.long), 1, TypeError, "float32 or float64"),
    (torch.randn(4, 2).int(), torch.zeros(4, dtype=torch.long), 1, TypeError, "float32 or float64"),
    (torch.randn(4, 2), torch.zeros(4), 1, TypeError, "integer"),
    (torch.randn(4, 2), torch.zeros(4, dtype=torch.bool), 1, TypeError, "integer"),
    (torch.randn(4, 2), torch.zeros(4, 1, dtype=torch.long), 1, ValueError, "1-D"),
    (torch.randn(4, 2), torch.zeros(3, dtype=torch.long), 1, ValueError, "one bin id per row"),
    (torch.randn(4, 2), torch.zeros(4, dtype=torch.long), 0, ValueError, "num_bins"),
    (torch.randn(4, 2), torch.zeros(4, dtype=torch.long), 2**62, ValueError, r"num_bins.*2\*\*24"),
    (torch.randn(4, 2), torch.zeros(4, dtype=torch.long), True, TypeError, "num_bins"),
    (torch.randn(4, 2), torch.zeros(4, dtype=torch.long), 2.0, TypeError, "num_bins"),
    (torch.randn(4, 2), torch.tensor([0, 1, 2, 3]), 3, ValueError, r"\[0, 3\]"),
    (torch.randn(4, 2), torch.tensor([0, -1, 2, 0]), 3, ValueError, r"\[-1, 2\]"),
]


@pytest.mark.parametrize("features,bin_ids,num_bins,error,match", BAD_INPUTS + [
    ([[1.0]], torch.zeros(1, dtype=torch.long), 1, TypeError, "features"),
    # (torch's "Internal error: NestedTensorImpl doesn't support sizes. Please file an issue." before)
    (torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(2, 3)]), torch.zeros(2, dtype=torch.long), 1,
     ValueError, "'features' must be a dense tensor, got a nested tensor"),
    (torch.randn(4, 2).to_sparse(), torch.zeros(4, dtype=torch.long), 1, ValueError, "'features' must be a dense"),
    (torch.randn(4, 2), torch.zeros(4, dtype=torch.long).to_sparse(), 1, ValueError, "'bin_ids' must be a dense"),
])
def test_bad_inputs(features, bin_ids, num_bins, error, match):
    with pytest.raises(error, match=match):
        binned_gram_eigvalsh(features, bin_ids, num_bins)


@pytest.mark.parametrize("features,bin_ids,num_bins,error,match",
                         [case for case in BAD_INPUTS if not isinstance(case[2], (bool, float))])
def test_raw_op_checks_too(device, features, bin_ids, num_bins, error, match):
    # the compiled op validates on its own (torch.ops.sgdf_erd.binned_gram_eigvalsh called directly)
    with pytest.raises(error, match=match.replace(r"2\*\*24", "16777216")):
        ops.binned_gram_eigvalsh(features.to(device), bin_ids.to(device), num_bins)


@requires_cuda
def test_mixed_devices_raise():
    f = torch.randn(40, 5, dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match="one device"):
        binned_gram_eigvalsh(f, torch.zeros(40, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="one device"):
        ops.binned_gram_eigvalsh(f, torch.zeros(40, dtype=torch.long), 2)


def test_one_input_on_meta_raises_instead_of_tracing():
    # the fake implementation doubles as the Meta kernel: a real tensor beside a meta one must not reach it
    for features, ids in [(torch.randn(4, 2), torch.zeros(4, dtype=torch.long, device="meta")),
                          (torch.randn(4, 2, device="meta"), torch.zeros(4, dtype=torch.long))]:
        with pytest.raises(ValueError, match="one device"):
            ops.binned_gram_eigvalsh(features, ids, 2)
    # all-meta: the output width depends on the data, so there is no shape to propagate
    with pytest.raises(RuntimeError, match="data-dependent"):
        ops.binned_gram_eigvalsh(torch.randn(4, 2, device="meta"), torch.zeros(4, dtype=torch.long, device="meta"),
                                 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("n,k,num_bins", [(0, 3, 2), (12, 5, 3), (9, 0, 2)])
def test_opcheck(device, dtype, ids_dtype, n, k, num_bins):
    # schema, fake (data-dependent width through a dynamic size), dispatch and torch.compile consistency
    features = torch.randn(n, k, dtype=dtype, device=device)
    ids = (torch.arange(n, device=device) % num_bins).to(ids_dtype)
    torch.library.opcheck(ops.binned_gram_eigvalsh.default, (features, ids, num_bins))


def test_compiles_with_dynamic_output():
    def spectrum(features, ids):
        eig, counts = binned_gram_eigvalsh(features, ids, 3)
        return eig.sum(1), counts

    features = torch.randn(10, 4, dtype=torch.float64)
    ids = torch.tensor([0, 1, 2, 0, 0, 1, 2, 0, 0, 0])
    compiled = torch.compile(spectrum, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(features, ids), spectrum(features, ids)):
        torch.testing.assert_close(got, want)
