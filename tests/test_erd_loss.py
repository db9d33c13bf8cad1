"""The fused ERD loss (forward, backward, dtypes, determinism, bad input) against the float64 reference."""

import pytest
import torch
import torch.nn.functional as F

from tests.reference import erd_reference as ref
from sgdf_erd.erd import ERDLoss, erd_loss, schedules

PREDICTIONS = ("eps", "x0", "v", "flow")
WEIGHTED_PAIRS = [("erd", p) for p in PREDICTIONS] + [("constant", p) for p in PREDICTIONS] + [
    ("min_snr", "eps"), ("min_snr", "x0"), ("min_snr", "v"), ("p2", "eps"), ("debias", "eps")]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# tolerance of the loss relative to the float64 reference on inputs already rounded to the dtype
LOSS_TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def make_batch(shape=(12, 3, 8, 8), dtype=torch.float32, seed=0, schedule=None):
    g = torch.Generator().manual_seed(seed)
    output = torch.randn(shape, generator=g).to(dtype)
    target = torch.randn(shape, generator=g).to(dtype)
    schedule = schedule or schedules.ContinuousCosine()
    t = torch.rand(shape[0], generator=g) * 0.98 + 0.01
    values = schedule(t)
    return output, target, values


def reference_weights(values, prediction, weighting, k=5.0, gamma=1.0):
    if weighting == "erd":
        kw = dict(alpha_prime=values.alpha_prime, sigma_prime=values.sigma_prime) if prediction == "flow" else {}
        return ref.erd_weight(values.alpha, values.sigma, prediction, **kw)
    return ref.baseline_weight(values.alpha, values.sigma, prediction, weighting, k=k, gamma=gamma)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighting,prediction", WEIGHTED_PAIRS)
def test_loss_matches_reference(weighting, prediction, dtype):
    output, target, v = make_batch(dtype=dtype, seed=hash((weighting, prediction)) % 1000)
    loss_fn = ERDLoss(prediction, weighting, k=3.0, p2_gamma=0.7)
    extra = (v.alpha_prime, v.sigma_prime) if prediction == "flow" else ()
    loss = loss_fn(output, target, v.alpha, v.sigma, *extra)
    assert loss.dtype == dtype and loss.shape == ()
    w = reference_weights(v, prediction, weighting, k=3.0, gamma=0.7)
    expected = ref.loss(output, target, w)
    torch.testing.assert_close(loss.double(), expected, rtol=LOSS_TOL[dtype], atol=0)


def test_constant_weighting_equals_mse_loss():
    output, target, v = make_batch(shape=(7, 5, 33))
    loss = ERDLoss("eps", "constant")(output, target, v.alpha, v.sigma)
    torch.testing.assert_close(loss, F.mse_loss(output, target), rtol=1e-6, atol=0)


def test_callable_weighting():
    output, target, v = make_batch()
    fn = lambda alpha, sigma: (alpha * sigma) ** 0.5  # noqa: E731
    loss = ERDLoss("eps", fn)(output, target, v.alpha, v.sigma)
    torch.testing.assert_close(loss.double(), ref.loss(output, target, fn(v.alpha.double(), v.sigma.double())),
                               rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="one weight per sample"):
        ERDLoss("eps", lambda a, s: a[:3])(output, target, v.alpha, v.sigma)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_gradient_matches_reference(dtype, prediction):
    output, target, v = make_batch(dtype=dtype, seed=3)
    output.requires_grad_(True)
    target.requires_grad_(True)
    loss = ERDLoss(prediction)(output, target, v.alpha, v.sigma)
    grad_out = torch.rand((), dtype=dtype) + 0.5
    loss.backward(grad_out)

    o64 = output.detach().double().requires_grad_(True)
    t64 = target.detach().double().requires_grad_(True)
    ref.loss(o64, t64, ref.erd_weight(v.alpha, v.sigma, prediction)).backward(grad_out.double())
    tol = dict(rtol=LOSS_TOL[dtype] * 2, atol=1e-9 if dtype == torch.float64 else LOSS_TOL[dtype] * 1e-3)
    assert output.grad.dtype == dtype and target.grad.dtype == dtype
    torch.testing.assert_close(output.grad.double(), o64.grad, **tol)
    torch.testing.assert_close(target.grad.double(), t64.grad, **tol)


