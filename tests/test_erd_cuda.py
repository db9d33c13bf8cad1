"""CUDA kernels of the ERD loss against the float64 reference and the CPU kernels."""

import pytest
import torch

from tests.reference import erd_reference as ref
from sgdf_erd._native import CUDA_COMPILED
from sgdf_erd.erd import ERDLoss, erd_loss, erd_weight

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and CUDA_COMPILED),
                                reason="needs a CUDA GPU and a build with CUDA kernels")

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def batch(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    output = torch.randn(shape, generator=g).to(dtype)
    target = torch.randn(shape, generator=g).to(dtype)
    logsnr = torch.rand(shape[0], generator=g, dtype=torch.float64) * 26 - 13
    return output, target, torch.sigmoid(logsnr).sqrt().float(), torch.sigmoid(-logsnr).sqrt().float()


# (256, 4, 32, 32): packed loads; (5, 3, 7, 11): odd sample size, scalar path; (3, 40000): several chunks;
# (1500, 6): several tiles of the per-sample kernel
SHAPES = [(256, 4, 32, 32), (5, 3, 7, 11), (3, 40000), (1500, 6)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction,weighting", [("eps", "erd"), ("v", "min_snr"), ("flow", "erd")])
def test_forward_matches_reference_and_cpu(shape, dtype, prediction, weighting):
    output, target, alpha, sigma = batch(shape, dtype)
    cpu = erd_loss(output, target, alpha, sigma, prediction, weighting)
    gpu = erd_loss(output.cuda(), target.cuda(), alpha.cuda(), sigma.cuda(), prediction, weighting)
    w = ref.baseline_weight(alpha, sigma, prediction, weighting)
    torch.testing.assert_close(gpu[0].cpu().double(), ref.loss(output, target, w), rtol=TOL[dtype], atol=0)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=TOL[dtype], atol=0)  # per-sample MSE
    torch.testing.assert_close(gpu[2].cpu(), cpu[2], rtol=1e-12, atol=0)  # weights: same double maths
    assert torch.equal(gpu[3][0].cpu(), cpu[3][0])  # counts
    torch.testing.assert_close(gpu[3].cpu(), cpu[3], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[:3])
def test_backward_matches_cpu(shape, dtype):
    output, target, alpha, sigma = batch(shape, dtype, seed=1)
    grads = []
    for device in ("cpu", "cuda"):
        o = output.to(device).requires_grad_(True)
        t = target.to(device).requires_grad_(True)
        erd_loss(o, t, alpha.to(device), sigma.to(device), "v")[0].backward(torch.tensor(1.5, dtype=dtype,
                                                                                          device=device))
        grads.append((o.grad.cpu(), t.grad.cpu()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype] * 1e-6)


def test_gradcheck_float64_cuda():
    output, target, alpha, sigma = (x.cuda() for x in batch((4, 3, 5), torch.float64))
    output.requires_grad_(True)
    target.requires_grad_(True)
    fn = lambda o, t: erd_loss(o, t, alpha, sigma, "x0", "min_snr")[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (output, target))


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_bits_cuda(dtype):
    output, target, alpha, sigma = (x.cuda() for x in batch((300, 3, 40, 40), dtype, seed=2))
    output.requires_grad_(True)
    runs = []
    for _ in range(3):
        output.grad = None
        res = erd_loss(output, target, alpha, sigma)
        res[0].backward()
        runs.append(res + (output.grad.clone(),))
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


def test_many_bins_and_statistics_module():
    output, target, alpha, sigma = batch((700, 8), torch.float32, seed=3)
    loss_fn = ERDLoss(num_bins=200).cuda()  # 4 x 200 pairs: more than the per-sample kernel's threads
    loss_fn(output.cuda(), target.cuda(), alpha.cuda(), sigma.cuda())
    stats = loss_fn.statistics()
    expected = ref.batch_statistics(ref.per_sample_mse(output, target), ref.erd_weight(alpha, sigma, "eps"),
                                    alpha, sigma, 200, -10.0, 10.0)
    for key in ("count", "mse_mean", "loss_mean", "loss_share"):
        torch.testing.assert_close(stats[key].cpu(), expected[key], rtol=1e-5, atol=1e-12, equal_nan=True)


def test_negative_sigma_gives_nan_and_is_left_out():
    output, target, alpha, sigma = (x.cuda() for x in batch((6, 10), torch.float32, seed=4))
    sigma[2] = -0.5
    loss, _, weight, sums = erd_loss(output, target, alpha, sigma)
    assert torch.isnan(loss) and torch.isnan(weight[2]) and sums[0].sum() == 5


def test_weights_cuda():
    alpha = torch.rand(1000, dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    for prediction in ("eps", "x0", "v", "flow"):
        torch.testing.assert_close(erd_weight(alpha.cuda(), sigma.cuda(), prediction).cpu(),
                                   ref.erd_weight(alpha, sigma, prediction))
