"""The adversarial contract of the ERD and NTK entry points: every bad or edge input below raises the named
exception with a message that says what is wrong, and leaves everything it was given bit-identical (the loss
module's running statistics and step count, the model's parameters, buffers and training flags, the inputs)."""

import math

import pytest
import torch
from torch import nn

from sgdf_erd._native import ops
from sgdf_erd.diagnostics import ntk_spectrum
from sgdf_erd.erd import ERDLoss, erd_loss, erd_weight, loss_weight, schedules
from sgdf_erd.ops import binned_gram_eigvalsh

# The allocator's reason reaches a stable-ABI kernel from torch 2.13 on (the shim's torch_exception_get_what*);
# with torch 2.11 and 2.12 the kernel learns only which call failed.
class NormedModel(nn.Module):
    """Batch norm over a spatial map: in train mode one sample updates its running statistics."""

    def __init__(self, bad_output=False):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.norm = nn.BatchNorm2d(2)
        self.bad_output = bad_output

    def forward(self, x):
        out = self.norm(self.conv(x)).flatten(1)
        return out.flatten() if self.bad_output else out


def make_env():
    """Fresh inputs, and a loss module and model that have state worth protecting."""
    g = torch.Generator().manual_seed(0)
    output, target = torch.randn(4, 3, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    t = torch.rand(4, generator=g) * 0.9 + 0.05
    alpha, sigma = schedules.ContinuousCosine().alpha_sigma(t)
    loss_fn = ERDLoss(num_bins=8)
    loss_fn(output, target, alpha, sigma)  # non-zero running statistics
    model = NormedModel()
    model(torch.randn(8, 1, 4, 4, generator=g))  # non-trivial running statistics; stays in train mode
    bad_model = NormedModel(bad_output=True)
    bad_model.load_state_dict(model.state_dict())
    frozen_model = NormedModel().requires_grad_(False)
    return dict(output=output, target=target, alpha=alpha, sigma=sigma, t=t, loss_fn=loss_fn, model=model,
                bad_model=bad_model, frozen_model=frozen_model, x=torch.randn(6, 1, 4, 4, generator=g),
                logsnr=torch.linspace(-5, 5, 6),
                features=torch.randn(10, 4, generator=g), bin_ids=torch.arange(10) % 3)


def snapshot(env):
    """Bytes of every tensor reachable from env (module state and training flags included)."""
    state = {}
    for name, value in env.items():
        if isinstance(value, nn.Module):
            for key, t in value.state_dict(keep_vars=True).items():
                state[f"{name}.{key}"] = t.detach().clone()
            state[f"{name}.training"] = [m.training for m in value.modules()]
        elif isinstance(value, torch.Tensor) and value.device.type != "meta":
            state[name] = value.detach().clone()
    return state


def assert_bit_identical(before, after):
    assert before.keys() == after.keys()
    for key, a in before.items():
        b = after[key]
        if isinstance(a, list):
            assert a == b, key
        else:
            assert a.dtype == b.dtype and a.shape == b.shape, key
            assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), key


def call_loss(e, **changes):
    args = dict(output=e["output"], target=e["target"], alpha=e["alpha"], sigma=e["sigma"])
    args.update(changes)
    return e["loss_fn"](**args)


def call_erd_loss(e, **kwargs):
    return erd_loss(e["output"], e["target"], e["alpha"], e["sigma"], **kwargs)


def raw_forward(e, **changes):
    args = dict(output=e["output"], target=e["target"], alpha=e["alpha"], sigma=e["sigma"], alpha_prime=None,
                sigma_prime=None, weights=None, prediction="eps", weighting="erd", k=5.0, gamma=1.0, num_bins=8,
                logsnr_min=-10.0, logsnr_max=10.0)
    args.update(changes)
    return ops.erd_loss_forward(*args.values())


