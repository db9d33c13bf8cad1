"""The fused ERD loss (forward, backward, dtypes, determinism, bad input) against the float64 reference, on every
device (tests/devices.py): inputs are drawn on the CPU, moved to the device, and the reference runs on the CPU."""

import pytest
import torch
import torch.nn.functional as F

from tests.devices import DEVICES, requires_cuda
from tests.reference import erd_reference as ref
from sgdf_erd._native import ops
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


def to(device, *tensors):
    """The tensors (and the fields of ScheduleValues) on device."""
    return tuple(type(t)(*to(device, *t)) if isinstance(t, tuple) else t.to(device) for t in tensors)


def reference_weights(values, prediction, weighting, k=5.0, gamma=1.0):
    if weighting == "erd":
        kw = dict(alpha_prime=values.alpha_prime, sigma_prime=values.sigma_prime) if prediction == "flow" else {}
        return ref.erd_weight(values.alpha, values.sigma, prediction, **kw)
    return ref.baseline_weight(values.alpha, values.sigma, prediction, weighting, k=k, gamma=gamma)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighting,prediction", WEIGHTED_PAIRS)
def test_loss_matches_reference(device, weighting, prediction, dtype):
    # a seed of its own per pair, the same in every process (hash() of strings is salted per process)
    output, target, v = make_batch(dtype=dtype, seed=WEIGHTED_PAIRS.index((weighting, prediction)))
    loss_fn = ERDLoss(prediction, weighting, k=3.0, p2_gamma=0.7)
    extra = (v.alpha_prime, v.sigma_prime) if prediction == "flow" else ()
    loss = loss_fn(*to(device, output, target, v.alpha, v.sigma, *extra)).cpu()
    assert loss.dtype == dtype and loss.shape == ()
    w = reference_weights(v, prediction, weighting, k=3.0, gamma=0.7)
    expected = ref.loss(output, target, w)
    torch.testing.assert_close(loss.double(), expected, rtol=LOSS_TOL[dtype], atol=0)


# (256, 4, 32, 32): packed loads on CUDA; (5, 3, 7, 11): odd sample size, scalar path; (3, 40000): several
# chunks; (1500, 6): several tiles of CUDA's per-sample kernel
SHAPES = [(256, 4, 32, 32), (5, 3, 7, 11), (3, 40000), (1500, 6)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prediction,weighting", [("eps", "erd"), ("v", "min_snr"), ("flow", "erd")])
def test_shapes_match_reference(device, shape, dtype, prediction, weighting):
    output, target, v = make_batch(shape=shape, dtype=dtype, seed=len(shape))
    loss, mse, weight, sums = (x.cpu() for x in erd_loss(*to(device, output, target, v.alpha, v.sigma),
                                                          prediction, weighting))
    w = ref.baseline_weight(v.alpha, v.sigma, prediction, weighting)
    torch.testing.assert_close(loss.double(), ref.loss(output, target, w), rtol=LOSS_TOL[dtype], atol=0)
    torch.testing.assert_close(mse.double(), ref.per_sample_mse(output, target), rtol=LOSS_TOL[dtype], atol=0)
    torch.testing.assert_close(weight.double(), w, rtol=1e-6, atol=1e-7)
    expected = ref.batch_statistics(ref.per_sample_mse(output, target), w, v.alpha, v.sigma, 16, -10.0, 10.0)
    assert torch.equal(sums[0], expected["count"])


def test_constant_weighting_equals_mse_loss(device):
    output, target, v = to(device, *make_batch(shape=(7, 5, 33)))
    loss = ERDLoss("eps", "constant")(output, target, v.alpha, v.sigma)
    torch.testing.assert_close(loss, F.mse_loss(output, target), rtol=1e-6, atol=0)


def test_callable_weighting(device):
    output, target, v = make_batch()
    fn = lambda alpha, sigma: (alpha * sigma) ** 0.5  # noqa: E731
    loss = ERDLoss("eps", fn)(*to(device, output, target, v.alpha, v.sigma))
    assert loss.device == output.to(device).device
    torch.testing.assert_close(loss.cpu().double(),
                               ref.loss(output, target, fn(v.alpha.double(), v.sigma.double())), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="one weight per sample"):
        ERDLoss("eps", lambda a, s: a[:3])(*to(device, output, target, v.alpha, v.sigma))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_gradient_matches_reference(device, dtype, prediction):
    output, target, v = make_batch(dtype=dtype, seed=3)
    output = output.to(device).requires_grad_(True)
    target = target.to(device).requires_grad_(True)
    loss = ERDLoss(prediction)(output, target, *to(device, v.alpha, v.sigma))
    grad_out = torch.rand((), dtype=dtype) + 0.5
    loss.backward(grad_out.to(device))

    o64 = output.detach().double().requires_grad_(True)
    t64 = target.detach().double().requires_grad_(True)
    ref.loss(o64, t64, ref.erd_weight(v.alpha, v.sigma, prediction)).backward(grad_out.double())
    tol = dict(rtol=LOSS_TOL[dtype] * 2, atol=1e-9 if dtype == torch.float64 else LOSS_TOL[dtype] * 1e-3)
    assert output.grad.dtype == dtype and target.grad.dtype == dtype
    torch.testing.assert_close(output.grad.cpu().double(), o64.grad, **tol)
    torch.testing.assert_close(target.grad.cpu().double(), t64.grad, **tol)


@pytest.mark.parametrize("weighting,prediction", [("erd", "eps"), ("erd", "flow"), ("min_snr", "x0"),
                                                  ("p2", "eps")])
def test_gradcheck_float64(device, weighting, prediction):
    output, target, v = to(device, *make_batch(shape=(4, 3, 5), dtype=torch.float64, seed=5))
    output.requires_grad_(True)
    target.requires_grad_(True)
    alpha, sigma = v.alpha.double(), v.sigma.double()
    extra = dict(alpha_prime=v.alpha_prime.double(), sigma_prime=v.sigma_prime.double()) if prediction == "flow" \
        else {}
    fn = lambda o, t: erd_loss(o, t, alpha, sigma, prediction, weighting, **extra)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (output, target))


