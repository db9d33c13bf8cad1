"""Noise schedules (values, derivatives, log-SNR) and the x_t / target helpers."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.devices import requires_cuda
from tests.reference import erd_reference as ref
from sgdf_erd.erd import ERDLoss, loss_weight, schedules

F64 = torch.float64
CONTINUOUS = [schedules.ContinuousCosine(), schedules.LinearLogSNR(), schedules.LinearLogSNR(5.0, -7.0),
              schedules.LinearFlow()]


@pytest.mark.parametrize("schedule", CONTINUOUS, ids=repr)
def test_continuous_derivatives_match_autograd(schedule):
    t = (torch.rand(50, dtype=F64) * 0.98 + 0.01).requires_grad_(True)
    alpha, sigma = schedule.alpha_sigma(t)
    d_alpha, = torch.autograd.grad(alpha.sum(), t, retain_graph=True)
    d_sigma, = torch.autograd.grad(sigma.sum(), t)
    values = schedule(t.detach())
    torch.testing.assert_close(values.alpha_prime, d_alpha)
    torch.testing.assert_close(values.sigma_prime, d_sigma)
    torch.testing.assert_close(values.logsnr, torch.log(alpha.detach() ** 2 / sigma.detach() ** 2))


def test_continuous_cosine_values():
    t = torch.linspace(0, 1, 11, dtype=F64)
    alpha, sigma = schedules.ContinuousCosine().alpha_sigma(t)
    torch.testing.assert_close(alpha, torch.cos(math.pi * t / 2).clamp_min(0))
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))
    assert float(alpha[-1]) >= 0 and float(schedules.ContinuousCosine().alpha_sigma(torch.ones(1))[0]) >= 0


FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _assert_near_exact(got, exact, dtype, what, atol=0.0):
    """got (t's dtype) within 2 ulp of the exact value, plus dtype's subnormal spacing and `atol`."""
    assert got.dtype == dtype, what
    info = torch.finfo(dtype)
    got, exact = got.double(), exact.double()
    same_inf = torch.isinf(exact) & (got == exact)
    bound = 2 * info.eps * exact.abs() + info.tiny * info.eps + atol
    bad = ~same_inf & ~((got - exact).abs() <= bound)
    assert not bad.any(), f"{what} {dtype}: t -> got {got[bad].tolist()}, exact {exact[bad].tolist()}"


@settings(max_examples=60, deadline=None)
@given(t=st.floats(0.0, 1.0), dtype=st.sampled_from(FLOAT_DTYPES))
@example(t=1.0, dtype=torch.bfloat16)  # pi / 2 rounds to 1.5703 in bfloat16: alpha(1) was 4.8e-4
@example(t=1.0, dtype=torch.float16)
@example(t=1 - 2**-24, dtype=torch.float32)  # cos of the rounded pi t / 2 was 4 % off
@example(t=1e-3, dtype=torch.float16)  # alpha^2 / sigma^2 overflowed float16: log-SNR inf
@example(t=1e-20, dtype=torch.float32)  # and float32
@example(t=1.401298464324817e-45, dtype=torch.float32)  # a subnormal sigma in float32: log-SNR 205.17 for 205.65
@example(t=0.0, dtype=torch.float64)
def test_continuous_schedules_match_exact_values_in_every_dtype(t, dtype):
    """ContinuousCosine's alpha, sigma, derivatives and log-SNR, and LinearFlow's log-SNR, within 2 ulp of t's dtype
    of the spec's values at the (rounded) t; alpha(1) = 0 exactly (SNR 0, weight pinned to 1)."""
    t = torch.tensor([t, 1 - t]).to(dtype)
    exact = ref.exact_schedule(t, "cosine")
    got = schedules.ContinuousCosine()(t)
    compute_eps = torch.finfo(torch.promote_types(dtype, torch.float32)).eps
    for name, value, want in zip(got._fields, got, exact):
        # the log-SNR's absolute error is that of log alpha - log sigma: a few ulp of the compute dtype
        _assert_near_exact(value, want, dtype, f"ContinuousCosine {name}", 8 * compute_eps if name == "logsnr" else 0)
    _, _, _, _, exact_flow = ref.exact_schedule(t, "flow")
    _assert_near_exact(schedules.LinearFlow().logsnr(t), exact_flow, dtype, "LinearFlow logsnr", 8 * compute_eps)
    at_one = t == 1
    assert (got.alpha[at_one] == 0).all() and (loss_weight(got.alpha, got.sigma, "x0")[at_one] == 1).all()


def test_linear_logsnr_end_points_and_path():
    s = schedules.LinearLogSNR()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    torch.testing.assert_close(s.logsnr(t), torch.tensor([10.0, 0.0, -10.0], dtype=F64))
    alpha, sigma = s.alpha_sigma(t)
    torch.testing.assert_close(alpha, torch.sigmoid(torch.tensor([5.0, 0.0, -5.0], dtype=F64)))
    torch.testing.assert_close(alpha + sigma, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError):
        schedules.LinearLogSNR(-1.0, 1.0)


def test_linear_flow():
    t = torch.rand(7)
    v = schedules.LinearFlow()(t)
    assert torch.equal(v.alpha, 1 - t) and torch.equal(v.sigma, t)
    assert torch.equal(v.alpha_prime, -torch.ones(7)) and torch.equal(v.sigma_prime, torch.ones(7))


def test_linear_betas_match_ho_et_al():
    betas = schedules.linear_betas()
    assert betas.shape == (1000,) and betas.dtype == F64
    assert math.isclose(float(betas[0]), 1e-4) and math.isclose(float(betas[-1]), 0.02)
    assert torch.allclose(schedules.linear_betas(500)[[0, -1]], torch.tensor([2e-4, 0.04], dtype=F64))


def test_cosine_betas():
    betas = schedules.cosine_betas()
    assert betas.shape == (1000,) and float(betas.max()) == 0.999
    # alpha_bar of the product follows the cosine law away from the clipped end
    ac = torch.cumprod(1 - betas, 0)
    u = torch.arange(1, 1001, dtype=F64) / 1000
    law = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    torch.testing.assert_close(ac[:990], law[:990], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("schedule", [schedules.DiscreteVP.linear(), schedules.DiscreteVP.cosine()], ids=repr)
def test_discrete_vp(schedule):
    t = torch.randint(0, 1000, (40,))
    alpha, sigma = schedule.alpha_sigma(t)
    assert alpha.dtype == torch.get_default_dtype()
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(40))
    torch.testing.assert_close(alpha.double() ** 2, schedule.alphas_cumprod[t], rtol=1e-6, atol=1e-7)
    lam = schedule.logsnr(t)
    torch.testing.assert_close(lam, torch.log(alpha.double() ** 2 / sigma.double() ** 2).float(), rtol=1e-4,
                               atol=1e-4)
    # derivatives: per-timestep central differences
    mid = torch.tensor([500])
    d_alpha, _ = schedule.derivatives(mid)
    a_next, a_prev = schedule.alpha_sigma(mid + 1)[0], schedule.alpha_sigma(mid - 1)[0]
    torch.testing.assert_close(d_alpha, (a_next - a_prev) / 2)
    assert schedule.sample_t(16).dtype == torch.long


def test_discrete_vp_from_alphas_cumprod_like_diffusers():
    betas = torch.linspace(1e-4 ** 0.5, 0.012 ** 0.5, 1000) ** 2  # diffusers' scaled_linear, float32
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    schedule = schedules.DiscreteVP(alphas_cumprod)
    assert schedule.num_steps == 1000
    t = torch.tensor([0, 10, 999])
    torch.testing.assert_close(schedule.alpha_sigma(t)[0], alphas_cumprod[t].sqrt())
    torch.testing.assert_close(schedules.DiscreteVP.from_betas(betas).alphas_cumprod,
                               torch.cumprod(1 - betas.double(), 0))


def test_discrete_vp_bad_input():
    s = schedules.DiscreteVP.linear(100)
    with pytest.raises(TypeError, match="integer"):
        s.alpha_sigma(torch.rand(3))
    with pytest.raises(ValueError, match="timesteps"):
        s.alpha_sigma(torch.tensor([100]))
    with pytest.raises(ValueError):
        schedules.DiscreteVP(torch.tensor([1.5, 0.5]))
    with pytest.raises(TypeError):
        schedules.ContinuousCosine().alpha_sigma(torch.tensor([1, 2]))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "flow"])
