"""AdaSGDF against the float64 reference written from its definition (tests/reference/adasgdf_reference.py), on every
path (fused, foreach, single-tensor), dtype, storage option and device, and its optimizer contract: checkpoints,
GradScaler, tensor lr, torch.compile, and bad input that raises and changes nothing. SGDF's helpers are reused."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sgdf_erd
from sgdf_erd import AdaSGDF
from tests.devices import DEVICES, requires_cuda
from tests.reference.adasgdf_reference import PRECONDITIONERS, ReferenceAdaSGDF
from tests.test_sgdf import (PATHS, _assert_close, _grads, _make_params, _run_against_reference,
                             resumed_across_paths)
from tests.test_sgdf_cuda import assert_steps_without_host_sync, captured_step

OPTION_SETS = [
    dict(),
    dict(weight_decay=0.0),
    dict(weight_decay=5e-3, decoupled_weight_decay=False),
    dict(maximize=True, gamma=1.0),
    dict(gamma=0.7, betas=(0.5, 0.99), eps=1e-6),
    dict(betas=(0.9, 0.95), lr=1e-4),  # the ERD authors' AdamW recipe
]
SHAPES = [(7,), (3, 5), (4, 3, 2, 2), (1,), (33, 65)]  # SGDF's, smaller: the suite runs these on every path
_ids = lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default"  # noqa: E731


def _reference(params, preconditioner, options, **rounding):
    kwargs = dict(dict(lr=1e-2), **options)
    return ReferenceAdaSGDF(params, preconditioner=preconditioner, **kwargs, **rounding)


def test_exported_and_a_torch_optimizer():
    assert sgdf_erd.AdaSGDF is sgdf_erd.optim.AdaSGDF
    opt = AdaSGDF(_make_params(torch.float32))
    assert isinstance(opt, torch.optim.Optimizer)
    d = opt.defaults
    assert (d["lr"], d["betas"], d["eps"], d["weight_decay"], d["decoupled_weight_decay"], d["gamma"],
            d["preconditioner"]) == (1e-3, (0.9, 0.999), 1e-8, 1e-2, True, 0.5, "second_moment")
    AdaSGDF(_make_params(torch.float32), **opt.defaults)  # torch's convention: defaults rebuild the optimizer


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("options", OPTION_SETS, ids=_ids)
def test_matches_reference(device, preconditioner, path, dtype, options):
    low = dtype in (torch.float16, torch.bfloat16)
    params = _make_params(dtype, shapes=SHAPES, device=device)
    opt = AdaSGDF(params, **dict(dict(lr=1e-2), **options), preconditioner=preconditioner, **PATHS[path])
    ref = _reference(params, preconditioner, options, round_to=dtype if low else None)
    _run_against_reference(params, opt, ref, steps=10 if low else 20)
    _assert_close(params, ref, dtype)
    for key in ("exp_avg", "exp_var") + (("exp_avg_sq",) if preconditioner == "second_moment" else ()):
        assert opt.state[params[0]][key].dtype == dtype
    assert ("exp_avg_sq" in opt.state[params[0]]) == (preconditioner == "second_moment")


@given(shape=st.lists(st.integers(0, 40), min_size=1, max_size=3), lr=st.floats(1e-4, 0.1),
       # b1 = 0, or away from it: for 0 < b1 << 1 the residual g - m is a cancellation ((b1 g)-sized) that
       # "variance" divides by, so float64 roundings of it move the step by ~1e-16 / b1 (the update is that
       # ill-conditioned, not the kernel wrong)
       b1=st.one_of(st.just(0.0), st.floats(0.05, 0.99)), b2=st.floats(0.5, 0.9999), gamma=st.floats(0.1, 2.0),
       wd=st.floats(0.0, 0.1), decoupled=st.booleans(), preconditioner=st.sampled_from(PRECONDITIONERS),
       seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["fused", "foreach"])
def test_random_hyperparameters_and_shapes(device, path, shape, lr, b1, b2, gamma, wd, decoupled, preconditioner,
                                           seed):
    params = _make_params(torch.float64, shapes=[tuple(shape)], seed=seed, device=device)
    options = dict(lr=lr, betas=(b1, b2), gamma=gamma, weight_decay=wd, decoupled_weight_decay=decoupled)
    opt = AdaSGDF(params, preconditioner=preconditioner, **options, **PATHS[path])
    ref = _reference(params, preconditioner, options)
    _run_against_reference(params, opt, ref, steps=5, seed=seed)
    # relative 1e-8, not SGDF's 1e-10: the division by d + eps amplifies float64 roundings where d is small
    for p, q in zip(params, ref.p):
        torch.testing.assert_close(p.detach().cpu(), q, rtol=1e-8, atol=1e-10)


# (param dtype, options, reference rounding)
STORAGE = {
    "f32_bf16_state": (torch.float32, dict(state_dtype=torch.bfloat16), dict(state_round_to=torch.bfloat16)),
    "bf16_f32_state": (torch.bfloat16, dict(state_dtype=torch.float32),
                       dict(round_to=torch.bfloat16, state_round_to=torch.float32)),
    "bf16_master": (torch.bfloat16, dict(master_weights=True),
                    dict(round_to=torch.float32, state_round_to=torch.bfloat16)),
    "f16_master_f32_state": (torch.float16, dict(master_weights=True, state_dtype=torch.float32),
                             dict(round_to=torch.float32, state_round_to=torch.float32)),
}


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("storage", list(STORAGE))
def test_storage_options_match_reference(device, preconditioner, path, storage):
    dtype, options, rounding = STORAGE[storage]
    params = _make_params(dtype, shapes=SHAPES, device=device)
    opt = AdaSGDF(params, lr=1e-2, preconditioner=preconditioner, **options, **PATHS[path])
    ref = _reference(params, preconditioner, {}, **rounding)
    _run_against_reference(params, opt, ref, steps=12)
    if options.get("master_weights"):
        masters = [opt.state[p]["master_param"] for p in params]
        _assert_close(masters, ref, torch.float32 if options.get("state_dtype") else torch.bfloat16)
        for p, w in zip(params, masters):
            assert torch.equal(p, w.to(dtype))  # the param is its master rounded to nearest
    else:
        _assert_close(params, ref, dtype if dtype != torch.float32 else torch.bfloat16)
    state_dtype = options.get("state_dtype", dtype)
    assert all(opt.state[params[0]][k].dtype == state_dtype for k in opt.state[params[0]]
               if k in ("exp_avg", "exp_var", "exp_avg_sq"))


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("options", [dict(stochastic_rounding=True),
                                     dict(stochastic_rounding=True, master_weights=True),
                                     dict(stochastic_rounding=True, state_dtype=torch.bfloat16)], ids=_ids)
def test_stochastic_rounding_is_the_same_on_every_path(device, preconditioner, options):
    """The kernel and the Python paths draw the same counter-based numbers (exp_avg_sq with its own stream): their
    float32 results may differ in the last bit, so rarely the rounding, as for SGDF (test_sgdf_lowprec.py)."""
    results = []
    for path in PATHS:
        params = _make_params(torch.bfloat16, shapes=SHAPES, seed=5, device=device)
        torch.manual_seed(0)  # the seeds drawn with the state
        opt = AdaSGDF(params, lr=1e-3, preconditioner=preconditioner, **options, **PATHS[path])
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p, g in zip(params, _grads(params, gen)):
                p.grad = g.to(device)
            opt.step()
        results.append([params] + [[opt.state[p][k] for p in params] for k in sorted(opt.state[params[0]])
                                   if isinstance(opt.state[params[0]][k], torch.Tensor)])
    for other in results[1:]:
        equal = total = 0
        for got, want in zip(itertools.chain(*other), itertools.chain(*results[0])):
            if want.dtype == torch.float32:  # master copies
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
                continue
            spacing = torch.finfo(want.dtype).eps * want.float().abs().clamp_min(2.0**-126)
            assert bool(((got.float() - want.float()).abs() <= spacing).all())
            equal, total = equal + int((got == want).sum()), total + want.numel()
        assert equal > 0.98 * total


@pytest.mark.parametrize("path", list(PATHS))
def test_param_groups_with_different_preconditioners_and_hyperparameters(device, path):
    params = _make_params(torch.float32, shapes=SHAPES, device=device)
    groups = [{"params": params[:2]}, {"params": params[2:4], "preconditioner": "variance", "lr": 3e-3},
              {"params": params[4:], "weight_decay": 0.0, "betas": (0.8, 0.99)}]
    opt = AdaSGDF(groups, lr=1e-2, **PATHS[path])
    refs = [(_reference(params[:2], "second_moment", {}), slice(0, 2)),
            (_reference(params[2:4], "variance", dict(lr=3e-3)), slice(2, 4)),
            (_reference(params[4:], "second_moment", dict(weight_decay=0.0, betas=(0.8, 0.99))), slice(4, None))]
    from tests.test_sgdf import _run_against_references
    _run_against_references(params, opt, refs, steps=10)
    for ref, part in refs:
        _assert_close(params[part], ref, torch.float32)


@pytest.mark.parametrize("path", list(PATHS))
def test_complex_parameters_are_real_views(device, path):
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.complex64, device=device))
    opt = AdaSGDF([p], lr=1e-2, **PATHS[path])
    ref = ReferenceAdaSGDF([p], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        g = torch.randn(4, 3, dtype=torch.complex64, generator=gen)
        p.grad = g.to(device)
        opt.step()
        ref.step([g])
    torch.testing.assert_close(p.detach().cpu().to(torch.complex128), ref.p[0], rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("saved_path,loaded_path", list(itertools.product(PATHS, PATHS)))
def test_state_dict_round_trip_across_paths(device, preconditioner, saved_path, loaded_path):
    params = _make_params(torch.float32, shapes=SHAPES, seed=11, device=device)
    resumed_across_paths(lambda ps, **kw: AdaSGDF(ps, **{"lr": 1e-2, "preconditioner": preconditioner, **kw}),
                         params, device, saved_path, loaded_path, steps=12)


def test_checkpoint_across_preconditioners(device):
    """A "second_moment" checkpoint loads into "variance" (exp_avg_sq dropped); the other way round it is refused
    (there is no second moment to resume), changing nothing."""
    params = _make_params(torch.float32, shapes=[(3, 4), (5,)], device=device)
    opt = AdaSGDF(params, lr=1e-2)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    variance = AdaSGDF(params, lr=1e-2, preconditioner="variance")
    variance.load_state_dict(opt.state_dict())
    assert variance.param_groups[0]["preconditioner"] == "second_moment"  # (a group's options are the checkpoint's)
    variance.param_groups[0]["preconditioner"] = "variance"
    variance.load_state_dict(dict(variance.state_dict(), param_groups=[
        dict(variance.state_dict()["param_groups"][0], preconditioner="variance")]))
    assert "exp_avg_sq" not in variance.state[params[0]]
    variance.step()
    fresh = AdaSGDF(params, lr=1e-2)
    with pytest.raises(ValueError, match="lacks exp_avg_sq, which .* set 'preconditioner': 'variance'"):
        fresh.load_state_dict(dict(variance.state_dict(), param_groups=[
            dict(variance.state_dict()["param_groups"][0], preconditioner="second_moment")]))
    assert not fresh.state


def test_sgdf_checkpoint_loads_into_variance_and_is_refused_by_second_moment(device):
    from sgdf_erd import SGDF
    params = _make_params(torch.float32, shapes=[(3, 4)], device=device)
    sgdf = SGDF(params, lr=1e-2)
    params[0].grad = torch.ones_like(params[0])
    sgdf.step()
    variance = AdaSGDF(params, preconditioner="variance")
    variance.load_state_dict(sgdf.state_dict())
    assert variance.param_groups[0]["preconditioner"] == "variance"
    variance.step()
    second_moment = AdaSGDF(params)
    with pytest.raises(ValueError, match=r"lacks exp_avg_sq, .* construct AdaSGDF\(preconditioner='variance'\)"):
        second_moment.load_state_dict(sgdf.state_dict())


# ------------------------------------------------------------------------------------------ AMP, lr, compile
def test_grad_scaler_with_planted_inf_skips_and_unscales(device):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3).to(device)
    opt = AdaSGDF(model.parameters(), lr=1e-2, fused=True)
    assert opt._step_supports_amp_scaling
    ref = ReferenceAdaSGDF(list(model.parameters()), lr=1e-2)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**8, growth_interval=1000)
    x = torch.randn(16, 6).to(device)
    for step in range(8):
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        true_grads = [p.grad.cpu().double() / scaler.get_scale() for p in model.parameters()]
        before = [t.clone() for p in model.parameters() for t in [p.detach()] + list(opt.state[p].values())
                  if isinstance(t, torch.Tensor)]
        if step == 3:
            model.weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        if step == 3:
            after = [t for p in model.parameters() for t in [p.detach()] + list(opt.state[p].values())
                     if isinstance(t, torch.Tensor)]
            assert all(torch.equal(a, b) for a, b in zip(before, after))
        else:
            ref.step(true_grads)
            torch.testing.assert_close(model.bias.grad.cpu().double(), true_grads[1], rtol=1e-6, atol=1e-7)
    assert float(opt.state[model.weight]["step"]) == 7
    _assert_close(list(model.parameters()), ref, torch.float32)


@pytest.mark.parametrize("path", ["fused", "foreach"])
def test_capturable_and_tensor_lr(device, path):
    params = _make_params(torch.float32, shapes=SHAPES, seed=8, device=device)
    opt = AdaSGDF(params, lr=torch.tensor(1e-2, device=device), capturable=True, **PATHS[path])
    ref = ReferenceAdaSGDF(params, lr=1e-2)
    _run_against_reference(params, opt, ref, steps=10)
    _assert_close(params, ref, torch.float32)


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("path", ["fused", "foreach"])
def test_compiled_step_matches_reference(preconditioner, path):
    torch._dynamo.reset()
    params = _make_params(torch.float32, shapes=[(7,), (3, 5)], seed=3)
    opt = AdaSGDF(params, lr=torch.tensor(1e-2), preconditioner=preconditioner, **PATHS[path])
    ref = ReferenceAdaSGDF(params, lr=1e-2, preconditioner=preconditioner)
    step = torch.compile(opt.step, fullgraph=False)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        grads = _grads(params, gen)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        step()
        ref.step(grads)
    _assert_close(params, ref, torch.float32)


def test_fused_groups_of_different_preconditioners_step_in_separate_calls(device, monkeypatch):
    """The grouped kernel takes one preconditioner per call: groups with another one are stepped apart, decided
    before any call (a kernel refusal is final), and step as each group alone would."""
    calls = []
    grouped = sgdf_erd.ops.fused_sgdf_grouped_
    monkeypatch.setattr(sgdf_erd.ops, "fused_sgdf_grouped_",
                        lambda *args, **kwargs: calls.append(kwargs["preconditioner"]) or grouped(*args, **kwargs))
    shapes = [(3, 4), (5,), (2, 3)]
    kinds = ["second_moment", "variance", "second_moment"]
    params = _make_params(torch.float32, shapes=shapes, device=device)
    alone = [[torch.nn.Parameter(p.detach().clone())] for p in params]
    opt = AdaSGDF([{"params": [p], "preconditioner": k} for p, k in zip(params, kinds)], lr=1e-2, fused=True)
    separate = [AdaSGDF(ps, lr=1e-2, preconditioner=k, fused=True) for ps, k in zip(alone, kinds)]
    for step in range(3):
        for p, (q,) in zip(params, alone):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        for o in separate:
            o.step()
    assert calls == ["second_moment"] * 2  # groups 0 and 2 from the second step (state made at the first)
    for p, (q,) in zip(params, alone):
        assert torch.equal(p, q)
    assert "exp_avg_sq" not in opt.state[params[1]]


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(preconditioner="adam"), ValueError, "preconditioner"),
    (dict(preconditioner=None), ValueError, "preconditioner"),
    (dict(lr=-1e-3), ValueError, "lr"),
    (dict(betas=(0.9, 1.0)), ValueError, "betas"),
    (dict(gamma=0.0), ValueError, "gamma"),
])
def test_invalid_hyperparameters(kwargs, exc, match):
    """Refused with a message that names AdaSGDF (it said SGDF) and the option."""
    with pytest.raises(exc, match=rf"^AdaSGDF \(defaults\): .*{match}"):
        AdaSGDF(_make_params(torch.float32), **kwargs)
    opt = AdaSGDF(_make_params(torch.float32, shapes=[(3,)]))
    with pytest.raises(exc, match=rf"^AdaSGDF \(param group 1\): .*{match}"):
        opt.add_param_group({"params": _make_params(torch.float32, shapes=[(2,)]), **kwargs})


def _state_of_another_shape(opt, p):
    opt.state[p]["exp_avg"] = torch.zeros(2)


def _sparse_grad(opt, p):
    p.grad = p.grad.to_sparse()


def _grad_is_exp_avg(opt, p):
    p.grad = opt.state[p]["exp_avg"]


def _two_groups_as_a_set(opt, p):
    opt.add_param_group({"params": {torch.nn.Parameter(torch.zeros(2))}})


def _checkpoint_without_state(opt, p):
    opt.load_state_dict({"param_groups": opt.state_dict()["param_groups"]})


def _checkpoint_with_a_short_exp_avg(opt, p):
    saved = opt.state_dict()
    saved["state"][0]["exp_avg"] = torch.zeros(2)
    opt.load_state_dict(saved)


@pytest.mark.parametrize("path", ["default", "foreach"])
@pytest.mark.parametrize("edit", [_state_of_another_shape, _sparse_grad, _grad_is_exp_avg, _two_groups_as_a_set,
                                  _checkpoint_without_state, _checkpoint_with_a_short_exp_avg])
def test_refusals_name_adasgdf(edit, path):
    """Every refusal of an AdaSGDF's step, add_param_group or load_state_dict names AdaSGDF, not the SGDF class it
    inherits its checks from, and changes nothing."""
    p = torch.nn.Parameter(torch.randn(3))
    opt = AdaSGDF([p], foreach=True if path == "foreach" else None)
    p.grad = torch.randn(3)
    opt.step()
    p.grad = torch.randn(3)
    before = p.detach().clone()
    with pytest.raises((ValueError, TypeError, RuntimeError), match=r"^AdaSGDF[ :(.]"):
        edit(opt, p)
        opt.step()
    assert torch.equal(p, before)


def test_sgdf_only_options_are_refused():
    with pytest.raises(ValueError, match="sign"):
        AdaSGDF(_make_params(torch.float32), sign=True)
    opt = AdaSGDF(_make_params(torch.float32, shapes=[(3,)]))
    with pytest.raises(ValueError, match="orthogonalize"):
        opt.add_param_group({"params": _make_params(torch.float32, shapes=[(2, 2)]), "orthogonalize": True})


def _everything(opt, params):
    return [t.clone() for p in params for t in [p.detach(), p.grad] + [
        v for v in opt.state[p].values() if isinstance(v, torch.Tensor)]]


@pytest.mark.parametrize("path", list(PATHS))
def test_bad_state_or_grad_raises_and_changes_nothing(device, path):
    params = _make_params(torch.float32, shapes=[(3, 4), (5,)], device=device)
    opt = AdaSGDF([{"params": params[:1]}, {"params": params[1:], "preconditioner": "variance"}], **PATHS[path])
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    # an exp_avg_sq of another dtype (state edited by hand); on the fused path the one kernel call that steps the
    # group may be the check that refuses it (a RuntimeError naming its argument)
    opt.state[params[0]]["exp_avg_sq"] = opt.state[params[0]]["exp_avg_sq"].double()
    before = _everything(opt, params)
    with pytest.raises((ValueError, RuntimeError) if path == "fused" else ValueError, match="exp_avg_sq"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, _everything(opt, params)))
    opt.state[params[0]]["exp_avg_sq"] = opt.state[params[0]]["exp_avg_sq"].float()
    # a missing exp_avg_sq
    saved = opt.state[params[0]].pop("exp_avg_sq")
    before = _everything(opt, params)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, _everything(opt, params)))
    opt.state[params[0]]["exp_avg_sq"] = saved
    # a sparse gradient in the second group: the first group is not stepped either
    before = _everything(opt, params)
    params[1].grad = torch.ones(5, device=device).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    params[1].grad = params[1].grad.to_dense()
    assert all(torch.equal(a, b) for a, b in zip(before, _everything(opt, params)))
    # found by an adversarial probe: an exp_avg_sq with the negative bit set (same values) went into the kernel as
    # its raw memory (the weights became NaN); SGDF-only options and a deleted preconditioner set by hand in the
    # second group were stepped, or failed after the first group had stepped
    neg = torch._neg_view(-opt.state[params[0]]["exp_avg_sq"])
    for edit, match in [(lambda: opt.state[params[0]].__setitem__("exp_avg_sq", neg), "'exp_avg_sq' .* negative bit"),
                        (lambda: opt.param_groups[1].__setitem__("sign", True), "sign=True; `sign` is an SGDF option"),
                        (lambda: opt.param_groups[1].__setitem__("orthogonalize", True), "`orthogonalize` is an SGDF"),
                        (lambda: opt.param_groups[1].pop("preconditioner"), "lacks 'preconditioner'")]:
        saved_state, saved_group = dict(opt.state[params[0]]), dict(opt.param_groups[1])
        edit()
        before = _everything(opt, params)
        with pytest.raises(ValueError, match=match):
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(before, _everything(opt, params)))
        opt.state[params[0]].update(saved_state)
        opt.param_groups[1].update(saved_group)


# ------------------------------------------------------------------------------------------ CUDA only
@requires_cuda
@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("setup", ["fused", "fused+amp", "capturable foreach"])
def test_cuda_steps_have_no_host_sync(preconditioner, setup):
    params = [torch.nn.Parameter(p.detach().cuda()) for p in _make_params(torch.float32, shapes=[(64, 33), (17,)])]
    kwargs = dict(foreach=True, capturable=True) if setup == "capturable foreach" else dict(fused=True)
    opt = AdaSGDF(params, lr=torch.tensor(1e-2, device="cuda"), preconditioner=preconditioner, **kwargs)
    if setup == "fused+amp":  # as GradScaler passes them
        opt.grad_scale = torch.full((), 4.0, device="cuda")
        opt.found_inf = torch.zeros((), device="cuda")
    assert_steps_without_host_sync(opt, params)


@requires_cuda
@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("path", ["fused", "foreach"])
def test_cuda_graph_replays_match_reference(preconditioner, path):
    cpu_params = _make_params(torch.float32, shapes=[(64, 33), (17,)])
    params = [torch.nn.Parameter(p.detach().cuda()) for p in cpu_params]
    opt = AdaSGDF(params, lr=torch.tensor(1e-2, device="cuda"), capturable=True, preconditioner=preconditioner,
                  **PATHS[path])
    ref = ReferenceAdaSGDF(cpu_params, lr=1e-2, preconditioner=preconditioner)
    static_grads = [torch.zeros_like(p) for p in params]
    for p, g in zip(params, static_grads):
        p.grad = g
    gen = torch.Generator().manual_seed(4)
    grads = _grads(cpu_params, gen)
    for g, s in zip(grads, static_grads):
        s.copy_(g)
    graph = captured_step(opt.step)
    ref.step(grads)
    for _ in range(5):
        grads = _grads(cpu_params, gen)
        for g, s in zip(grads, static_grads):
            s.copy_(g)
        graph.replay()
        ref.step(grads)
    torch.cuda.synchronize()
    _assert_close(params, ref, torch.float32)