def test_double_backward_float64(device):
    output, target, v = to(device, *make_batch(shape=(3, 4), dtype=torch.float64, seed=6))
    output.requires_grad_(True)
    target.requires_grad_(True)
    alpha, sigma = v.alpha.double(), v.sigma.double()
    fn = lambda o, t: erd_loss(o, t, alpha, sigma, "v")[0]  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (output, target))


def test_inference_mode_and_no_grad(device):
    output, target, v = to(device, *make_batch())
    expected = ERDLoss()(output, target, v.alpha, v.sigma)
    with torch.inference_mode():
        assert torch.equal(ERDLoss()(output, target, v.alpha, v.sigma), expected)
    with torch.no_grad():
        assert torch.equal(ERDLoss()(output.requires_grad_(True), target, v.alpha, v.sigma), expected)


def test_gradient_only_for_output(device):
    output, target, v = to(device, *make_batch())
    output.requires_grad_(True)
    ERDLoss()(output, target, v.alpha, v.sigma).backward()
    assert output.grad is not None and target.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_samples_span_several_chunks(device, dtype):
    # 3 * 100 * 101 = 30300 elements per sample: more than one 16384-element work item, and an odd tail
    output, target, v = make_batch(shape=(3, 3, 100, 101), dtype=dtype, seed=7)
    loss, mse, weight, _ = (x.cpu() for x in erd_loss(*to(device, output, target, v.alpha, v.sigma)))
    torch.testing.assert_close(mse.double(), ref.per_sample_mse(output, target), rtol=LOSS_TOL[dtype], atol=0)
    torch.testing.assert_close(loss.double(), ref.loss(output, target, ref.erd_weight(v.alpha, v.sigma, "eps")),
                               rtol=LOSS_TOL[dtype], atol=0)


