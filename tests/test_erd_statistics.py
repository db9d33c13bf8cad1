"""ERDLoss per-log-SNR-bin statistics and their moving averages against the float64 reference, on every device
(tests/devices.py; the reference runs on the CPU)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference import erd_reference as ref
from sgdf_erd.diagnostics import logsnr_bin_ids
from sgdf_erd.erd import ERDLoss, erd_loss, schedules

KEYS = ("count", "mse_mean", "mse_var", "loss_mean", "loss_share")


def random_step(seed, batch=64, shape=(3, 6, 6)):
    g = torch.Generator().manual_seed(seed)
    output = torch.randn(batch, *shape, generator=g)
    target = torch.randn(batch, *shape, generator=g) * (1 + torch.rand(batch, 1, 1, 1, generator=g))
    # log-SNR beyond both ends of [-10, 10) too, so the end bins collect the out-of-range samples
    logsnr = torch.rand(batch, generator=g, dtype=torch.float64) * 30 - 15
    alpha = torch.sigmoid(logsnr).sqrt()
    sigma = torch.sigmoid(-logsnr).sqrt()
    return output, target, alpha, sigma


def assert_stats_close(stats, expected, keys=KEYS):
    for key in keys:
        # MSE values are float32, so the variance's absolute accuracy is ~1e-7 of the squared mean
        atol = 1e-6 if key == "mse_var" else 1e-12
        torch.testing.assert_close(stats[key].cpu(), expected[key], rtol=1e-5, atol=atol, equal_nan=True, msg=key)


@pytest.mark.parametrize("prediction,weighting", [("eps", "erd"), ("x0", "min_snr"), ("v", "erd")])
@pytest.mark.parametrize("num_bins,logsnr_range", [(16, (-10.0, 10.0)), (5, (-3.0, 7.0)), (1, (-1.0, 1.0))])
def test_batch_statistics_match_reference(device, prediction, weighting, num_bins, logsnr_range):
    output, target, alpha, sigma = random_step(0)
    loss_fn = ERDLoss(prediction, weighting, num_bins=num_bins, logsnr_range=logsnr_range).to(device)
    loss_fn(*(t.to(device) for t in (output, target, alpha, sigma)))
    w = ref.baseline_weight(alpha, sigma, prediction, weighting)
    expected = ref.batch_statistics(ref.per_sample_mse(output, target), w, alpha, sigma, num_bins, *logsnr_range)
    stats = loss_fn.statistics()
    assert_stats_close(stats, expected)
    assert torch.equal(stats["bin_edges"].cpu(), expected["bin_edges"])
    assert stats["count"].sum() == output.shape[0]
    assert torch.isclose(stats["loss_share"].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_end_bins_take_zero_and_infinite_snr(device):
    output, target, _, _ = random_step(1, batch=4)
    alpha = torch.tensor([0.0, 1.0, 0.6, 1e-9])
    sigma = torch.tensor([1.0, 0.0, 0.8, 1.0])
    _, _, _, sums = erd_loss(*(t.to(device) for t in (output, target, alpha, sigma)), num_bins=4)
    # alpha = 0 (log-SNR -inf) and 1e-9 (about -41) -> bin 0; sigma = 0 (+inf) -> bin 3; log-SNR(0.6, 0.8) -> bin 1
    assert sums[0].tolist() == [2.0, 1.0, 0.0, 1.0]


def test_undefined_logsnr_is_left_out(device):
    output, target, _, _ = random_step(2, batch=3)
    alpha = torch.tensor([0.0, 0.5, float("nan")])
    sigma = torch.tensor([0.0, 0.5, 0.5])
    loss, _, _, sums = erd_loss(*(t.to(device) for t in (output, target, alpha, sigma)), num_bins=4)
    assert torch.isnan(loss)  # NaN weights show in the loss
    assert sums[0].sum() == 1.0 and torch.isfinite(sums).all()


def test_a_negative_alpha_bins_as_its_magnitude(device):
    """The log-SNR is log(alpha^2 / sigma^2), blind to alpha's sign (a float32 cosine schedule gives alpha = -4e-8 at
    t = 1): a sample with alpha < 0 lands in the bin of |alpha|, not out of the statistics."""
    output, target, alpha, sigma = random_step(4)
    alpha[::2] = -alpha[::2]
    loss_fn = ERDLoss("eps", num_bins=8).to(device)
    loss_fn(*(t.to(device) for t in (output, target, alpha, sigma)))
    w = ref.erd_weight(alpha, sigma, "eps")
    expected = ref.batch_statistics(ref.per_sample_mse(output, target), w, alpha, sigma, 8, -10.0, 10.0)
    assert_stats_close(loss_fn.statistics(), expected)
    assert loss_fn.statistics()["count"].sum() == output.shape[0]


def test_a_sample_whose_squared_mse_overflows_is_left_out(device):
    """A finite MSE whose square overflows float64 (1e200) would make its bin's sum of squares, hence its variance,
    infinite: the sample stays out of the statistics, as one with a non-finite MSE does; the loss counts it."""
    output, target, alpha, sigma = (t.double() for t in random_step(3, batch=8))
    output[0] = 1e100
    loss_fn = ERDLoss("eps", num_bins=4).to(device)
    loss = loss_fn(*(t.to(device) for t in (output, target, alpha, sigma)))
    assert torch.isfinite(loss) and loss > 1e190
    keep = torch.arange(8) != 0
    w = ref.erd_weight(alpha, sigma, "eps")
    expected = ref.batch_statistics(ref.per_sample_mse(output, target)[keep], w[keep], alpha[keep], sigma[keep], 4,
                                    -10.0, 10.0)
    assert_stats_close(loss_fn.statistics(), expected)


def test_equal_mses_have_a_variance_of_zero_not_a_negative_round_off(device):
    """sum(mse^2) / n - mean^2 of equal MSEs rounds below 0 (-5.6e-17 for three MSEs of 0.7 on the CPU): the
    population variance is clamped at 0, in the batch's statistics and in the moving averages'."""
    n = 3
    output = torch.full((n, 1), 0.7, dtype=torch.float64).sqrt()
    target = torch.zeros(n, 1, dtype=torch.float64)
    alpha, sigma = torch.full((n,), 0.6, dtype=torch.float64), torch.full((n,), 0.8, dtype=torch.float64)
    loss_fn = ERDLoss(num_bins=1, logsnr_range=(-1.0, 1.0)).to(device)
    loss_fn(*(t.to(device) for t in (output, target, alpha, sigma)))
    for ema in (False, True):
        var = loss_fn.statistics(ema)["mse_var"].item()
        assert 0.0 <= var < 1e-15, (ema, var)


def test_running_statistics_match_reference(device):
    decay = 0.9
    loss_fn = ERDLoss("eps", num_bins=8, ema_decay=decay).to(device)
    history = []
    for step in range(6):
        output, target, alpha, sigma = random_step(10 + step, batch=24 + step)
        if step == 3:  # a step whose samples all fall in one bin: the others' running means must not move
            alpha = torch.full_like(alpha, 0.6)
            sigma = torch.full_like(sigma, 0.8)
        loss_fn(*(t.to(device) for t in (output, target, alpha, sigma)))
        history.append((ref.per_sample_mse(output, target), ref.erd_weight(alpha, sigma, "eps"), alpha, sigma))
        expected = ref.running_statistics(history, decay, 8, -10.0, 10.0)
        assert_stats_close(loss_fn.statistics(ema=True), expected)
    assert int(loss_fn.num_batches_tracked) == 6


def test_empty_bin_keeps_running_mean():
    loss_fn = ERDLoss(num_bins=2, logsnr_range=(-1.0, 1.0), ema_decay=0.5)
    output, target, _, _ = random_step(3, batch=2)
    loss_fn(output, target, torch.tensor([0.1, 0.9]), torch.tensor([0.9, 0.1]))  # one sample per bin
    before = loss_fn.statistics(ema=True)
    loss_fn(output, target, torch.tensor([0.9, 0.9]), torch.tensor([0.1, 0.1]))  # bin 0 empty
    after = loss_fn.statistics(ema=True)
    assert after["mse_mean"][0] == before["mse_mean"][0]
    assert after["count"][0] < before["count"][0]
    assert torch.isnan(loss_fn.statistics()["mse_mean"][0])  # the last step itself had none


def test_statistics_before_any_step_and_reset():
    loss_fn = ERDLoss(num_bins=3)
    for ema in (False, True):
        stats = loss_fn.statistics(ema=ema)
        assert torch.equal(stats["count"], torch.zeros(3, dtype=torch.float64))
        assert torch.isnan(stats["mse_mean"]).all()
    output, target, alpha, sigma = random_step(4, batch=8)
    loss_fn(output, target, alpha, sigma)
    loss_fn.reset_statistics()
    assert int(loss_fn.num_batches_tracked) == 0 and not loss_fn.running_sums.any()


def test_eval_mode_does_not_update():
    loss_fn = ERDLoss().eval()
    output, target, alpha, sigma = random_step(5)
    loss_fn(output, target, alpha, sigma)
    assert int(loss_fn.num_batches_tracked) == 0 and not loss_fn.batch_sums.any()


def test_state_dict_round_trip():
    loss_fn = ERDLoss("v", num_bins=6, ema_decay=0.8)
    for step in range(3):
        loss_fn(*random_step(20 + step))
    state = loss_fn.state_dict()
    assert set(state) == {"batch_sums", "running_sums", "num_batches_tracked"}
    restored = ERDLoss("v", num_bins=6, ema_decay=0.8)
    restored.load_state_dict(state)
    for ema in (False, True):
        a, b = loss_fn.statistics(ema), restored.statistics(ema)
        for key in a:
            assert torch.equal(a[key].nan_to_num(-1), b[key].nan_to_num(-1)), key
    # both continue identically
    step = random_step(30)
    loss_fn(*step)
    restored(*step)
    assert torch.equal(loss_fn.running_sums, restored.running_sums)


def test_statistics_with_discrete_schedule_timesteps():
    schedule = schedules.DiscreteVP.linear()
    t = torch.arange(0, 1000, 8)
    alpha, sigma = schedule.alpha_sigma(t)
    output = torch.randn(len(t), 2, 4)
    loss_fn = ERDLoss(num_bins=10)
    loss_fn(output, torch.randn_like(output), alpha, sigma)
    expected = ref.bin_index(alpha, sigma, 10, -10.0, 10.0).bincount(minlength=10).double()
    assert torch.equal(loss_fn.statistics()["count"], expected)


@pytest.mark.parametrize("num_bins,logsnr_range", [(30, (-10.0, 10.0)), (13, (-12.5, 3.1)), (7, (-7.3, 11.9))])
def test_a_logsnr_on_a_bin_edge_lands_in_the_bin_the_edges_say(num_bins, logsnr_range):
    """Log-SNR values on and a few ulp around every interior edge: the kernel's bin, logsnr_bin_ids and
    ERDLoss.bin_edges agree (edge b <= log-SNR < edge b + 1). CPU only: the log-SNR the kernel bins is computed here
    with the C library's log (math.log), which the CPU kernel calls too."""
    lo, hi = logsnr_range
    edges = [lo + (hi - lo) * b / num_bins for b in range(num_bins + 1)]  # the spec's uniform edges, as doubles
    torch.testing.assert_close(ERDLoss(num_bins=num_bins, logsnr_range=logsnr_range).bin_edges[1:-1],
                               torch.tensor(edges[1:-1], dtype=torch.float64), rtol=0, atol=0)
    alphas = []
    for edge in edges[1:-1]:
        alpha = math.exp(edge / 2)
        for _ in range(4):
            alpha = math.nextafter(alpha, 0.0)
        for _ in range(9):
            alphas.append(alpha)
            alpha = math.nextafter(alpha, math.inf)
    logsnrs = [2 * (math.log(a) - math.log(1.0)) for a in alphas]  # sigma = 1
    expected = [sum(value >= edge for edge in edges[1:-1]) for value in logsnrs]
    alpha = torch.tensor(alphas, dtype=torch.float64)
    zeros = torch.zeros(len(alphas), 1, dtype=torch.float64)
    got = []
    for i in range(len(alphas)):  # one sample per call: its bin is the one counting it
        *_, bin_sums = erd_loss(zeros[i:i + 1], zeros[i:i + 1] + 1, alpha[i:i + 1], torch.ones(1, dtype=torch.float64),
                                num_bins=num_bins, logsnr_range=logsnr_range)
        got.append(int(bin_sums[0].argmax()))
    assert got == expected
    ids = logsnr_bin_ids(torch.tensor(logsnrs, dtype=torch.float64), num_bins, logsnr_range)
    assert ids.tolist() == expected
    assert len(set(expected)) == num_bins  # every bin was reached: values on both sides of every edge