def test_make_noisy_and_target(prediction):
    x0, noise = torch.randn(5, 3, 4), torch.randn(5, 3, 4)
    schedule = schedules.ContinuousCosine()
    v = schedule(torch.rand(5, dtype=F64))
    a, s = v.alpha.float()[:, None, None], v.sigma.float()[:, None, None]
    x_t = schedules.make_noisy(x0, noise, v.alpha, v.sigma)
    assert x_t.dtype == torch.float32
    torch.testing.assert_close(x_t, a * x0 + s * noise)
    expected = {"eps": noise, "x0": x0, "v": a * noise - s * x0,
                "flow": v.alpha_prime.float()[:, None, None] * x0 + v.sigma_prime.float()[:, None, None] * noise}
    kw = dict(alpha_prime=v.alpha_prime, sigma_prime=v.sigma_prime) if prediction == "flow" else {}
    torch.testing.assert_close(schedules.make_target(x0, noise, v.alpha, v.sigma, prediction, **kw),
                               expected[prediction])


def test_make_target_flow_defaults_to_linear_path_and_errors():
    x0, noise = torch.randn(4, 2), torch.randn(4, 2)
    t = torch.rand(4)
    torch.testing.assert_close(schedules.make_target(x0, noise, 1 - t, t, "flow"), noise - x0)
    with pytest.raises(ValueError, match="unknown prediction"):
        schedules.make_target(x0, noise, 1 - t, t, "score")
    with pytest.raises(ValueError, match="shape"):
        schedules.make_noisy(x0, noise, torch.rand(3), t)