def test_non_contiguous_and_mixed_dtypes(device):
    output, target, v = make_batch(shape=(6, 8, 10))
    out_t = output.transpose(1, 2)  # non-contiguous
    tgt_t = target.transpose(1, 2)
    expected = ref.loss(out_t, tgt_t, ref.erd_weight(v.alpha, v.sigma, "eps"))
    loss = ERDLoss()(*to(device, out_t, tgt_t, v.alpha, v.sigma))
    torch.testing.assert_close(loss.cpu().double(), expected, rtol=1e-5, atol=0)
    # bf16 output with an fp32 target promotes to fp32, like F.mse_loss
    loss_mixed = ERDLoss()(*to(device, output.bfloat16(), target, v.alpha.double(), v.sigma.double()))
    assert loss_mixed.dtype == torch.float32
    ref_mixed = ref.loss(output.bfloat16(), target, ref.erd_weight(v.alpha, v.sigma, "eps"))
    torch.testing.assert_close(loss_mixed.cpu().double(), ref_mixed, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_operands(device, dtype):
    # views at odd storage offsets (no vector alignment) for every operand, gradients included
    output, target, v = make_batch(shape=(5, 3, 7), dtype=dtype, seed=8)

    def shifted(t):
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=device)
        view = buf[1:].view(t.shape)
        view.copy_(t)
        return view

    o, t, alpha, sigma = (shifted(x) for x in (output, target, v.alpha, v.sigma))
    assert o.storage_offset() == 1
    o.requires_grad_(True)
    loss = erd_loss(o, t, alpha, sigma, "v")[0]
    loss.backward()
    w = ref.erd_weight(v.alpha, v.sigma, "v")
    torch.testing.assert_close(loss.cpu().double(), ref.loss(output, target, w), rtol=LOSS_TOL[dtype], atol=0)
    o64 = output.double().requires_grad_(True)
    ref.loss(o64, target, w).backward()
    torch.testing.assert_close(o.grad.cpu().double(), o64.grad, rtol=2 * LOSS_TOL[dtype],
                               atol=LOSS_TOL[dtype] * 1e-3)


def test_flow_linear_path_default_derivatives(device):
    output, target, v = to(device, *make_batch(schedule=schedules.LinearFlow()))
    a = ERDLoss("flow")(output, target, v.alpha, v.sigma)
    b = ERDLoss("flow")(output, target, v.alpha, v.sigma, -torch.ones(12, device=device),
                        torch.ones(12, device=device))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, F.mse_loss(output, target), rtol=1e-6, atol=0)  # weight 1 on the linear path


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_bits(device, dtype):
    # bitwise identical results run to run (on the CPU also for any thread count)
    output, target, v = to(device, *make_batch(shape=(64, 4, 40, 40), dtype=dtype, seed=11))
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


def test_non_finite_values_propagate_to_loss_but_not_to_statistics(device):
    output, target, v = make_batch(shape=(8, 16), seed=2)
    output[3, 5] = float("nan")
    output[6, 0] = float("inf")
    loss_fn = ERDLoss(num_bins=4).to(device)
    loss = loss_fn(*to(device, output, target, v.alpha, v.sigma))
    assert torch.isnan(loss)
    keep = torch.tensor([i not in (3, 6) for i in range(8)])
    w = ref.erd_weight(v.alpha, v.sigma, "eps")
    expected = ref.batch_statistics(ref.per_sample_mse(output[keep], target[keep]), w[keep], v.alpha[keep],
                                    v.sigma[keep], 4, -10.0, 10.0)
    stats = loss_fn.statistics()
    for key in ("count", "mse_mean", "mse_var", "loss_mean", "loss_share"):
        # float32 per-sample MSE (relative error ~1e-7) bounds the variance's absolute accuracy
        atol = 1e-7 if key == "mse_var" else 1e-12
        torch.testing.assert_close(stats[key].cpu(), expected[key], rtol=1e-6, atol=atol, equal_nan=True)
    assert torch.isfinite(loss_fn.running_sums).all()


def test_many_bins(device):
    g = torch.Generator().manual_seed(3)
    output, target = torch.randn(700, 8, generator=g), torch.randn(700, 8, generator=g)
    logsnr = torch.rand(700, generator=g, dtype=torch.float64) * 26 - 13
    alpha, sigma = torch.sigmoid(logsnr).sqrt().float(), torch.sigmoid(-logsnr).sqrt().float()
    loss_fn = ERDLoss(num_bins=200).to(device)  # 4 x 200 pairs: more than CUDA's per-sample kernel's threads
    loss_fn(*to(device, output, target, alpha, sigma))
    stats = loss_fn.statistics()
    expected = ref.batch_statistics(ref.per_sample_mse(output, target), ref.erd_weight(alpha, sigma, "eps"),
                                    alpha, sigma, 200, -10.0, 10.0)
    for key in ("count", "mse_mean", "loss_mean", "loss_share"):
        torch.testing.assert_close(stats[key].cpu(), expected[key], rtol=1e-5, atol=1e-12, equal_nan=True)