WIDE_FLOATS = st.one_of(st.just(0.0), st.just(math.inf),
                        st.builds(lambda m, e: m * 10.0**e, st.floats(1.0, 9.99), st.integers(-320, 300)))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(WIDE_FLOATS, WIDE_FLOATS), min_size=1, max_size=10))
def test_bins_of_float64_alpha_and_sigma_at_any_scale(pairs):
    """Found by an adversarial probe (scripts/probe_erd): the kernel's log-SNR came from alpha^2 / sigma^2, which is
    0 / 0 at alpha = sigma = 1e-200 (the sample silently left the statistics) and -inf at 1e-200 / 1e200 (-921)."""
    alpha, sigma = (torch.tensor(col, dtype=torch.float64) for col in zip(*pairs))
    num_bins, logsnr_range = 8, (-1600.0, 1600.0)
    logsnr = ref.exact_logsnr(alpha, sigma)
    edges = ref.batch_statistics(torch.ones(1), torch.ones(1), torch.ones(1), torch.ones(1), num_bins,
                                 *logsnr_range)["bin_edges"][1:-1]
    kept = ~logsnr.isnan()
    expected = torch.bincount(torch.searchsorted(edges, logsnr[kept], right=True), minlength=num_bins).double()
    batch = alpha.numel()
    *_, bin_sums = erd_loss(torch.zeros(batch, 2, dtype=torch.float64), torch.ones(batch, 2, dtype=torch.float64),
                            alpha, sigma, "eps", "constant", num_bins=num_bins, logsnr_range=logsnr_range)
    assert torch.equal(bin_sums[0], expected), (logsnr.tolist(), bin_sums[0].tolist())