@pytest.mark.parametrize("schedule", CONTINUOUS, ids=repr)
@pytest.mark.parametrize("t", [-0.1, 1.5, [0.5, 2.0]])
def test_continuous_times_outside_unit_interval(schedule, t):
    # on the CPU a time outside [0, 1] raises (cosine would give sigma < 0)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        schedule(torch.tensor(t))


@requires_cuda
@pytest.mark.parametrize("schedule", CONTINUOUS, ids=repr)
def test_continuous_times_outside_give_nan_on_cuda(schedule):
    # on CUDA the check would synchronise: a time outside [0, 1] gives NaN values, never wrong numbers
    values = schedule(torch.tensor([0.25, -0.5, 1.5, 1.0], device="cuda"))
    expected = schedule(torch.tensor([0.25, 1.0]))
    for got, want in zip(values, expected):
        assert torch.isnan(got[1:3]).all()
        torch.testing.assert_close(got[[0, 3]].cpu(), want)


@pytest.mark.parametrize("schedule", CONTINUOUS, ids=repr)
def test_continuous_values_on_device(device, schedule):
    t = torch.linspace(0, 1, 11, dtype=F64)
    for got, want in zip(schedule(t.to(device)), schedule(t)):
        assert got.device.type == device.type
        torch.testing.assert_close(got.cpu(), want)


@pytest.mark.parametrize("num_steps,error,match", [
    (0, ValueError, "num_steps"), (1, ValueError, "num_steps"), (10, ValueError, "num_steps >= 20"),
    (19, ValueError, "num_steps >= 20"), (True, TypeError, "num_steps"), (100.0, TypeError, "num_steps"),
])
def test_discrete_vp_linear_small_num_steps(num_steps, error, match):
    with pytest.raises(error, match=match):
        schedules.DiscreteVP.linear(num_steps)


def test_discrete_vp_small_valid_num_steps():
    assert schedules.DiscreteVP.linear(20).num_steps == 20
    assert schedules.DiscreteVP.cosine(2).num_steps == 2
    with pytest.raises(ValueError, match="num_steps"):
        schedules.DiscreteVP.cosine(1)


