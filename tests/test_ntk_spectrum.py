"""sgdf_erd.diagnostics.ntk_spectrum against a brute-force NTK (one autograd backward per sample, no sketch), on
every device (tests/devices.py); the references run on the CPU."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.reference.ntk_reference import (logsnr_bins_reference, per_sample_jacobians, spectrum_statistics_reference)
from sgdf_erd.diagnostics import ntk, ntk_spectrum, spectrum_statistics


def on(device, model, *tensors):
    """A copy of model and the tensors on device (the CPU originals stay for the references)."""
    return (copy.deepcopy(model).to(device),) + tuple(t.to(device) for t in tensors)


def cpu_numpy(t):
    return t.cpu().numpy()


class TinyDenoiser(nn.Module):
    """eps-prediction MLP conditioned on a per-sample log-SNR and an optional shared scale."""

    def __init__(self, dim=2, hidden=16, dtype=torch.float64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim)).to(dtype)
        self.register_buffer("shift", torch.full((dim,), 0.5, dtype=dtype))

    def forward(self, x, logsnr=None, scale=1.0):
        cond = torch.zeros_like(x[:, :1]) if logsnr is None else logsnr[:, None].to(x.dtype) / 10
        return self.net(torch.cat([x - self.shift, cond], dim=1)) * scale


def make_batch(n=40, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=dtype)
    logsnr = torch.rand(n, generator=g, dtype=torch.float64) * 24 - 12  # some outside (-10, 10)
    return x, logsnr


def exact_reference(model, x, logsnr, num_bins, lo, hi, seed, **kwargs):
    jac = per_sample_jacobians(model, x, seed, per_sample_kwargs=kwargs.get("per_sample"),
                               shared_kwargs=kwargs.get("shared"))
    theta = jac @ jac.T
    bins = logsnr_bins_reference(logsnr.numpy(), num_bins, lo, hi)
    spectra = []
    for b in range(num_bins):
        idx = np.flatnonzero(bins == b)
        sub = theta[np.ix_(idx, idx)]
        spectra.append(np.sort(np.linalg.eigvalsh(sub))[::-1] if len(idx) else np.zeros(0))
    return theta, bins, spectra


def test_exact_matches_brute_force_ntk(device):
    torch.manual_seed(0)
    model = TinyDenoiser()
    x, logsnr = make_batch()
    m, xd, ld = on(device, model, x, logsnr)
    out = {k: v.cpu() for k, v in ntk_spectrum(m, xd, ld, num_bins=5, sketch_dim=None, seed=3, logsnr=ld).items()}
    _, bins, spectra = exact_reference(model, x, logsnr, 5, -10.0, 10.0, 3, per_sample={"logsnr": logsnr})
    assert out["count"].tolist() == [len(s) for s in spectra]
    for b, spectrum in enumerate(spectra):
        scale = max(spectrum.max(), 1e-300) if len(spectrum) else 1.0
        got = out["eigenvalues"][b, :len(spectrum)].numpy()
        np.testing.assert_allclose(got, np.clip(spectrum, 0, None), rtol=0, atol=1e-10 * scale)
        trace, top, erank, pr = spectrum_statistics_reference(np.clip(spectrum, 0, None))
        np.testing.assert_allclose(out["trace"][b].item(), trace, rtol=1e-10)
        np.testing.assert_allclose(out["max_eigenvalue"][b].item(), top, rtol=1e-10)
        np.testing.assert_allclose(out["effective_rank"][b].item(), erank, rtol=1e-6)
        np.testing.assert_allclose(out["participation_ratio"][b].item(), pr, rtol=1e-8)
    np.testing.assert_allclose(out["bin_edges"].numpy(), np.linspace(-10, 10, 6))


@pytest.mark.parametrize("sketch_dim", [512, 4096])
def test_sketch_within_expected_error(sketch_dim):
    # Gaussian sketch: Var[(JS S^T J^T)_ij] = (K_ii K_jj + K_ij^2) / r, so the relative Frobenius error of each
    # bin's kernel is about sqrt((tr(K)^2 / ||K||_F^2 + 1) / r); eigenvalue errors are bounded by it (Weyl).
    torch.manual_seed(1)
    model = TinyDenoiser(hidden=12)
    x, logsnr = make_batch(n=36, seed=1)
    out = ntk_spectrum(model, x, logsnr, num_bins=3, sketch_dim=sketch_dim, seed=5, logsnr=logsnr)
    theta, bins, spectra = exact_reference(model, x, logsnr, 3, -10.0, 10.0, 5, per_sample={"logsnr": logsnr})
    for b, spectrum in enumerate(spectra):
        if not len(spectrum):
            continue
        idx = np.flatnonzero(bins == b)
        k_b = theta[np.ix_(idx, idx)]
        expected = math.sqrt((np.trace(k_b) ** 2 / (k_b**2).sum() + 1) / sketch_dim) * np.linalg.norm(k_b)
        got = out["eigenvalues"][b, :len(spectrum)].numpy()
        assert np.abs(got - spectrum).max() <= 4 * expected
        assert abs(out["trace"][b].item() - np.trace(k_b)) <= 4 * expected * math.sqrt(len(idx))


def test_sketch_is_unbiased_over_seeds():
    torch.manual_seed(2)
    model = TinyDenoiser(hidden=8)
    x, logsnr = make_batch(n=12, seed=2)
    traces = torch.stack([ntk_spectrum(model, x, logsnr, num_bins=1, sketch_dim=16, seed=s)["trace"][0]
                          for s in range(40)])
    # u changes with the seed as well, so compare with the exact trace under each seed's u
    exact = torch.tensor([np.square(per_sample_jacobians(model, x, s)).sum() for s in range(40)])
    rel = (traces.double().mean() - exact.mean()) / exact.mean()
    # per-seed relative sd of a trace estimate is <= sqrt(2/16); 40 seeds -> sd of the mean <= 0.056
    assert abs(rel.item()) < 0.2


def test_per_sample_and_shared_kwargs_and_chunking(device):
    torch.manual_seed(3)
    model = TinyDenoiser()
    x, logsnr = make_batch(n=25, seed=3)
    m, xd, ld = on(device, model, x, logsnr)
    results = [ntk_spectrum(m, xd, ld, num_bins=4, sketch_dim=None, seed=1, chunk_size=c, logsnr=ld, scale=0.5)
               for c in (1, 7, None)]
    _, _, spectra = exact_reference(model, x, logsnr, 4, -10.0, 10.0, 1, per_sample={"logsnr": logsnr},
                                    shared={"scale": 0.5})
    for res in results:
        for b, spectrum in enumerate(spectra):
            got = cpu_numpy(res["eigenvalues"][b, :len(spectrum)])
            np.testing.assert_allclose(got, np.clip(spectrum, 0, None), rtol=0,
                                       atol=1e-10 * max(spectrum.max(initial=0), 1e-300))


def test_binning_rule_and_range(device):
    model = TinyDenoiser(dtype=torch.float32).to(device)
    logsnr = torch.tensor([-50.0, -3.0, -2.0, -1.0 + 1e-9, 0.0, 0.999, 1.0, 2.5, 3.0, 50.0], dtype=torch.float64)
    x = torch.randn(len(logsnr), 2, device=device)
    out = ntk_spectrum(model, x, logsnr.to(device), num_bins=6, logsnr_range=(-3.0, 3.0), sketch_dim=8)
    bins = logsnr_bins_reference(logsnr.numpy(), 6, -3.0, 3.0)
    assert out["count"].tolist() == np.bincount(bins, minlength=6).tolist()
    assert ntk.logsnr_bin_ids(logsnr, 6, (-3.0, 3.0)).tolist() == bins.tolist()
    np.testing.assert_allclose(cpu_numpy(out["bin_edges"]), np.linspace(-3, 3, 7), rtol=1e-6)
    scalar = ntk_spectrum(model, x, 9.5, num_bins=4, sketch_dim=8)  # one log-SNR for all -> last bin
    assert scalar["count"].tolist() == [0, 0, 0, len(logsnr)]


def test_seeded_reproducibility(device):
    model = TinyDenoiser(dtype=torch.float32).to(device)
    x, logsnr = (t.to(device) for t in make_batch(n=20, dtype=torch.float32))
    a = ntk_spectrum(model, x, logsnr, num_bins=2, sketch_dim=32, seed=7)
    b = ntk_spectrum(model, x, logsnr, num_bins=2, sketch_dim=32, seed=7)
    c = ntk_spectrum(model, x, logsnr, num_bins=2, sketch_dim=32, seed=8)
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["eigenvalues"], c["eigenvalues"])
    assert a["eigenvalues"].dtype == torch.float32


def test_block_regenerated_sketch_equals_cached(monkeypatch):
    # big models regenerate the sketch per chunk in blocks; the numbers must not depend on caching or chunking
    model = TinyDenoiser(hidden=10)
    x, logsnr = make_batch(n=18, seed=4)
    monkeypatch.setattr(ntk, "_SKETCH_BLOCK_ENTRIES", 16 * 64)  # 16 rows per block: many blocks per tensor
    cached = ntk_spectrum(model, x, logsnr, num_bins=2, sketch_dim=64, chunk_size=5)
    monkeypatch.setattr(ntk, "_SKETCH_CACHE_BYTES", 0)
    regenerated = ntk_spectrum(model, x, logsnr, num_bins=2, sketch_dim=64, chunk_size=4)
    torch.testing.assert_close(cached["eigenvalues"], regenerated["eigenvalues"], rtol=1e-12, atol=1e-12)


def test_frozen_parameters_are_excluded():
    torch.manual_seed(4)
    model = TinyDenoiser()
    x, logsnr = make_batch(n=10, seed=5)
    for p in model.net[0].parameters():
        p.requires_grad_(False)
    out = ntk_spectrum(model, x, logsnr, num_bins=1, sketch_dim=None, seed=0)
    jac = per_sample_jacobians(model, x, 0)  # the reference also differentiates only requires_grad params
    expected = np.sort(np.linalg.eigvalsh(jac @ jac.T))[::-1]
    np.testing.assert_allclose(out["eigenvalues"][0].numpy(), np.clip(expected, 0, None), atol=1e-10 * expected[0])


def test_empty_batch(device):
    model = TinyDenoiser().to(device)
    out = ntk_spectrum(model, torch.zeros(0, 2, dtype=torch.float64, device=device), torch.zeros(0, device=device),
                       num_bins=3)
    assert out["count"].tolist() == [0, 0, 0] and out["eigenvalues"].shape == (3, 0)
    for key in ("trace", "max_eigenvalue", "effective_rank", "participation_ratio"):
        assert torch.all(out[key] == 0)


def test_spectrum_statistics_known_values():
    eig = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]],
                       dtype=torch.float64)
    counts = torch.tensor([4, 1, 0, 3])
    s = spectrum_statistics(eig, counts)
    torch.testing.assert_close(s["effective_rank"], torch.tensor(
        [4.0, 1.0, 0.0, math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))], dtype=torch.float64))
    torch.testing.assert_close(s["participation_ratio"], torch.tensor([4.0, 1.0, 0.0, 1.6], dtype=torch.float64))
    torch.testing.assert_close(s["trace"], torch.tensor([4.0, 2.0, 0.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(s["max_eigenvalue"], torch.tensor([1.0, 2.0, 0.0, 3.0], dtype=torch.float64))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(model=lambda x: x), TypeError, "nn.Module"),
    (dict(logsnr=torch.zeros(3)), ValueError, r"shape \[n\]"),
    (dict(logsnr=torch.tensor([0.0, float("inf"), 0.0, 0.0])), ValueError, "non-finite"),
    (dict(num_bins=0), ValueError, "num_bins"),
    (dict(num_bins=2**62), ValueError, r"num_bins.*2\*\*24"),
    (dict(num_bins=True), ValueError, "num_bins"),
    (dict(logsnr_range=(1.0,)), ValueError, "logsnr_range"),
    (dict(logsnr_range=(1.0, -1.0)), ValueError, "logsnr_range"),
    (dict(sketch_dim=0), ValueError, "sketch_dim"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(logsnr=torch.zeros(4, dtype=torch.complex64)), TypeError, "real numbers"),
    (dict(logsnr=torch.zeros(4, dtype=torch.bool)), TypeError, "real numbers"),
    (dict(logsnr=True), TypeError, "real number"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(model=TinyDenoiser(), inputs=torch.randn(4, 2, dtype=torch.float64), logsnr=torch.zeros(4))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ntk_spectrum(args.pop("model"), args.pop("inputs"), args.pop("logsnr"), **args)


def test_model_without_trainable_parameters():
    model = TinyDenoiser().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters"):
        ntk_spectrum(model, torch.randn(3, 2, dtype=torch.float64), torch.zeros(3))


class NormedDenoiser(nn.Module):
    """With batch norm and dropout: train mode would update running statistics (and fail on one sample)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.SiLU(), nn.Dropout(0.5), nn.Linear(8, 2))
        self.net.double()

    def forward(self, x):
        return self.net(x)