CASES = [
    # ERDLoss.forward
    ("loss_target_shape", lambda e: call_loss(e, target=e["target"][:, :2]), ValueError, "must match exactly"),
    ("loss_alpha_shape", lambda e: call_loss(e, alpha=e["alpha"][:3]), ValueError, r"'alpha' must have shape \[4\]"),
    ("loss_alpha_2d", lambda e: call_loss(e, alpha=e["alpha"][:, None]), ValueError, "'alpha' must have shape"),
    ("loss_alpha_int", lambda e: call_loss(e, alpha=e["alpha"].long()), TypeError, "'alpha' must be a floating"),
    ("loss_sigma_negative", lambda e: call_loss(e, sigma=-e["sigma"]), ValueError, "sigma must be >= 0"),
    ("loss_alpha_meta", lambda e: call_loss(e, alpha=e["alpha"].to("meta")), ValueError, "'alpha' is on meta"),
    ("loss_sigma_meta", lambda e: call_loss(e, sigma=e["sigma"].to("meta")), ValueError, "'sigma' is on meta"),
    ("loss_target_meta", lambda e: call_loss(e, target=e["target"].to("meta")), ValueError, "meta"),
    ("loss_output_meta", lambda e: call_loss(e, output=e["output"].to("meta")), RuntimeError,
     "device type 'meta' has no sgdf_erd kernels"),
    ("loss_output_int", lambda e: call_loss(e, output=e["output"].long(), target=e["target"].long()), TypeError,
     "floating point"),
    ("loss_output_complex", lambda e: call_loss(e, output=e["output"].cfloat(), target=e["target"].cfloat()),
     TypeError, "floating point"),
    ("loss_output_0d", lambda e: call_loss(e, output=e["output"][0, 0, 0], target=e["target"][0, 0, 0]),
     ValueError, "batch dimension"),
    ("loss_empty_samples", lambda e: call_loss(e, output=e["output"][:, :0], target=e["target"][:, :0]),
     ValueError, "empty"),
    ("loss_derivatives_not_flow", lambda e: call_loss(e, alpha_prime=-torch.ones(4), sigma_prime=torch.ones(4)),
     ValueError, "'flow' only"),
    ("loss_one_derivative", lambda e: ERDLoss("flow")(e["output"], e["target"], e["alpha"], e["sigma"],
                                                      -torch.ones(4)), ValueError, "both"),
    ("loss_callable_bad_shape", lambda e: ERDLoss("eps", lambda a, s: a[:2])(e["output"], e["target"], e["alpha"],
                                                                             e["sigma"]),
     ValueError, "one weight per sample"),
    # an expanded view is copied in full: 2**46 float32 elements (256 TiB) are beyond any address space
    ("loss_output_expanded_beyond_memory", lambda e: call_loss(e, output=torch.zeros(1, 1).expand(4, 2**44),
                                                               target=torch.zeros(1, 1).expand(4, 2**44)),
     RuntimeError, r"'output' \[4, 17592186044416\] \(strides \[0, 0\]\) is not contiguous, so the kernel reads a "
     # (the allocator's reason reaches the kernel only with torch >= 2.13 at run time and a build against its headers;
     # otherwise the shim says only that the call failed)
     r"contiguous copy of it, 70368744177664 elements .* failed: .*(allocate|API call failed)"),
    ("loss_timesteps_str", lambda e: ERDLoss(schedule=schedules.DiscreteVP.linear(100))(e["output"], e["target"],
                                                                                         timesteps="10"),
     TypeError, "DiscreteVP: timesteps must be a tensor"),
    ("loss_timesteps_bool", lambda e: ERDLoss(schedule=schedules.DiscreteVP.linear(100))(
        e["output"], e["target"], timesteps=torch.ones(4, dtype=torch.bool)), TypeError, "integer timesteps"),
    # ERDLoss constructor
    ("module_num_bins_huge", lambda e: ERDLoss(num_bins=2**62), ValueError, r"'num_bins' must lie in \[1, 65536\]"),
    ("module_num_bins_zero", lambda e: ERDLoss(num_bins=0), ValueError, "'num_bins' must lie in"),
    ("module_num_bins_bool", lambda e: ERDLoss(num_bins=True), TypeError, "'num_bins' must be an int"),
    ("module_num_bins_float", lambda e: ERDLoss(num_bins=8.0), TypeError, "'num_bins' must be an int"),
    ("module_logsnr_range_one", lambda e: ERDLoss(logsnr_range=(1.0,)), ValueError, "'logsnr_range' must be two"),
    ("module_logsnr_range_nan", lambda e: ERDLoss(logsnr_range=(0.0, float("nan"))), ValueError, "finite"),
    ("module_prediction", lambda e: ERDLoss("score"), ValueError, "unknown prediction"),
    ("module_pair", lambda e: ERDLoss("v", "p2"), ValueError, "defined for prediction eps only"),
    ("module_ema_decay", lambda e: ERDLoss(ema_decay=1.5), ValueError, "ema_decay"),
    ("module_min_snr_k", lambda e: ERDLoss(weighting="min_snr", k=0.0), ValueError, "k > 0"),
    # erd_loss
    ("erd_loss_num_bins_huge", lambda e: call_erd_loss(e, num_bins=2**62), ValueError, "'num_bins' must lie in"),
    ("erd_loss_num_bins_bool", lambda e: call_erd_loss(e, num_bins=False), TypeError, "'num_bins' must be an int"),
    ("erd_loss_logsnr_range_one", lambda e: call_erd_loss(e, logsnr_range=(3.0,)), ValueError,
     "'logsnr_range' must be two"),
    ("erd_loss_logsnr_range_empty", lambda e: call_erd_loss(e, logsnr_range=(3.0, 3.0)), ValueError, "min < max"),
    ("erd_loss_k_nan", lambda e: call_erd_loss(e, weighting="min_snr", k=float("nan")), ValueError, "finite"),
    ("erd_loss_not_tensors", lambda e: erd_loss([1.0], e["target"], e["alpha"], e["sigma"]), TypeError, "tensors"),
    # the raw ops validate on their own
    ("op_num_bins_huge", lambda e: raw_forward(e, num_bins=2**62), ValueError, r"num_bins must lie in \[1, 65536\]"),
    ("op_num_bins_zero", lambda e: raw_forward(e, num_bins=0), ValueError, "num_bins must lie in"),
    ("op_weights_not_given", lambda e: raw_forward(e, weights=torch.ones(4)), ValueError, "must be 'given'"),
    ("op_given_without_weights", lambda e: raw_forward(e, weighting="given"), ValueError, "needs the 'weights'"),
    ("op_weights_meta", lambda e: raw_forward(e, weights=torch.ones(4, device="meta"), weighting="given"),
     ValueError, "'weights' is on meta"),
    ("op_backward_weight_meta", lambda e: ops.erd_loss_backward(torch.tensor(1.0), e["output"], e["target"],
                                                                torch.ones(4, device="meta"), False),
     ValueError, "'weight' is on meta"),
    ("op_weights_alpha_meta", lambda e: ops.erd_weights(e["alpha"].to("meta"), e["sigma"], None, None, "eps", "erd",
                                                        5.0, 1.0), ValueError, "meta"),
    # erd_weight / loss_weight
    ("weight_complex", lambda e: erd_weight(e["alpha"].cfloat(), e["sigma"]), TypeError, "must be real"),
    ("weight_complex_sigma", lambda e: erd_weight(e["alpha"], e["sigma"].to(torch.complex128), "v"), TypeError,
     "must be real"),
    ("weight_prediction", lambda e: erd_weight(e["alpha"], e["sigma"], "score"), ValueError, "unknown prediction"),
    ("weight_sigma_negative", lambda e: erd_weight(e["alpha"], -e["sigma"]), ValueError, "sigma must be >= 0"),
    ("weight_pair", lambda e: loss_weight(e["alpha"], e["sigma"], "flow", "min_snr"), ValueError, "defined for"),
    ("weight_one_derivative", lambda e: erd_weight(e["alpha"], e["sigma"], "flow", alpha_prime=e["alpha"]),
     ValueError, "both"),
    # schedules
    ("cosine_t_negative", lambda e: schedules.ContinuousCosine()(e["t"] - 1), ValueError, r"t must lie in \[0, 1\]"),
    ("cosine_t_above_one", lambda e: schedules.ContinuousCosine().alpha_sigma(e["t"] + 1), ValueError,
     r"t must lie in \[0, 1\]"),
    ("logsnr_t_outside", lambda e: schedules.LinearLogSNR().logsnr(torch.tensor([2.0])), ValueError, r"\[0, 1\]"),
    ("flow_t_outside", lambda e: schedules.LinearFlow().derivatives(torch.tensor([-0.5])), ValueError, r"\[0, 1\]"),
    ("flow_t_int", lambda e: schedules.LinearFlow()(torch.tensor([0, 1])), TypeError, "floating point"),
    ("logsnr_schedule_order", lambda e: schedules.LinearLogSNR(-5.0, 5.0), ValueError, "logsnr_min < logsnr_max"),
    ("vp_linear_tiny", lambda e: schedules.DiscreteVP.linear(1), ValueError, "'num_steps' must be >= 2"),
    ("vp_linear_small", lambda e: schedules.DiscreteVP.linear(10), ValueError, "num_steps >= 20"),
    ("vp_linear_zero", lambda e: schedules.DiscreteVP.linear(0), ValueError, "num_steps"),
    ("vp_cosine_float", lambda e: schedules.DiscreteVP.cosine(100.0), TypeError, "'num_steps' must be an int"),
    ("vp_timestep_range", lambda e: schedules.DiscreteVP.linear(100)(torch.tensor([100])), ValueError,
     r"timesteps must lie in \[0, 100\)"),
    ("vp_float_timesteps", lambda e: schedules.DiscreteVP.linear(100)(e["t"]), TypeError, "integer"),
    ("flow_match_nan_and_outside", lambda e: schedules.FlowMatchTimesteps(1000)(torch.tensor([float("nan"), 1e4])),
     ValueError, r"got values in \[10000.0, 10000.0\] outside it"),
    ("noisy_0d", lambda e: schedules.make_noisy(e["output"][0, 0, 0], e["target"][0, 0, 0], 0.6, 0.8), ValueError,
     "batch dimension"),
    ("noisy_shapes", lambda e: schedules.make_noisy(e["output"], e["target"][:2], e["alpha"], e["sigma"]),
     ValueError, "one shape"),
    ("noisy_alpha_shape", lambda e: schedules.make_noisy(e["output"], e["target"], e["alpha"][:2], e["sigma"]),
     ValueError, "alpha must be a scalar or have shape"),
    ("target_0d", lambda e: schedules.make_target(e["output"][0, 0, 0], e["target"][0, 0, 0], 0.6, 0.8, "x0"),
     ValueError, "batch dimension"),
    ("target_prediction", lambda e: schedules.make_target(e["output"], e["target"], e["alpha"], e["sigma"], "score"),
     ValueError, "unknown prediction"),
    # binned_gram_eigvalsh
    ("gram_num_bins_huge", lambda e: binned_gram_eigvalsh(e["features"], e["bin_ids"], 2**62), ValueError,
     r"'num_bins' must lie in \[1, 2\*\*24\]"),
    ("gram_num_bins_bool", lambda e: binned_gram_eigvalsh(e["features"], e["bin_ids"], True), TypeError,
     "'num_bins' must be an int"),
    ("gram_op_num_bins_huge", lambda e: ops.binned_gram_eigvalsh(e["features"], e["bin_ids"], 2**62), ValueError,
     r"'num_bins' must lie in \[1, 16777216\]"),
    ("gram_ids_range", lambda e: binned_gram_eigvalsh(e["features"], e["bin_ids"] + 1, 3), ValueError,
     r"must lie in \[0, num_bins\)"),
    ("gram_ids_meta", lambda e: ops.binned_gram_eigvalsh(e["features"], e["bin_ids"].to("meta"), 3), ValueError,
     "move them to one device"),
    ("gram_features_meta", lambda e: ops.binned_gram_eigvalsh(e["features"].to("meta"), e["bin_ids"], 3),
     ValueError, "move them to one device"),
    ("gram_half", lambda e: binned_gram_eigvalsh(e["features"].half(), e["bin_ids"], 3), TypeError,
     "float32 or float64"),
    ("gram_complex", lambda e: binned_gram_eigvalsh(e["features"].cfloat(), e["bin_ids"], 3), TypeError,
     "float32 or float64"),
    ("gram_float_ids", lambda e: binned_gram_eigvalsh(e["features"], e["bin_ids"].float(), 3), TypeError, "integer"),
    # ntk_spectrum (the model is in train mode: nothing may update its batch norm statistics)
    ("ntk_bad_output", lambda e: ntk_spectrum(e["bad_model"], e["x"], e["logsnr"]), ValueError,
     r"must return one tensor \[b, ...\]"),
    ("ntk_num_bins_huge", lambda e: ntk_spectrum(e["model"], e["x"], e["logsnr"], num_bins=2**62), ValueError,
     "'num_bins' must be an int in"),
    ("ntk_logsnr_range_one", lambda e: ntk_spectrum(e["model"], e["x"], e["logsnr"], logsnr_range=(1.0,)),
     ValueError, "'logsnr_range'"),
    ("ntk_logsnr_shape", lambda e: ntk_spectrum(e["model"], e["x"], e["logsnr"][:3]), ValueError, r"shape \[n\]"),
    ("ntk_logsnr_complex", lambda e: ntk_spectrum(e["model"], e["x"], e["logsnr"].cfloat()), TypeError,
     "'logsnr' must hold real numbers"),
    ("ntk_logsnr_bool", lambda e: ntk_spectrum(e["model"], e["x"], e["logsnr"] > 0), TypeError,
     "'logsnr' must hold real numbers"),
    ("ntk_logsnr_inf", lambda e: ntk_spectrum(e["model"], e["x"], e["logsnr"] / 0), ValueError, "non-finite"),
    ("ntk_sketch_dim", lambda e: ntk_spectrum(e["model"], e["x"], e["logsnr"], sketch_dim=0), ValueError,
     "sketch_dim"),
    ("ntk_frozen", lambda e: ntk_spectrum(e["frozen_model"], e["x"], e["logsnr"]), ValueError,
     "no parameters that require grad"),
    ("ntk_not_module", lambda e: ntk_spectrum(lambda x: x, e["x"], e["logsnr"]), TypeError, "nn.Module"),
    # found by an adversarial probe (scripts/probe_erd, F8 / F10): schedule constructors took non-finite or degenerate
    # arguments (NaN schedules), and these refusals came from torch or Python without naming the argument
    ("logsnr_schedule_infinite", lambda e: schedules.LinearLogSNR(math.inf, -10.0), ValueError,
     "'logsnr_max' and 'logsnr_min' must be finite with logsnr_min < logsnr_max"),
    ("logsnr_schedule_str", lambda e: schedules.LinearLogSNR("a", "b"), TypeError,
     "LinearLogSNR: 'logsnr_max' must be a real number"),
    ("cosine_betas_negative_s", lambda e: schedules.cosine_betas(10, s=-1.0), ValueError,
     "cosine_betas: the offset 's' must be finite and >= 0"),
    ("cosine_betas_nan_s", lambda e: schedules.cosine_betas(10, s=math.nan), ValueError, "'s' must be finite"),
    ("vp_cosine_negative_s", lambda e: schedules.DiscreteVP.cosine(s=-1.0), ValueError, "'s' must be finite and >= 0"),
    ("cosine_betas_max_beta", lambda e: schedules.cosine_betas(10, max_beta=0.0), ValueError,
     r"'max_beta' must lie in \(0, 1\]"),
    ("linear_betas_zero", lambda e: schedules.linear_betas(100, 0.0, 0.0), ValueError, "beta_end > 0"),
    ("vp_table_str", lambda e: schedules.DiscreteVP("abc"), TypeError,
     r"DiscreteVP: 'alphas_cumprod' must be a tensor \(or a sequence\) of real numbers, got str"),
    ("vp_betas_none", lambda e: schedules.DiscreteVP.from_betas(None), TypeError, "'betas' must be a tensor"),
    ("weight_shapes", lambda e: loss_weight(torch.ones(3), torch.ones(2)), ValueError,
     r"loss_weight: alpha \(3,\), sigma \(2,\) must broadcast together"),
    ("weight_flow_derivative_shapes", lambda e: loss_weight(e["alpha"], e["sigma"], "flow",
                                                            alpha_prime=torch.ones(2), sigma_prime=torch.ones(4)),
     ValueError, r"alpha_prime \(2,\), sigma_prime \(4,\) must broadcast together"),
    ("weight_alpha_str", lambda e: loss_weight("a", e["sigma"]), TypeError, "'alpha' must be a tensor"),
    ("weight_sigma_none", lambda e: loss_weight(e["alpha"], None), TypeError, "'sigma' must be a tensor"),
    ("weight_k_tensor", lambda e: loss_weight(e["alpha"], e["sigma"], "eps", "p2", k=torch.tensor([1.0, 2.0])),
     TypeError, "loss_weight: 'k' must be a real number"),
    ("erd_loss_k_str", lambda e: call_erd_loss(e, weighting="min_snr", k="x"), TypeError,
     "erd_loss: 'k' must be a real number"),
    ("loss_callable_str", lambda e: ERDLoss("eps", lambda a, s: "abc")(e["output"], e["target"], e["alpha"],
                                                                       e["sigma"]),
     TypeError, "the weighting callable must return a tensor"),
    ("module_ema_decay_str", lambda e: ERDLoss(ema_decay="0.9"), TypeError, "ERDLoss: 'ema_decay' must be a real"),
    ("module_k_str", lambda e: ERDLoss(weighting="min_snr", k="a"), TypeError, "ERDLoss: 'k' must be a real number"),
    ("ntk_logsnr_range_int", lambda e: ntk_spectrum(e["model"], e["x"], e["logsnr"], logsnr_range=5), ValueError,
     r"ntk_spectrum: 'logsnr_range' must be two numbers \(min, max\), got 5"),
    ("ntk_logsnr_range_str", lambda e: ntk_spectrum(e["model"], e["x"], e["logsnr"], logsnr_range=("a", "b")),
     ValueError, "'logsnr_range' must be two numbers"),
]


