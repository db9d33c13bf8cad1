"""ERD weights and baseline weightings against the float64 reference (on every device, tests/devices.py), and the
authors' parity table."""

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.devices import DEVICES
from tests.reference import erd_authors as authors
from tests.reference import erd_reference as ref
from sgdf_erd.erd import ERDLoss, erd_weight, loss_weight, schedules

PREDICTIONS = ("eps", "x0", "v", "flow")
BASELINE_PAIRS = [("min_snr", "eps"), ("min_snr", "x0"), ("min_snr", "v"), ("p2", "eps"), ("debias", "eps")]
UNDEFINED_PAIRS = [("min_snr", "flow"), ("p2", "x0"), ("p2", "v"), ("p2", "flow"), ("debias", "x0"),
                   ("debias", "v"), ("debias", "flow")]


def schedule_cases():
    """(name, schedule, t) for every schedule, times chosen away from the pinned end points."""
    g = torch.Generator().manual_seed(0)
    cont = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.01
    disc = torch.randint(1, 999, (64,), generator=g)
    return [
        ("vp_linear", schedules.DiscreteVP.linear(), disc),
        ("vp_cosine", schedules.DiscreteVP.cosine(), disc),
        ("cosine", schedules.ContinuousCosine(), cont),
        ("linear_logsnr", schedules.LinearLogSNR(), cont),
        ("flow", schedules.LinearFlow(), cont),
    ]


def assert_close(actual, expected, rtol=1e-12, atol=1e-12):
    torch.testing.assert_close(actual.cpu().double(), expected.cpu().double(), rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("name,schedule,t", [c for c in schedule_cases() if c[0] != "linear_logsnr"])
def test_parity_with_authors(name, schedule, t):
    """The authors' values: VP eps -> sigma, x0 -> alpha, v -> alpha*sigma; linear flow -> 1."""
    with torch.autograd.set_grad_enabled(False):
        torch.set_default_dtype(torch.float64)
        try:
            alpha, sigma = schedule.alpha_sigma(t)
        finally:
            torch.set_default_dtype(torch.float32)
    if name == "flow":
        assert_close(erd_weight(alpha, sigma, "flow"), torch.ones_like(alpha))
        return
    assert_close(erd_weight(alpha, sigma, "eps"), sigma)
    assert_close(erd_weight(alpha, sigma, "x0"), alpha)
    assert_close(erd_weight(alpha, sigma, "v"), alpha * sigma)


@pytest.mark.parametrize("name,schedule,t", schedule_cases())
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_weight_matches_reference_on_schedules(device, name, schedule, t, prediction):
    values = schedule(t)
    assert schedule(t.to(device)).alpha.device == torch.device(device)
    kwargs = {}
    if prediction == "flow":
        kwargs = dict(alpha_prime=values.alpha_prime, sigma_prime=values.sigma_prime)
    got = erd_weight(values.alpha.to(device), values.sigma.to(device), prediction,
                     **{k: v.to(device) for k, v in kwargs.items()})
    expected = ref.erd_weight(values.alpha, values.sigma, prediction, **kwargs)
    assert got.dtype == values.alpha.dtype
    tol = 1e-12 if values.alpha.dtype == torch.float64 else 1e-6
    assert_close(got, expected.to(got.dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.just(0.0), st.floats(1e-30, 3), st.floats(-3, -1e-30)),
                          st.one_of(st.just(0.0), st.floats(1e-30, 3)), st.floats(-4, 4), st.floats(-4, 4)),
                min_size=1, max_size=20),
       st.sampled_from(PREDICTIONS))
def test_weight_random_general_rule(device, rows, prediction):
    # magnitudes above 1e-30 keep the reference's squares from underflowing (the kernel uses hypot)
    alpha, sigma, ap, sp = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows))
    kwargs = dict(alpha_prime=ap, sigma_prime=sp) if prediction == "flow" else {}
    got = erd_weight(alpha.to(device), sigma.to(device), prediction, **{k: v.to(device) for k, v in kwargs.items()})
    assert_close(got, ref.erd_weight(alpha, sigma, prediction, **kwargs))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_weight_pinned_where_snr_is_zero(device, prediction):
    alpha = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64, device=device)
    sigma = torch.tensor([1.0, 0.3, float("inf")], dtype=torch.float64, device=device)
    assert torch.equal(erd_weight(alpha, sigma, prediction), torch.ones(3, dtype=torch.float64, device=device))