def test_train_mode_model_runs_in_eval_mode_and_is_left_as_it_was(device):
    torch.manual_seed(7)
    model = NormedDenoiser()
    model(torch.randn(64, 2, dtype=torch.float64))  # non-trivial running statistics
    model.net[3].eval()  # mixed training flags must come back as they were
    model, x, logsnr = on(device, model, *make_batch(n=16, seed=7))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    out = ntk_spectrum(model, x, logsnr, num_bins=2, sketch_dim=None)
    assert [m.training for m in model.modules()] == flags
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    expected = ntk_spectrum(copy.deepcopy(model).eval(), x, logsnr, num_bins=2, sketch_dim=None)
    for key in out:
        assert torch.equal(out[key], expected[key]), key
    # a failing call restores the flags too
    with pytest.raises(ValueError, match="one tensor"):
        ntk_spectrum(nn.Sequential(model, nn.Flatten(0)), x, logsnr, num_bins=2)
    assert [m.training for m in model.modules()] == flags


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_device_matches_cpu_exact(device, dtype):
    torch.manual_seed(6)
    model = TinyDenoiser(dtype=dtype)
    x, logsnr = make_batch(n=30, seed=6, dtype=dtype)
    cpu = ntk_spectrum(model, x, logsnr, num_bins=3, sketch_dim=None, logsnr=logsnr)
    m, xd, ld = on(device, model, x, logsnr)
    got = ntk_spectrum(m, xd, ld, num_bins=3, sketch_dim=None, logsnr=ld)
    rtol = 1e-9 if dtype == torch.float64 else 1e-4
    for key in cpu:
        assert got[key].device == xd.device
        torch.testing.assert_close(got[key].cpu(), cpu[key], rtol=rtol, atol=rtol * cpu["trace"].max().item())