def test_make_noisy_and_target_need_a_batch_dimension():
    for fn in (schedules.make_noisy, lambda x, n, a, s: schedules.make_target(x, n, a, s, "v")):
        with pytest.raises(ValueError, match="batch dimension"):
            fn(torch.tensor(1.0), torch.tensor(2.0), 0.6, 0.8)
        with pytest.raises(TypeError, match="tensors"):
            fn([1.0], torch.ones(1), 0.6, 0.8)


def test_discrete_vp_follows_the_default_dtype_of_each_call():
    vp = schedules.DiscreteVP.linear()
    t = torch.tensor([10, 500])
    assert vp.alpha_sigma(t)[0].dtype == torch.get_default_dtype()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        alpha, sigma = vp.alpha_sigma(t)
        assert alpha.dtype == sigma.dtype == vp.logsnr(t).dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)


INTEGER_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
                  torch.uint64]


@pytest.mark.parametrize("dtype", INTEGER_DTYPES, ids=str)
def test_discrete_vp_takes_every_integer_dtype_as_indices(dtype):
    # 100 timesteps in a batch of 100: a uint8 tensor indexing the table would be a boolean mask
    vp = schedules.DiscreteVP.cosine(100)
    t = torch.randint(0, 100, (100,), generator=torch.Generator().manual_seed(0))
    for got, want in zip(vp(t.to(dtype)), vp(t)):
        assert torch.equal(got, want)
    output, target = torch.randn(100, 3), torch.randn(100, 3)
    assert torch.equal(ERDLoss("v", schedule=vp)(output, target, timesteps=t.to(dtype)),
                       ERDLoss("v", schedule=vp)(output, target, timesteps=t))


@pytest.mark.parametrize("timesteps,error,match", [
    (torch.tensor([True, False]), TypeError, "integer timesteps, got torch.bool"),
    (torch.tensor([1.0, 2.0]), TypeError, "integer timesteps, got torch.float32"),
    (torch.tensor([1, 2], dtype=torch.complex64), TypeError, "integer timesteps"),
    ("10", TypeError, "timesteps must be a tensor"),
    (object(), TypeError, "timesteps must be a tensor"),
    (torch.tensor([3, 100], dtype=torch.uint8), ValueError, r"\[0, 100\), got values in \[100, 100\]"),
])
def test_discrete_vp_refuses_timesteps_that_are_not_indices(timesteps, error, match):
    vp = schedules.DiscreteVP.cosine(100)
    with pytest.raises(error, match=match):
        vp.alpha_sigma(timesteps)
    with pytest.raises(error, match=match):
        ERDLoss("eps", schedule=vp)(torch.randn(2, 3), torch.randn(2, 3), timesteps=timesteps)


def test_flow_match_timesteps_nan_and_outside():
    # NaN gives NaN values, as LinearFlow's; the error names only the values outside the range
    flow = schedules.FlowMatchTimesteps(1000)
    alpha, sigma = flow.alpha_sigma(torch.tensor([float("nan"), 250.0]))
    assert alpha[0].isnan() and sigma[0].isnan() and alpha[1] == 0.75 and sigma[1] == 0.25
    with pytest.raises(ValueError, match=r"\[0, 1000\].*got values in \[-3.0, 2000.0\] outside it"):
        flow.alpha_sigma(torch.tensor([float("nan"), 2000.0, 5.0, -3.0]))
    with pytest.raises(TypeError, match="timesteps must be a tensor"):
        flow.derivatives("10")


def test_timesteps_outside_give_nan_under_transforms():
    # under torch.func there is no value to check: an index outside gives NaN, never an indexing failure
    from torch.func import vmap
    vp, flow = schedules.DiscreteVP.cosine(100), schedules.FlowMatchTimesteps(1000)
    alpha = vmap(lambda t: vp.alpha_sigma(t)[0])(torch.tensor([5, 100, -1]))
    assert alpha[0] == vp.alpha_sigma(torch.tensor(5))[0] and alpha[1:].isnan().all()
    sigma = vmap(lambda t: flow.alpha_sigma(t)[1])(torch.tensor([500.0, 1500.0]))
    assert sigma[0] == 0.5 and sigma[1].isnan()