@pytest.mark.parametrize("call,error,match", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_raises_and_changes_nothing(call, error, match):
    env = make_env()
    before = snapshot(env)
    with pytest.raises(error, match=match):
        call(env)
    assert_bit_identical(before, snapshot(env))


def test_ntk_spectrum_in_train_mode_works_and_changes_nothing():
    # the probe and the per-sample gradients run with eval semantics; the model comes back as it was
    env = make_env()
    before = snapshot(env)
    out = ntk_spectrum(env["model"], env["x"], env["logsnr"], num_bins=2, sketch_dim=None)
    assert_bit_identical(before, snapshot(env))
    assert env["model"].training and torch.isfinite(out["eigenvalues"]).all()


@pytest.mark.parametrize("features", [torch.full((3, 2), 3e19), torch.full((3, 2), 1e-30),
                                      torch.tensor([[3e38, 0.0], [0.0, 1.0]]), torch.tensor([[3e19, 1.0], [2.0, 5.0]])])
def test_extreme_finite_float32_features_never_give_nan(features):
    # features are scaled by a power of two before the Gram product: eigenvalues are right to float32 accuracy
    # (of the largest), and one beyond float32's range is inf, as the docstring says, never NaN
    eig, _ = binned_gram_eigvalsh(features, torch.zeros(len(features), dtype=torch.long), 1)
    assert not torch.isnan(eig).any()
    exact = torch.linalg.eigvalsh(features.double() @ features.double().T).flip(0).clamp_min(0)
    big = exact > torch.finfo(torch.float32).max
    assert torch.isinf(eig[0][big]).all() and torch.isfinite(eig[0][~big]).all()
    error = (eig[0][~big].double() - exact[~big]).abs()
    assert (error <= 1e-6 * exact.max() + torch.finfo(torch.float32).tiny).all()


def _freed(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.untyped_storage().resize_(0)
    return t


@pytest.mark.parametrize("call,name", [
    (lambda e: ops.erd_weights(_freed(e["alpha"]), e["sigma"], None, None, "eps", "erd", 5.0, 1.0), "alpha"),
    (lambda e: erd_loss(e["output"], e["target"], e["alpha"], _freed(e["sigma"])), "sigma"),
    (lambda e: erd_loss(_freed(e["output"]), e["target"], e["alpha"], e["sigma"]), "output"),
    (lambda e: erd_loss(e["output"], _freed(e["target"]), e["alpha"], e["sigma"]), "target"),
    (lambda e: binned_gram_eigvalsh(_freed(e["features"]), e["bin_ids"], 3), "features"),
    (lambda e: binned_gram_eigvalsh(e["features"], _freed(e["bin_ids"]), 3), "bin_ids"),
    (lambda e: ops.erd_loss_backward(_freed(torch.ones(())), e["output"], e["target"], torch.ones(len(e["alpha"])),
                                     False), "grad"),
    (lambda e: ops.erd_loss_backward(torch.ones(()), e["output"], e["target"], _freed(torch.ones(len(e["alpha"]))),
                                     False), "weight"),
], ids=["erd_weights-alpha", "erd_loss-sigma", "erd_loss-output", "erd_loss-target", "gram-features",
        "gram-bin_ids", "backward-grad", "backward-weight"])
def test_a_freed_storage_is_refused(call, name):
    """A tensor whose storage was freed (untyped_storage().resize_(0), as FSDP frees unsharded parameters) was read
    through a null pointer: a segfault."""
    env = make_env()
    before = snapshot(env)
    with pytest.raises(ValueError, match=f"'{name}' has elements but no memory"):
        call(env)
    assert_bit_identical(before, snapshot(env))