class SideEffectDenoiser(nn.Module):
    """A forward with the side effects models have: an EMA buffer updated out of place (reassigned), a parameter
    edited through .data in place and one whose .data is replaced; optionally a failure after them (``fail``:
    "count" a call counter updated in place, which torch.func refuses under the per-sample gradients after the
    probe counted; "raise"; "bad_output" a wrong output)."""

    def __init__(self, fail=None):
        super().__init__()
        self.lin = nn.Linear(2, 2).double()
        self.scale = nn.Parameter(torch.ones(2, dtype=torch.float64))
        self.register_buffer("ema", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.fail = fail

    def forward(self, x):
        self.ema = 0.9 * self.ema + 0.1 * x.detach().mean(0)
        if self.fail == "count":
            self.calls += 1
        self.lin.bias.data.add_(1.0)
        self.scale.data = torch.full((3,), 7.0, dtype=torch.float64)
        out = self.lin(x) * 2.0
        if self.fail == "raise":
            raise KeyError("model failure")
        return out.flatten() if self.fail == "bad_output" else out


def model_state(model):
    """Everything ntk_spectrum must put back: objects registered, their bits, memory and flags."""
    return ([(m.training, dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()],
            [(t, t.data_ptr(), t.shape, t.requires_grad, t.detach().clone()) for t in
             list(model.parameters()) + list(model.buffers())])


def assert_state_unchanged(model, before):
    registered, tensors = model_state(model)
    for (training, params, buffers, modules), (training0, params0, buffers0, modules0) in zip(registered, before[0]):
        assert training == training0
        for now, then in ((params, params0), (buffers, buffers0), (modules, modules0)):
            assert now.keys() == then.keys() and all(now[k] is then[k] for k in then)
    for (t, ptr, shape, requires_grad, values), (t0, ptr0, shape0, requires_grad0, values0) in zip(tensors, before[1]):
        assert t is t0 and ptr == ptr0 and shape == shape0 and requires_grad == requires_grad0
        assert torch.equal(values, values0)


@pytest.mark.parametrize("fail", [None, "count", "raise", "bad_output"])
def test_model_side_effects_are_undone(fail):
    """Buffers reassigned out of place (an EMA), counters, .data edits and replacements: all undone, whether the
    call returns or raises (the probe runs the real model first)."""
    torch.manual_seed(0)
    model = SideEffectDenoiser(fail=fail).train()
    model.lin.requires_grad_(True)
    x, logsnr = torch.randn(6, 2, dtype=torch.float64), torch.linspace(-3, 3, 6)
    before = model_state(model)
    if fail is None:
        # the scale parameter's .data is replaced by a 3-vector: it is no longer used by the NTK (not requires_grad)
        model.scale.requires_grad_(False)
        before = model_state(model)
        ntk_spectrum(model, x, logsnr, num_bins=2, sketch_dim=None)
    else:
        with pytest.raises({"count": RuntimeError, "raise": KeyError, "bad_output": ValueError}[fail]):
            ntk_spectrum(model, x, logsnr, num_bins=2, sketch_dim=None)
    assert_state_unchanged(model, before)
    assert int(model.calls) == 0 and not model.ema.any() and model.training


def test_requires_grad_flag_changed_by_the_forward_is_put_back():
    class Freezing(TinyDenoiser):
        def forward(self, x):
            out = super().forward(x)
            self.shift.requires_grad_(True)  # a buffer made to require grad: torch.func refuses it after the probe
            return out

    model = Freezing()
    before = model_state(model)
    with pytest.raises(RuntimeError, match="requires_grad_"):
        ntk_spectrum(model, *make_batch(n=4), num_bins=1)
    assert_state_unchanged(model, before)
    assert not model.shift.requires_grad


def test_overlapping_calls_on_one_model_are_refused():
    """A model is held by one ntk_spectrum call at a time: a call from its own forward, or from another thread while
    one runs, raises RuntimeError and changes nothing; the running call completes and restores the model."""
    import threading

    class Reentrant(TinyDenoiser):
        def forward(self, x, logsnr=None):
            if self.inner is not None:
                inner, self.inner = self.inner, None
                inner()
            return super().forward(x, logsnr)

    model = Reentrant()
    model.train()
    x, logsnr = make_batch(n=4)
    errors = []

    def call_again():
        try:
            ntk_spectrum(model, x, logsnr, num_bins=1)
        except RuntimeError as err:
            errors.append(err)

    model.inner = call_again
    before = model_state(model)
    ntk_spectrum(model, x, logsnr, num_bins=1)
    assert len(errors) == 1 and "another ntk_spectrum call is running on this model" in str(errors[0])
    assert_state_unchanged(model, before)
    assert model.training

    # another thread, while the first call is inside the model; a submodule overlaps too
    started, release = threading.Event(), threading.Event()

    def wait_inside():
        started.set()
        assert release.wait(30)

    model.inner = wait_inside
    first = threading.Thread(target=lambda: ntk_spectrum(model, x, logsnr, num_bins=1))
    first.start()
    assert started.wait(30)
    for target in (model, model.net):
        with pytest.raises(RuntimeError, match="another ntk_spectrum call"):
            ntk_spectrum(target, x, logsnr, num_bins=1) if target is model else \
                ntk_spectrum(target, torch.randn(4, 3, dtype=torch.float64), logsnr, num_bins=1)
    release.set()
    first.join(30)
    assert not first.is_alive() and model.training
    assert_state_unchanged(model, before)
    ntk_spectrum(model, x, logsnr, num_bins=1)  # free again


def test_spectrum_statistics_of_eigenvalues_near_float32_max():
    """The ratios do not overflow where the eigenvalues' squares (or sum) would in float32 (an adversarial probe
    found NaN and a wrong effective rank); against the float64 reference."""
    for row in ([1e20, 1e19, 0.0], [3e38, 1e38, 0.0]):
        got = spectrum_statistics(torch.tensor([row]), torch.tensor([3]))
        _, _, erank, pr = spectrum_statistics_reference(np.array(row, dtype=np.float64))
        assert got["effective_rank"].item() == pytest.approx(erank, rel=1e-5)
        assert got["participation_ratio"].item() == pytest.approx(pr, rel=1e-5)


@pytest.mark.parametrize("num_bins,logsnr_range,error,match", [
    (4, (1.0, -1.0), ValueError, "min < max"),
    (0, (-1.0, 1.0), ValueError, "'num_bins'"),
    (4, (-1e308, 1e308), ValueError, "max - min finite"),
])
def test_logsnr_bin_ids_checks_its_bins(num_bins, logsnr_range, error, match):
    """(it binned a reversed range, and any values with num_bins=0, without a word; a range whose width overflows
    gave NaN edges, in erd_loss too)"""
    with pytest.raises(error, match=f"logsnr_bin_ids: .*{match}"):
        ntk.logsnr_bin_ids(torch.tensor([-0.9, 0.0, 0.9]), num_bins, logsnr_range)
    with pytest.raises(TypeError, match="'logsnr' must be a tensor"):
        ntk.logsnr_bin_ids([0.0], 4, (-1.0, 1.0))


def test_more_bins_than_the_loss_statistics_allow():
    """ntk_spectrum takes up to 2**24 bins; it binned its samples through logsnr_bin_ids, whose check (the loss
    statistics' 2**16) refused 70000 after the model had been run. Bins as the reference's uniform edges say."""
    logsnr = torch.tensor([-9.9, 0.0, 0.00001, 9.9])
    out = ntk_spectrum(TinyDenoiser(), torch.randn(4, 2, dtype=torch.float64), logsnr, num_bins=70000,
                       sketch_dim=None)
    edges = torch.linspace(-10.0, 10.0, 70001, dtype=torch.float64)
    expected = torch.bincount(torch.searchsorted(edges[1:-1], logsnr.double(), right=True), minlength=70000)
    assert torch.equal(out["count"].cpu().long(), expected)