def test_bad_inputs(device):
    output, target, v = to(device, *make_batch(shape=(4, 6)))
    loss_fn = ERDLoss().to(device)
    with pytest.raises(ValueError, match="shape"):
        loss_fn(output, target[:, :5], v.alpha, v.sigma)
    with pytest.raises(ValueError, match=r"'alpha' must have shape \[4\]"):
        loss_fn(output, target, v.alpha[:3], v.sigma)
    with pytest.raises(ValueError, match=r"'sigma' must have shape \[4\]"):
        loss_fn(output, target, v.alpha, v.sigma[:, None])
    with pytest.raises(ValueError, match="unknown prediction"):
        ERDLoss("score")
    with pytest.raises(ValueError, match="unknown weighting"):
        ERDLoss("eps", "snr")
    with pytest.raises(ValueError, match="defined for"):
        ERDLoss("flow", "min_snr")
    with pytest.raises(ValueError, match="flow"):
        loss_fn(output, target, v.alpha, v.sigma, torch.ones(4, device=device), torch.ones(4, device=device))
    with pytest.raises(TypeError, match="floating"):
        loss_fn(output, target, torch.ones(4, dtype=torch.long, device=device), v.sigma)
    with pytest.raises(TypeError, match="'alpha' must be a tensor"):
        loss_fn(output, target, 0.5, v.sigma)
    with pytest.raises(TypeError, match="'sigma_prime' must be a tensor"):
        ERDLoss("flow")(output, target, v.alpha, v.sigma, v.alpha, 1.0)
    with pytest.raises(ValueError, match="empty"):
        loss_fn(torch.empty(4, 0, device=device), torch.empty(4, 0, device=device), v.alpha, v.sigma)
    with pytest.raises(ValueError, match="num_bins"):
        ERDLoss(num_bins=0)
    with pytest.raises(ValueError, match="logsnr_range"):
        ERDLoss(logsnr_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="ema_decay"):
        ERDLoss(ema_decay=1.0)
    with pytest.raises(TypeError, match="weighting"):
        ERDLoss("eps", 3)
    assert int(loss_fn.num_batches_tracked) == 0


def test_negative_sigma_raises_on_cpu():
    output, target, v = make_batch(shape=(4, 6))
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        ERDLoss()(output, target, v.alpha, -v.sigma)


@requires_cuda
def test_negative_sigma_gives_nan_and_is_left_out_on_cuda():
    # on CUDA the check would synchronise every step: a negative sigma gives a NaN weight and leaves the statistics
    output, target, v = to("cuda", *make_batch(shape=(6, 10), seed=4))
    sigma = v.sigma.clone()
    sigma[2] = -0.5
    loss, _, weight, sums = erd_loss(output, target, v.alpha, sigma)
    assert torch.isnan(loss) and torch.isnan(weight[2]) and sums[0].sum() == 5


@requires_cuda
@pytest.mark.parametrize("weighting", ["erd", "min_snr", "given"])
def test_loss_step_has_no_hidden_host_sync(weighting):
    output, target, v = to("cuda", *make_batch(shape=(16, 3, 8, 8)))
    output.requires_grad_(True)
    loss_fn = ERDLoss("eps", (lambda a, s: a * s) if weighting == "given" else weighting).cuda()
    loss_fn(output, target, v.alpha, v.sigma)  # first call: lazy initialisation may synchronise
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = loss_fn(output, target, v.alpha, v.sigma)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert torch.isfinite(loss.detach()).item()