@pytest.mark.parametrize("prediction,expected", [("eps", 0.0), ("x0", 1.0), ("v", 0.0), ("flow", 1.0)])
def test_weight_is_the_formula_where_snr_is_infinite(device, prediction, expected):
    # sigma = 0 (clean data, t = 0): the formula's value, as the authors' code computes it (flow: |alpha'|)
    alpha = torch.tensor([0.7, 1.0, -0.5], dtype=torch.float64, device=device)
    got = erd_weight(alpha, torch.zeros(3, dtype=torch.float64, device=device), prediction)
    assert torch.equal(got, torch.full_like(got, expected))
    if prediction == "flow":
        got = erd_weight(alpha, torch.zeros_like(alpha), "flow", alpha_prime=torch.full_like(alpha, -2.5),
                         sigma_prime=torch.ones_like(alpha))
        assert torch.equal(got, torch.full_like(got, 2.5))


def test_weight_nan_where_snr_is_undefined(device):
    zero = torch.zeros(1, dtype=torch.float64, device=device)
    for weighting, prediction in [("erd", p) for p in PREDICTIONS] + BASELINE_PAIRS:
        assert torch.isnan(loss_weight(zero, zero, prediction, weighting)).all(), (prediction, weighting)
    assert loss_weight(zero, zero, "x0", "constant").item() == 1.0


@pytest.mark.parametrize("prediction,limit,at_infinity", [("eps", 1.0, 0.0), ("x0", 0.0, 2.0), ("v", 0.0, 0.0)])
def test_min_snr_takes_its_limit_at_zero_snr(device, prediction, limit, at_infinity):
    # zero-terminal-SNR schedules: Min-SNR's value as snr -> 0 (diffusers' snr_gamma value for x0 and v), while at
    # snr = inf the formula stands (min(inf, k) = k); the loss sees the same weight
    alpha = torch.tensor([0.0, 1e-7, 0.5, 1.0], dtype=torch.float64, device=device)
    sigma = torch.tensor([1.0, 1.0, 0.8, 0.0], dtype=torch.float64, device=device)
    got = loss_weight(alpha, sigma, prediction, "min_snr", k=2.0)
    assert got[0] == limit and got[3] == at_infinity
    assert abs(float(got[1]) - limit) < 1e-12  # continuous at snr -> 0
    assert_close(got, ref.baseline_weight(alpha.cpu(), sigma.cpu(), prediction, "min_snr", k=2.0))
    output, target = torch.randn(4, 3, device=device), torch.zeros(4, 3, device=device)
    loss = ERDLoss(prediction, "min_snr", k=2.0)(output, target, alpha.float(), sigma.float())
    torch.testing.assert_close(loss.double().cpu(), ref.loss(output.cpu(), target.cpu(), got.cpu()), rtol=1e-6,
                               atol=0)


@pytest.mark.parametrize("diffusers_name,name", [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v"),
                                                 ("flow_prediction", "flow")])
def test_diffusers_prediction_names(device, diffusers_name, name):
    alpha = torch.tensor([0.6, 0.8], device=device)
    sigma = torch.tensor([0.8, 0.6], device=device)
    assert torch.equal(erd_weight(alpha, sigma, diffusers_name), erd_weight(alpha, sigma, name))
    loss_fn = ERDLoss(diffusers_name)
    assert loss_fn.prediction == name
    output, target = torch.randn(2, 5, device=device), torch.randn(2, 5, device=device)
    assert torch.equal(loss_fn(output, target, alpha, sigma), ERDLoss(name)(output, target, alpha, sigma))