@pytest.mark.parametrize("weighting,prediction", [("erd", "eps"), ("erd", "flow"), ("min_snr", "x0"),
                                                  ("p2", "eps")])
def test_gradcheck_float64(weighting, prediction):
    output, target, v = make_batch(shape=(4, 3, 5), dtype=torch.float64, seed=5)
    output.requires_grad_(True)
    target.requires_grad_(True)
    alpha, sigma = v.alpha.double(), v.sigma.double()
    fn = lambda o, t: erd_loss(o, t, alpha, sigma, prediction, weighting)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (output, target))


def test_double_backward_float64():
    output, target, v = make_batch(shape=(3, 4), dtype=torch.float64, seed=6)
    output.requires_grad_(True)
    target.requires_grad_(True)
    alpha, sigma = v.alpha.double(), v.sigma.double()
    fn = lambda o, t: erd_loss(o, t, alpha, sigma, "v")[0]  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (output, target))


def test_inference_mode_and_no_grad():
    output, target, v = make_batch()
    expected = ERDLoss()(output, target, v.alpha, v.sigma)
    with torch.inference_mode():
        assert torch.equal(ERDLoss()(output, target, v.alpha, v.sigma), expected)
    with torch.no_grad():
        assert torch.equal(ERDLoss()(output.requires_grad_(True), target, v.alpha, v.sigma), expected)


def test_gradient_only_for_output():
    output, target, v = make_batch()
    output.requires_grad_(True)
    ERDLoss()(output, target, v.alpha, v.sigma).backward()
    assert output.grad is not None and target.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_samples_span_several_chunks(dtype):
    # 3 * 100 * 101 = 30300 elements per sample: more than one 16384-element work item, and an odd tail
    output, target, v = make_batch(shape=(3, 3, 100, 101), dtype=dtype, seed=7)
    loss, mse, weight, _ = erd_loss(output, target, v.alpha, v.sigma)
    torch.testing.assert_close(mse.double(), ref.per_sample_mse(output, target), rtol=LOSS_TOL[dtype], atol=0)
    torch.testing.assert_close(loss.double(), ref.loss(output, target, ref.erd_weight(v.alpha, v.sigma, "eps")),
                               rtol=LOSS_TOL[dtype], atol=0)


def test_non_contiguous_and_mixed_dtypes():
    output, target, v = make_batch(shape=(6, 8, 10))
    out_t = output.transpose(1, 2)  # non-contiguous
    tgt_t = target.transpose(1, 2)
    expected = ref.loss(out_t, tgt_t, ref.erd_weight(v.alpha, v.sigma, "eps"))
    loss = ERDLoss()(out_t, tgt_t, v.alpha, v.sigma)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)
    # bf16 output with an fp32 target promotes to fp32, like F.mse_loss
    loss_mixed = ERDLoss()(output.bfloat16(), target, v.alpha.double(), v.sigma.double())
    assert loss_mixed.dtype == torch.float32
    ref_mixed = ref.loss(output.bfloat16(), target, ref.erd_weight(v.alpha, v.sigma, "eps"))
    torch.testing.assert_close(loss_mixed.double(), ref_mixed, rtol=1e-5, atol=0)


def test_flow_linear_path_default_derivatives():
    output, target, v = make_batch(schedule=schedules.LinearFlow())
    a = ERDLoss("flow")(output, target, v.alpha, v.sigma)
    b = ERDLoss("flow")(output, target, v.alpha, v.sigma, -torch.ones(12), torch.ones(12))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, F.mse_loss(output, target), rtol=1e-6, atol=0)  # weight 1 on the linear path


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_bits(dtype):
    output, target, v = make_batch(shape=(64, 4, 40, 40), dtype=dtype, seed=11)
    output.requires_grad_(True)
    runs = []
    for threads in (1, 2, 1):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            output.grad = None
            loss, mse, weight, sums = erd_loss(output, target, v.alpha, v.sigma, "v")
            loss.backward()
        finally:
            torch.set_num_threads(prev)
        runs.append((loss, mse, weight, sums, output.grad.clone()))
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