def test_one_input_on_meta_raises_and_leaves_statistics():
    # The ops' fake implementations also serve as their Meta kernels: a CPU call with one meta input must raise,
    # not return uninitialised memory (which the running statistics would absorb).
    output, target, v = make_batch(shape=(4, 6))
    loss_fn = ERDLoss()
    loss_fn(output, target, v.alpha, v.sigma)
    before = {k: t.clone() for k, t in loss_fn.state_dict().items()}
    for args in [(output, target, v.alpha.to("meta"), v.sigma), (output, target, v.alpha, v.sigma.to("meta")),
                 (output, target.to("meta"), v.alpha, v.sigma)]:
        with pytest.raises(ValueError, match="meta"):
            loss_fn(*args)
    for key, t in loss_fn.state_dict().items():
        assert torch.equal(t, before[key]), key
    with pytest.raises(ValueError, match="meta"):
        ops.erd_weights(v.alpha, v.sigma.to("meta"), None, None, "eps", "erd", 5.0, 1.0)
    with pytest.raises(ValueError, match="meta"):
        ops.erd_loss_backward(torch.tensor(1.0), output, target, torch.ones(4, device="meta"), False)
    # all-meta inputs propagate shapes
    loss, mse, weight, sums = ops.erd_loss_forward(*to("meta", output, target, v.alpha, v.sigma), None, None, None,
                                                   "eps", "erd", 5.0, 1.0, 8, -10.0, 10.0)
    assert loss.device.type == "meta" and mse.shape == (4,) and sums.shape == (4, 8)


# opcheck's sub-tests without the torch.compile round trip (test_aot_dispatch_dynamic), which costs most of its
# time: the fake implementations do not branch on prediction or weighting, so every pair gets these, and the
# main cases of every dtype get all of opcheck.
FAKE_AND_SCHEMA = ("test_schema", "test_autograd_registration", "test_faketensor")
MAIN_CASES = [("eps", "erd", False), ("flow", "erd", True), ("v", "given", False)]


def opcheck_cases():
    """(dtype, prediction, weighting, derivatives passed, opcheck sub-tests): every prediction, weighting and
    optional tensor in float32, and the main cases in every dtype with all of opcheck."""
    cases = [(p, "erd", False) for p in PREDICTIONS] + [(p, w, False) for w, p in WEIGHTED_PAIRS if w != "erd"]
    cases += [("flow", "given", False)]
    return [(torch.float32, *c, FAKE_AND_SCHEMA) for c in cases] + [(d, *c, None) for d in DTYPES for c in MAIN_CASES]


def opcheck(op, args, test_utils):
    if test_utils is None:
        torch.library.opcheck(op, args)
    else:
        torch.library.opcheck(op, args, test_utils=test_utils)


@pytest.mark.parametrize("dtype,prediction,weighting,derivatives,test_utils", opcheck_cases())
def test_opcheck(device, dtype, prediction, weighting, derivatives, test_utils):
    output, target, v = to(device, *make_batch(shape=(4, 3, 5), dtype=dtype))
    alpha, sigma = v.alpha.to(dtype), v.sigma.to(dtype)
    prime = (v.alpha_prime.to(dtype), v.sigma_prime.to(dtype)) if derivatives else (None, None)
    weights = torch.rand(4, dtype=dtype, device=device) if weighting == "given" else None
    args = (alpha, sigma, *prime, weights, prediction, weighting, 3.0, 0.7, 8, -10.0, 10.0)
    opcheck(ops.erd_loss_forward.default, (output, target, *args), test_utils)
    if weighting != "given":
        opcheck(ops.erd_weights.default, (alpha, sigma, *prime, prediction, weighting, 3.0, 0.7), test_utils)
    if test_utils is None:  # with inputs requiring grad (the ops' autograd registrations): once per dtype
        torch.library.opcheck(ops.erd_loss_forward.default, (output.clone().requires_grad_(True),
                                                             target.clone().requires_grad_(weighting == "given"),
                                                             *args))
        if prediction == "eps":
            weight = torch.rand(4, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
            grad = torch.tensor(1.5, dtype=dtype, device=device)
            for target_requires_grad in (False, True):
                torch.library.opcheck(ops.erd_loss_backward.default,
                                      (grad, output, target, weight, target_requires_grad))
                torch.library.opcheck(ops.erd_loss_backward.default,
                                      (grad.clone().requires_grad_(True), output.clone().requires_grad_(True),
                                       target.clone().requires_grad_(True), weight, target_requires_grad))