def test_weight_nan_propagates(device):
    w = erd_weight(torch.tensor([float("nan"), 0.5], device=device), torch.tensor([0.5, float("nan")],
                                                                                  device=device), "eps")
    assert torch.isnan(w).all()


def test_weight_broadcasts_and_accepts_numbers():
    sigma = torch.linspace(0.1, 0.9, 5)
    w = erd_weight(torch.tensor(1.0), sigma, "eps")
    assert w.shape == (5,)
    assert_close(w, ref.erd_weight(torch.ones(5), sigma, "eps").float(), rtol=1e-6, atol=1e-7)
    grid = erd_weight(torch.rand(3, 4), torch.rand(3, 4) + 0.1, "v")
    assert grid.shape == (3, 4)
    assert math.isclose(float(erd_weight(0.6, 0.8, "eps")), 0.8, rel_tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_weight_keeps_dtype(device, dtype):
    alpha = torch.rand(16, dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    w = erd_weight(alpha.to(device, dtype), sigma.to(device, dtype), "v")
    assert w.dtype == dtype
    expected = ref.erd_weight(alpha.to(dtype), sigma.to(dtype), "v")
    tol = {torch.float16: 1e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-6)
    assert_close(w, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("weighting,prediction", BASELINE_PAIRS + [("constant", p) for p in PREDICTIONS])
@pytest.mark.parametrize("k,gamma", [(5.0, 1.0), (1.0, 0.5)])
def test_baseline_weights_match_reference(device, weighting, prediction, k, gamma):
    g = torch.Generator().manual_seed(1)
    alpha = torch.rand(200, generator=g, dtype=torch.float64) * 2
    sigma = torch.rand(200, generator=g, dtype=torch.float64) * 2
    alpha[:3] = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)  # snr 0, inf, inf
    sigma[:3] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    alpha[100:] = -alpha[100:]  # alpha enters through |alpha| (debias: sigma / |alpha|); float32 cos gives -4e-8
    got = loss_weight(alpha.to(device), sigma.to(device), prediction, weighting, k=k, gamma=gamma)
    assert_close(got, ref.baseline_weight(alpha, sigma, prediction, weighting, k=k, gamma=gamma))


@pytest.mark.parametrize("weighting,prediction", UNDEFINED_PAIRS)
def test_undefined_baseline_raises(weighting, prediction):
    with pytest.raises(ValueError, match="not defined|defined for"):
        loss_weight(torch.rand(3), torch.rand(3), prediction, weighting)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown prediction"):
        erd_weight(torch.rand(3), torch.rand(3), "score")
    with pytest.raises(ValueError, match="unknown weighting"):
        loss_weight(torch.rand(3), torch.rand(3), "eps", "snr")
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        erd_weight(torch.rand(3), -torch.rand(3) - 0.1, "eps")
    with pytest.raises(ValueError, match="flow"):
        erd_weight(torch.rand(3), torch.rand(3), "eps", alpha_prime=torch.ones(3), sigma_prime=torch.ones(3))
    with pytest.raises(ValueError, match="both"):
        erd_weight(torch.rand(3), torch.rand(3), "flow", alpha_prime=torch.ones(3))
    with pytest.raises(ValueError, match=r"alpha \(3,\), sigma \(4,\) must broadcast together"):
        erd_weight(torch.rand(3), torch.rand(4), "eps")
    with pytest.raises(TypeError, match="must be real"):  # not silently the real part
        erd_weight(torch.rand(3, dtype=torch.complex64), torch.rand(3), "eps")


# float64: the kernels' float64 maths against the transcription's, a few ulp apart (libm's hypot, pow; 1.3 ulp at
# most on this grid). float32: the kernels compute in float64 from the float32 alpha and sigma and round once (at
# most 2^-24 relative), and the authors' ERD weights (sigma, alpha, alpha sigma) leave out n = sqrt(alpha^2 +
# sigma^2), 1 on the exact schedule but within 2^-24 of 1 for alpha and sigma rounded to float32: together at most
# 2^-23, float32's eps (on this grid: ERD up to 1.38 * 2^-24, the other weightings within 2^-24).
AUTHORS_RTOL = {torch.float64: 1e-12, torch.float32: torch.finfo(torch.float32).eps}


@pytest.mark.parametrize("prediction,weighting", authors.PAIRS)
@pytest.mark.parametrize("k,gamma", [(5.0, 1.0), (1.0, 0.5), (2.0, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_loss_weight_equals_the_authors_code_on_a_cosine_grid(device, prediction, weighting, k, gamma, dtype):
    """loss_weight against a float64 transcription of the authors' compute_mse_loss_weight (tests/reference/
    erd_authors.py) on 2001 points of the cosine schedule, both ends included: t = 0 is sigma = 0 (infinite SNR),
    t = 1 alpha = 6e-17 (float64 cos(pi / 2)). float32 alpha and sigma are the float64 grid rounded, and the
    transcription reads those same values. Flow takes the default linear-path derivatives, whose ERD weight is the
    authors' 1. Then the same grid with alpha = 0 exactly at t = 1 (a zero-terminal-SNR schedule, or
    ContinuousCosine in float32): equal too, but for Min-SNR x0 and v, which take their limit 0 there on purpose."""
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    alpha = torch.cos(t * (torch.pi / 2)).to(dtype)
    sigma = torch.sin(t * (torch.pi / 2)).to(dtype)
    assert t[0] == 0 and t[-1] == 1 and sigma[0] == 0 and 0 < alpha[-1] < 1e-16
    rtol = AUTHORS_RTOL[dtype]
    got = loss_weight(alpha.to(device), sigma.to(device), prediction, weighting, k=k, gamma=gamma).cpu()
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), authors.authors_weight(alpha, sigma, prediction, weighting, k, gamma),
                               rtol=rtol, atol=0)
    alpha[-1] = 0.0
    got = loss_weight(alpha.to(device), sigma.to(device), prediction, weighting, k=k, gamma=gamma).cpu().double()
    expected = authors.authors_weight(alpha, sigma, prediction, weighting, k, gamma)
    if weighting == "min_snr" and prediction in ("x0", "v"):
        assert expected[-1] == 1 and got[-1] == 0
        expected[-1] = 0.0
    torch.testing.assert_close(got, expected, rtol=rtol, atol=0)


@pytest.mark.parametrize("prediction,weighting", [(p, "erd") for p in PREDICTIONS] + [(p, w) for w, p in BASELINE_PAIRS])
@pytest.mark.parametrize("scale", [1e-170, 1e-160, 1e155, 1e200])
def test_weight_of_float64_alpha_and_sigma_at_extreme_scales(device, prediction, weighting, scale):
    # The SNR depends on alpha / sigma only, so scaling both leaves every weight as it is, except ERD's v weight
    # |alpha| sigma / n, which scales with them; their squares under- or overflow at these scales (they gave NaN).
    alpha = torch.tensor([0.6, 0.8, 0.1, 0.999], dtype=torch.float64)
    sigma = torch.tensor([0.8, 0.6, 0.995, 0.045], dtype=torch.float64)
    if weighting == "erd":
        expected = ref.erd_weight(alpha, sigma, prediction)
    else:
        expected = ref.baseline_weight(alpha, sigma, prediction, weighting)
    if (prediction, weighting) == ("v", "erd"):
        expected = expected * scale
    actual = loss_weight((alpha * scale).to(device), (sigma * scale).to(device), prediction, weighting)
    assert_close(actual, expected, rtol=1e-13, atol=0)


# normal float64 numbers across (nearly) the whole exponent range and 0 (and infinity, for sigma: SNR 0): the SNR
# alpha^2 / sigma^2 of such a pair under- or overflows float64 although it is neither 0 nor infinite (alpha / sigma
# < 1.5e-162 or > 1.3e154)
WIDE_FLOATS = st.one_of(st.just(0.0), st.builds(lambda m, e: m * 10.0**e, st.floats(1.0, 9.99),
                                                st.integers(-307, 300)))
# alpha of either sign: the weights read |alpha| (a float32 cosine schedule gives alpha = -4e-8 at t = 1)
SIGNED_WIDE_FLOATS = st.builds(lambda x, negative: -x if negative else x, WIDE_FLOATS, st.booleans())
FLOW_DERIVATIVES = st.sampled_from([-1.0, 1.0, -2.5, 0.5, 0.0])
WEIGHTINGS = [(p, "erd") for p in PREDICTIONS] + [(p, w) for w, p in BASELINE_PAIRS]


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(SIGNED_WIDE_FLOATS, st.one_of(WIDE_FLOATS, st.just(math.inf)), FLOW_DERIVATIVES,
                               FLOW_DERIVATIVES), min_size=1,
                     max_size=8),
       pair=st.sampled_from(WEIGHTINGS), k=st.sampled_from([5.0, 1e-3, 0.0]),
       gamma=st.sampled_from([1.0, 0.5, 2.5, 0.0]))
# snr = alpha^2 / sigma^2 overflows float64 while Min-SNR v's k / snr is still a subnormal (5e-310, 1.1e-313): the
# random rows rarely land in that window, where k / (snr + 1) of the overflowed snr would give 0
@example(rows=[(1e155, 1.0, -1.0, 1.0), (2e157, 3.0, -1.0, 1.0)], pair=("v", "min_snr"), k=5.0, gamma=1.0)
def test_weight_at_any_float64_scale_matches_the_exact_value(device, rows, pair, k, gamma):
    """Found by an adversarial probe (scripts/probe_erd): the weight was pinned to 1 where snr = alpha^2 / sigma^2
    underflowed float64 (P2 at alpha = 1e-170, sigma = 1 gave 1 for 0.2; ERD x0 1 for 1e-170; debias 1 for 1e170),
    Min-SNR eps was 0 / 0 there, and weights of an overflowed snr (P2: (k + snr)^-gamma) were 0."""
    prediction, weighting = pair
    if weighting == "min_snr" and k == 0.0:
        k = 5.0  # min_snr needs k > 0
    alpha, sigma, ap, sp = (torch.tensor(col, dtype=torch.float64) for col in zip(*rows))
    flow = dict(alpha_prime=ap, sigma_prime=sp) if prediction == "flow" else {}
    got = loss_weight(alpha.to(device), sigma.to(device), prediction, weighting, k=k, gamma=gamma,
                      **{name: v.to(device) for name, v in flow.items()})
    expected = ref.exact_weight(alpha, sigma, prediction, weighting, k, gamma, **flow)
    # a log-domain P2 weight is within ~|gamma log snr| ulp; subnormal results hold a few digits
    assert_close(got, expected, rtol=1e-12, atol=1e-320)


@pytest.mark.parametrize("device", DEVICES)
def test_p2_weight_where_k_plus_snr_overflows(device):
    """k + snr beyond float64 with snr finite: pow(inf, -gamma) gave 0 for a weight of 0.49 (gamma = 1e-3)."""
    alpha, sigma = torch.tensor([1e154, 1e100], dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    got = loss_weight(alpha.to(device), sigma.to(device), "eps", "p2", k=1e308, gamma=1e-3)
    assert_close(got.cpu(), ref.exact_weight(alpha, sigma, "eps", "p2", 1e308, 1e-3), rtol=1e-12, atol=0)


def test_p2_negative_gamma_and_bool_coefficients_are_refused():
    """Found by an adversarial probe (scripts/probe_erd): gamma < 0 gave an infinite loss weight at sigma = 0, and
    bool alpha / sigma were taken as 1.0."""
    with pytest.raises(ValueError, match="p2 needs gamma >= 0, got -1"):
        loss_weight(torch.tensor([1.0]), torch.tensor([0.0]), "eps", "p2", gamma=-1.0)
    with pytest.raises(TypeError, match="got torch.bool"):
        loss_weight(torch.tensor([True]), torch.tensor([True]))
    assert loss_weight(torch.tensor([1.0]), torch.tensor([0.5]), "eps", "p2", gamma=0.0).item() == 1.0