def test_non_finite_values_propagate_to_loss_but_not_to_statistics():
    output, target, v = make_batch(shape=(8, 16), seed=2)
    output[3, 5] = float("nan")
    output[6, 0] = float("inf")
    loss_fn = ERDLoss(num_bins=4)
    loss = loss_fn(output, target, v.alpha, v.sigma)
    assert torch.isnan(loss)
    keep = torch.tensor([i not in (3, 6) for i in range(8)])
    w = ref.erd_weight(v.alpha, v.sigma, "eps")
    expected = ref.batch_statistics(ref.per_sample_mse(output[keep], target[keep]), w[keep], v.alpha[keep],
                                    v.sigma[keep], 4, -10.0, 10.0)
    stats = loss_fn.statistics()
    for key in ("count", "mse_mean", "mse_var", "loss_mean", "loss_share"):
        # float32 per-sample MSE (relative error ~1e-7) bounds the variance's absolute accuracy
        atol = 1e-7 if key == "mse_var" else 1e-12
        torch.testing.assert_close(stats[key], expected[key], rtol=1e-6, atol=atol, equal_nan=True)
    assert torch.isfinite(loss_fn.running_sums).all()


def test_bad_inputs():
    output, target, v = make_batch(shape=(4, 6))
    loss_fn = ERDLoss()
    with pytest.raises(ValueError, match="shape"):
        loss_fn(output, target[:, :5], v.alpha, v.sigma)
    with pytest.raises(ValueError, match=r"'alpha' must have shape \[4\]"):
        loss_fn(output, target, v.alpha[:3], v.sigma)
    with pytest.raises(ValueError, match=r"'sigma' must have shape \[4\]"):
        loss_fn(output, target, v.alpha, v.sigma[:, None])
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        loss_fn(output, target, v.alpha, -v.sigma)
    with pytest.raises(ValueError, match="unknown prediction"):
        ERDLoss("score")
    with pytest.raises(ValueError, match="unknown weighting"):
        ERDLoss("eps", "snr")
    with pytest.raises(ValueError, match="defined for"):
        ERDLoss("flow", "min_snr")
    with pytest.raises(ValueError, match="flow"):
        loss_fn(output, target, v.alpha, v.sigma, torch.ones(4), torch.ones(4))
    with pytest.raises(TypeError, match="floating"):
        loss_fn(output, target, torch.ones(4, dtype=torch.long), v.sigma)
    with pytest.raises(ValueError, match="empty"):
        loss_fn(torch.empty(4, 0), torch.empty(4, 0), v.alpha, v.sigma)
    with pytest.raises(ValueError, match="num_bins"):
        ERDLoss(num_bins=0)
    with pytest.raises(ValueError, match="logsnr_range"):
        ERDLoss(logsnr_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="ema_decay"):
        ERDLoss(ema_decay=1.0)
    with pytest.raises(TypeError, match="weighting"):
        ERDLoss("eps", 3)


def test_fake_tensor_registrations():
    output, target, v = make_batch(shape=(4, 6))
    from sgdf_erd._native import ops
    torch.library.opcheck(ops.erd_loss_forward.default, (output, target, v.alpha, v.sigma, None, None, None, "eps",
                                                         "erd", 5.0, 1.0, 8, -10.0, 10.0))
    weight = torch.rand(4)
    torch.library.opcheck(ops.erd_loss_backward.default, (torch.tensor(1.0), output, target, weight, True))
    torch.library.opcheck(ops.erd_weights.default, (v.alpha, v.sigma, None, None, "v", "erd", 5.0, 1.0))
    torch.library.opcheck(ops.erd_loss.default, (output.requires_grad_(True), target, v.alpha, v.sigma, None, None,
                                                 None, "v", "min_snr", 5.0, 1.0, 8, -10.0, 10.0))