def test_logsnr_bin_ids_of_nan_and_infinities():
    ids = logsnr_bin_ids(torch.tensor([math.nan, math.inf, -math.inf, 0.0, -10.0, 10.0]), 4, (-10.0, 10.0))
    assert ids.tolist() == [-1, 3, 0, 2, 0, 3]


@pytest.mark.parametrize("cast", [lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.to(torch.float32)],
                         ids=["half", "bfloat16", "to_float32"])
def test_statistics_stay_float64_when_the_module_is_cast(cast):
    """As a submodule of a model converted with model.to(torch.bfloat16) / .half(): the statistics keep their float64
    sums (and values), and training goes on."""
    output, target, alpha, sigma = random_step(0)
    loss_fn = ERDLoss(num_bins=5)
    loss_fn(output, target, alpha, sigma)
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    edges = loss_fn.bin_edges.clone()
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.loss = loss_fn
    cast(model)
    for name, value in loss_fn.state_dict().items():
        assert value.dtype == before[name].dtype and torch.equal(value, before[name]), name
    assert torch.equal(loss_fn.bin_edges, edges)
    loss_fn(output.half(), target.half(), alpha, sigma)
    assert int(loss_fn.num_batches_tracked) == 2 and loss_fn.running_sums.dtype == torch.float64


def test_a_training_call_under_inference_mode_leaves_usable_buffers():
    output, target, alpha, sigma = random_step(1)
    loss_fn = ERDLoss(num_bins=5)
    with torch.inference_mode():
        loss_fn(output, target, alpha, sigma)
    assert not any(b.is_inference() for b in loss_fn.buffers())
    assert loss_fn.statistics()["count"].sum() == output.shape[0]
    loss_fn(output, target, alpha, sigma)  # a later step, outside inference mode
    loss_fn.load_state_dict(ERDLoss(num_bins=5).state_dict())
    loss_fn.reset_statistics()
