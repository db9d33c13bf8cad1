"""SGDF optimizer against the float64 reference written from the spec (tests/reference/sgdf_reference.py), on every
device (the `device` fixture / DEVICES of tests/devices.py): parameters live on the device, gradients are drawn on
the CPU, and the float64 reference runs on the CPU."""

import copy
import io
import itertools
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sgdf_erd
from sgdf_erd import SGDF
from tests.devices import DEVICES
from tests.reference.sgdf_reference import ReferenceSGDF

PATHS = {
    "fused": dict(fused=True),
    "foreach": dict(foreach=True),
    "single": dict(foreach=False, fused=False),
}
# Tolerances per parameter dtype after 30+ steps; reduced dtypes are compared against a reference that rounds
# p, m, s to that dtype after every step, so the remainder is float32-vs-float64 arithmetic.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 6e-2}
SHAPES = [(7,), (3, 5), (4, 3, 2, 2), (1,), (130, 257)]

OPTION_SETS = [
    dict(),
    dict(weight_decay=5e-3),
    dict(weight_decay=1e-2, decoupled_weight_decay=True),
    dict(sign=True),
    dict(maximize=True, gamma=1.0),
    dict(gamma=0.7, betas=(0.5, 0.99), eps=1e-6),
    dict(orthogonalize=True, ns_steps=5),
    dict(orthogonalize=True, sign=True, ns_steps=3, weight_decay=1e-3, decoupled_weight_decay=True),
]


def _make_params(dtype, shapes=SHAPES, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype))
            for s in shapes]


def _grads(params, gen, scale=1.0):
    return [(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64)).to(p.dtype) for p in params]


def _run_against_references(params, opt, refs, steps, seed=1):
    """`steps` optimizer steps on random gradients (drawn on the CPU, moved to each parameter's device); `refs`
    pairs each reference with the slice of `params` it follows."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        grads = _grads(params, gen)
        for p, g in zip(params, grads):
            p.grad = g.to(p.device, copy=True)
        opt.step()
        for ref, part in refs:
            ref.step(grads[part])


def _step_alike(opts, param_lists, steps, seed, device):
    """`steps` steps of each optimizer of `opts`, whose params (`param_lists`, one list per optimizer, alike in
    shapes and dtypes) get the same random gradients (drawn on the CPU, moved to `device`)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for g, *params in zip(_grads(param_lists[0], gen), *param_lists):
            for p in params:
                p.grad = g.to(device)
        for opt in opts:
            opt.step()


def _run_against_reference(params, opt, ref, steps, seed=1):
    _run_against_references(params, opt, [(ref, slice(None))], steps, seed)


def _assert_close(params, ref, dtype, sign=False):
    """With the sign option an update within rounding of zero may take the other sign (a jump of 2 lr in that
    element), so there a few elements in a thousand may differ; everything else must match."""
    tol = TOL[dtype]
    for p, q in zip(params, ref.p):
        actual, expected = p.detach().cpu().double(), q.to(torch.float64)
        if sign:
            far = ~torch.isclose(actual, expected, rtol=tol, atol=tol)
            assert int(far.sum()) <= max(1, 3e-3 * far.numel()), f"{int(far.sum())} of {far.numel()} differ"
        else:
            torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_matches_reference(device, path, dtype, options):
    params = _make_params(dtype, device=device)
    lr = 0.05
    opt = SGDF(params, lr=lr, **options, **PATHS[path])
    reduced = dtype in (torch.float16, torch.bfloat16)
    ref = ReferenceSGDF(params, lr=lr, **options, round_to=dtype if reduced else None)
    _run_against_reference(params, opt, ref, steps=30)
    _assert_close(params, ref, dtype, sign=options.get("sign", False))
    for p, m in zip(params, ref.m):
        assert opt.state[p]["exp_avg"].dtype == dtype
        assert float(opt.state[p]["step"]) == 30
        torch.testing.assert_close(opt.state[p]["exp_avg"].cpu().double(), m, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("path", list(PATHS))
def test_param_groups_with_different_hyperparameters(device, path):
    params = _make_params(torch.float32, seed=3, device=device)
    groups = [
        dict(params=params[:2], lr=0.1, gamma=1.0),
        dict(params=params[2:4], lr=0.02, weight_decay=1e-2, sign=True),
        dict(params=params[4:], betas=(0.8, 0.95), decoupled_weight_decay=True, weight_decay=0.1),
    ]
    opt = SGDF(groups, lr=0.05, **PATHS[path])
    refs = [ReferenceSGDF(params[:2], lr=0.1, gamma=1.0),
            ReferenceSGDF(params[2:4], lr=0.02, weight_decay=1e-2, sign=True),
            ReferenceSGDF(params[4:], lr=0.05, betas=(0.8, 0.95), decoupled_weight_decay=True, weight_decay=0.1)]
    _run_against_references(params, opt, list(zip(refs, (slice(0, 2), slice(2, 4), slice(4, None)))), steps=35,
                            seed=5)
    _assert_close(params[:2], refs[0], torch.float32)
    _assert_close(params[2:4], refs[1], torch.float32, sign=True)
    _assert_close(params[4:], refs[2], torch.float32)


def test_default_path_is_fused_and_paths_agree(device):
    params = [_make_params(torch.float32, seed=7, device=device) for _ in PATHS]
    opts = [SGDF(ps, lr=0.1, weight_decay=1e-3, **PATHS[k]) for ps, k in zip(params, PATHS)]
    default = SGDF(_make_params(torch.float32, device=device))
    assert default._path(default.param_groups[0]) == "fused"
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        grads = _grads(params[0], gen)
        for ps, opt in zip(params, opts):
            for p, g in zip(ps, grads):
                p.grad = g.to(device, copy=True)
            opt.step()
    for ps in params[1:]:
        for a, b in zip(params[0], ps):
            torch.testing.assert_close(a, b, rtol=TOL[torch.float32], atol=TOL[torch.float32])


ONE_CALL_OPTIONS = {
    "plain": lambda: dict(),
    "tensor_lr_and_decay": lambda: dict(lr=torch.tensor(0.05), weight_decay=0.1, decoupled_weight_decay=True),
    "sign_maximize": lambda: dict(sign=True, maximize=True, weight_decay=1e-2),
    "bf16_state_rounded": lambda: dict(state_dtype=torch.bfloat16, stochastic_rounding=True),
    "master_weights": lambda: dict(master_weights=True),
}


@pytest.mark.parametrize("groups", [1, 2])  # 2: the second with its own float lr (beside a tensor lr: per group)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("options", list(ONE_CALL_OPTIONS))
def test_fused_groups_step_in_one_call_as_the_general_path(device, dtype, options, groups, monkeypatch):
    """From their second step, fused param groups are stepped together by one kernel call, whose checks stand in for
    the per-parameter Python checks; they must step bit for bit as the Python-checked path (regrouping),
    with a GradScaler's grad_scale / found_inf too (a skipped step included)."""
    if options == "master_weights" and dtype in (torch.float32, torch.float64):
        pytest.skip("master weights are for 16-bit params")
    if options == "bf16_state_rounded" and dtype == torch.float64:
        pytest.skip("float64 params keep float64 state in the fused kernels")
    gen = torch.Generator().manual_seed(3)
    grads = [_grads(_make_params(dtype), gen) for _ in range(4)]
    found_infs = [0.0, 0.0, 1.0, 0.0]  # the third step is skipped
    results = []
    for one_call in (True, False):
        params = _make_params(dtype, device=device)
        param_groups = params if groups == 1 else [{"params": params[:2]},
                                                   {"params": params[2:], "lr": 0.02, "weight_decay": 0.1}]
        opt = SGDF(param_groups, fused=True, **ONE_CALL_OPTIONS[options]())
        if not one_call:
            monkeypatch.setattr(opt, "_one_call_lists", lambda group: None)
        one_call_steps = []  # the groups of each one-call step
        attempt = opt._step_in_one_call
        monkeypatch.setattr(opt, "_step_in_one_call",
                            lambda plan, *args: one_call_steps.append(list(plan)) or attempt(plan, *args))
        torch.manual_seed(0)  # the rounding seeds drawn at the first step
        for step_grads, found_inf in zip(grads, found_infs):
            for p, g in zip(params, step_grads):
                p.grad = (g * 4).to(device)  # scaled by 4, as GradScaler(init_scale=4) would
            opt.grad_scale = torch.tensor(4.0, device=device)
            opt.found_inf = torch.tensor(found_inf, device=device)
            opt.step()
        # the first step makes the state, after the Python checks of every parameter; from the second step on, the
        # groups are stepped together by one kernel call, which checks them
        assert one_call_steps == ([list(range(groups))] * 3 if one_call else [])
        results.append([params, [p.grad for p in params], [opt.state[p] for p in params]])
    (params, unscaled, states), (want_params, want_unscaled, want_states) = results
    for got, want in zip(params + unscaled, want_params + want_unscaled):
        assert torch.equal(got, want)
    for got, want in zip(states, want_states):
        assert got.keys() == want.keys()
        for key in got:
            assert (torch.equal(got[key], want[key]) if isinstance(got[key], torch.Tensor) else got[key] == want[key])


@given(shape=st.lists(st.integers(0, 70), min_size=1, max_size=3), lr=st.floats(1e-4, 1.0),
       b1=st.floats(0.0, 0.99), b2=st.floats(0.5, 0.9999), gamma=st.floats(0.1, 2.0),
       seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
@pytest.mark.parametrize("device", DEVICES)  # not the fixture: hypothesis reruns the body, not the fixture
def test_fused_random_hyperparameters_and_shapes(device, shape, lr, b1, b2, gamma, seed):
    params = _make_params(torch.float64, shapes=[tuple(shape), (3,)], seed=seed, device=device)
    opt = SGDF(params, lr=lr, betas=(b1, b2), gamma=gamma, fused=True)
    ref = ReferenceSGDF(params, lr=lr, betas=(b1, b2), gamma=gamma)
    _run_against_reference(params, opt, ref, steps=4, seed=seed)
    _assert_close(params, ref, torch.float64)


@pytest.mark.parametrize("path", list(PATHS))
def test_closure_and_none_grads_and_zero_size(device, path):
    w = torch.nn.Parameter(torch.randn(4, 3, device=device))
    frozen = torch.nn.Parameter(torch.randn(3, device=device))
    empty = torch.nn.Parameter(torch.randn(0, 5, device=device))
    x = torch.randn(8, 3, device=device)
    opt = SGDF([w, frozen, empty], lr=0.1, **PATHS[path])
    ref = ReferenceSGDF([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (x @ w.T).pow(2).mean() + empty.sum()
        loss.backward()
        return loss

    for _ in range(5):
        before = frozen.detach().clone()
        loss = opt.step(closure)
        assert isinstance(loss, torch.Tensor)
        ref_grad = torch.autograd.functional.jacobian(lambda v: (x.cpu().double() @ v.T).pow(2).mean(), ref.p[0])
        ref.step([ref_grad])
        assert torch.equal(frozen, before)
    torch.testing.assert_close(w.detach().cpu().double(), ref.p[0], rtol=1e-4, atol=1e-5)
    assert frozen not in opt.state


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("path", list(PATHS))
def test_complex_parameters_are_real_views(device, path, dtype):
    """(complex128 with fused=True was refused, its state dtype compared as if it were a real one)"""
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, 4, dtype=dtype, generator=gen).to(device))
    opt = SGDF([p], lr=0.1, weight_decay=1e-2, **PATHS[path])
    ref = ReferenceSGDF([p], lr=0.1, weight_decay=1e-2)
    for _ in range(10):
        g = torch.randn(6, 4, dtype=dtype, generator=gen)
        p.grad = g.to(device)
        opt.step()
        ref.step([g])
    tol = 2e-5 if dtype == torch.complex64 else 1e-12
    torch.testing.assert_close(p.detach().cpu().to(torch.complex128), ref.p[0], rtol=tol, atol=tol)
    assert opt._path(opt.param_groups[0]) == path


# ----------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("saved_path,loaded_path", list(itertools.product(PATHS, PATHS)))
def test_state_dict_round_trip_across_paths(device, saved_path, loaded_path):
    params = _make_params(torch.float32, seed=11, device=device)
    resumed = resumed_across_paths(lambda ps, **kw: SGDF(ps, **{"lr": 0.05, "weight_decay": 1e-3, **kw}), params,
                                   device, saved_path, loaded_path, steps=20)
    assert resumed.param_groups[0]["fused"] == PATHS[loaded_path].get("fused")
    assert all(float(resumed.state[p]["step"]) == 20 for p in params)


def resumed_across_paths(make_optimizer, params, device, saved_path, loaded_path, steps):
    """Steps `params` and a copy, each with make_optimizer(params, **PATHS[saved_path]), for steps // 2 steps; loads
    the first one's saved state dict into make_optimizer(params, lr=1.0, **PATHS[loaded_path]) (the lr comes from
    the checkpoint); steps both to `steps` and checks that the params stay equal. Returns the resumed optimizer."""
    twin = copy.deepcopy(params)
    opt, twin_opt = make_optimizer(params, **PATHS[saved_path]), make_optimizer(twin, **PATHS[saved_path])
    gen = torch.Generator().manual_seed(2)
    grads_seq = [_grads(params, gen) for _ in range(steps)]
    for grads in grads_seq[:steps // 2]:
        for ps, o in ((params, opt), (twin, twin_opt)):
            for p, g in zip(ps, grads):
                p.grad = g.to(device, copy=True)
            o.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    resumed = make_optimizer(params, lr=1.0, **PATHS[loaded_path])
    resumed.load_state_dict(torch.load(buffer, map_location="cpu"))
    for grads in grads_seq[steps // 2:]:
        for ps, o in ((params, resumed), (twin, twin_opt)):
            for p, g in zip(ps, grads):
                p.grad = g.to(device, copy=True)
            o.step()
    for a, b in zip(params, twin):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return resumed


def test_loads_authors_release_checkpoint(device):
    """A state dict in the release's layout (CPU tensors): int step, option names weight_decouple/use_sign/use_muon."""
    params = _make_params(torch.float32, shapes=[(5, 4), (6,)], seed=4, device=device)
    gen = torch.Generator().manual_seed(9)
    exp_avg = [torch.randn(p.shape, generator=gen) * 0.1 for p in params]
    exp_var = [torch.rand(p.shape, generator=gen) * 0.01 for p in params]
    release_state = {
        "state": {i: {"step": 7, "exp_avg": exp_avg[i].clone(), "exp_var": exp_var[i].clone()} for i in range(2)},
        "param_groups": [{"lr": 0.05, "betas": (0.9, 0.999), "eps": 1e-8, "gamma": 0.5, "weight_decay": 1e-3,
                          "weight_decouple": True, "use_sign": False, "use_muon": False, "ns_steps": 5,
                          "params": [0, 1]}],
    }
    opt = SGDF(params, lr=1.0)
    opt.load_state_dict(release_state)
    group = opt.param_groups[0]
    assert group["decoupled_weight_decay"] is True and group["lr"] == 0.05 and opt._path(group) == "fused"
    ref = ReferenceSGDF(params, lr=0.05, weight_decay=1e-3, decoupled_weight_decay=True)
    for i in range(2):
        ref.m[i], ref.s[i], ref.t[i] = exp_avg[i].double(), exp_var[i].double(), 7
    _run_against_reference(params, opt, ref, steps=5)
    _assert_close(params, ref, torch.float32)
    assert float(opt.state[params[0]]["step"]) == 12


# ----------------------------------------------------------------------------------------- AMP
def test_grad_scaler_with_planted_inf_skips_and_unscales(device):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3).to(device)
    opt = SGDF(model.parameters(), lr=0.05, fused=True)
    assert opt._step_supports_amp_scaling
    ref = ReferenceSGDF(list(model.parameters()), lr=0.05)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**8, growth_interval=1000)
    x = torch.randn(16, 6).to(device)
    skipped = 0
    for step in range(12):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        scaler.scale(loss).backward()
        true_grads = [p.grad.cpu().double() / scaler.get_scale() for p in model.parameters()]
        before = [p.detach().clone() for p in model.parameters()]
        if step in (3, 7):
            model.weight.grad[0, 0] = float("inf") if step == 3 else float("nan")
        scaler.step(opt)
        scaler.update()
        if step in (3, 7):
            skipped += 1
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        else:
            ref.step(true_grads)
            # the kernel unscaled the gradients in place
            torch.testing.assert_close(model.bias.grad.cpu().double(), true_grads[1], rtol=1e-6, atol=1e-7)
    assert float(opt.state[model.weight]["step"]) == 12 - skipped
    _assert_close(list(model.parameters()), ref, torch.float32)


def test_in_kernel_unscaling_is_advertised_only_where_fused_was_asked_for(device):
    """torch.amp.GradScaler hands grad_scale / found_inf to step() where `_step_supports_amp_scaling` is set; as for
    torch's optimizers, only where the user asked for fused=True (every group fused): the default path (fused too)
    leaves unscaling to the scaler, so gradients can be unscaled and clipped first (Lightning refuses otherwise)."""
    a, b = _make_params(torch.float32, shapes=[(3,), (4,)], device=device)
    default = SGDF([a, b])
    assert default._path(default.param_groups[0]) == "fused"  # the default path is fused ...
    assert not SGDF([a, b])._step_supports_amp_scaling  # ... but the scaler unscales
    assert SGDF([a, b], fused=True)._step_supports_amp_scaling
    assert not SGDF([{"params": [a]}, {"params": [b], "fused": False}], fused=True)._step_supports_amp_scaling
    assert not SGDF([a, b], foreach=True)._step_supports_amp_scaling
    opt = SGDF([a], fused=True)
    opt.add_param_group({"params": [b], "foreach": True, "fused": False})
    assert not opt._step_supports_amp_scaling


def test_default_path_with_grad_scaler_unscale_and_clipping(device):
    """The default path with a GradScaler: unscale_, clip, step (the scaler skips the step on inf) follows the
    reference fed the unscaled, clipped gradients."""
    params = _make_params(torch.float32, shapes=[(5, 4), (7,)], seed=9, device=device)
    opt = SGDF(params, lr=0.05)
    ref = ReferenceSGDF(params, lr=0.05)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**6, growth_interval=1000)
    gen = torch.Generator().manual_seed(10)
    for step in range(5):
        grads = _grads(params, gen)
        for p, g in zip(params, grads):
            p.grad = scaler.scale(g.to(device))
        if step == 2:
            params[0].grad[0, 0] = float("inf")
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        clipped = [p.grad.cpu().double() for p in params]
        scaler.step(opt)
        scaler.update()
        if step != 2:
            ref.step(clipped)
    assert float(opt.state[params[0]]["step"]) == 4
    _assert_close(params, ref, torch.float32)


@pytest.mark.parametrize("layout", ["transposed", "channels_last"])
def test_grad_scaler_unscales_a_gradient_laid_out_otherwise_in_place(device, layout):
    """A gradient whose strides differ from its parameter's is stepped from a copy in the parameter's layout; the
    kernel unscales that copy, and p.grad must end up unscaled too, as torch's fused optimizers leave it (it stayed
    scaled)."""
    shape = (4, 3, 2, 2)
    params = _make_params(torch.float32, shapes=[shape, (5,)], seed=4, device=device)
    opt = SGDF(params, lr=0.05, fused=True)
    ref = ReferenceSGDF(params, lr=0.05)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**4, growth_interval=1000)
    gen = torch.Generator().manual_seed(6)
    for _ in range(3):
        grads = _grads(params, gen)
        weight_grad = scaler.scale(grads[0].to(device))
        params[0].grad = (weight_grad.transpose(0, 1).contiguous().transpose(0, 1) if layout == "transposed" else
                          weight_grad.contiguous(memory_format=torch.channels_last))
        assert params[0].grad.stride() != params[0].stride()
        params[1].grad = scaler.scale(grads[1].to(device))
        scaler.step(opt)
        scaler.update()
        ref.step(grads)
        for p, g in zip(params, grads):
            torch.testing.assert_close(p.grad.cpu(), g, rtol=0, atol=0)  # a power-of-two scale: exact
    _assert_close(params, ref, torch.float32)


# ----------------------------------------------------------------------------------------- options
def test_capturable_and_tensor_lr(device):
    params = _make_params(torch.float32, seed=8, device=device)
    lr = torch.tensor(0.05, device=device)
    for path in ("fused", "foreach"):
        ps = copy.deepcopy(params)
        opt = SGDF(ps, lr=lr, capturable=True, **PATHS[path])
        ref = ReferenceSGDF(ps, lr=0.05, weight_decay=0.0)
        _run_against_reference(ps, opt, ref, steps=10)
        _assert_close(ps, ref, torch.float32)


@pytest.mark.parametrize("capturable", [False, True], ids=["", "capturable"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lr", [torch.tensor([0.05]), torch.tensor([[0.05]]), torch.tensor(0.05, dtype=torch.bfloat16),
                                torch.tensor(0.05, dtype=torch.float16), torch.tensor(0.05, dtype=torch.float64)],
                         ids=["shape-1", "shape-1x1", "bfloat16", "float16", "float64"])
def test_tensor_lr_of_any_one_element_shape_and_float_dtype(device, lr, path, capturable):
    """A one-element lr tensor of any shape and float dtype steps as the float it holds, decoupled weight decay
    included. With capturable=True the foreach and single-tensor paths raised after writing the state for a shape-[1]
    lr (torch's foreach ops take a 0-dim tensor), and computed 1 - lr * weight_decay in a 16-bit lr's dtype, where it
    rounds to 1 (no decay)."""
    by_tensor = _make_params(torch.float32, seed=3, device=device)
    by_float = copy.deepcopy(by_tensor)
    options = dict(weight_decay=0.01, decoupled_weight_decay=True, capturable=capturable, **PATHS[path])
    opts = SGDF(by_tensor, lr=lr.to(device), **options), SGDF(by_float, lr=float(lr), **options)
    _step_alike(opts, (by_tensor, by_float), 3, 4, device)
    for p, q in zip(by_tensor, by_float):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("capturable", [False, True], ids=["", "capturable"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64])
def test_tensor_lr_with_float64_params_steps_as_the_kernel(device, lr_dtype, path, capturable):
    """float64 params with a tensor lr and decoupled decay: every path steps as the kernel, which reads the lr as
    float32 and forms 1 - lr * weight_decay in double. The capturable foreach / single-tensor paths formed that
    factor in float32 (2.3e-7 of the weights off after 20 steps of lr 0.1, wd 0.01), and the others took a float64
    lr unrounded (7e-9 off)."""
    lr = torch.tensor(0.1, dtype=lr_dtype)
    by_tensor = _make_params(torch.float64, seed=3, device=device)
    by_float = copy.deepcopy(by_tensor)
    options = dict(weight_decay=0.01, decoupled_weight_decay=True)
    opts = (SGDF(by_tensor, lr=lr.to(device), capturable=capturable, **options, **PATHS[path]),
            SGDF(by_float, lr=float(lr.float()), fused=True, **options))  # (the kernel: float32 lr, double arithmetic)
    _step_alike(opts, (by_tensor, by_float), 20, 4, device)
    for p, q in zip(by_tensor, by_float):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("eps", [1e-45, 1e-40, 1e-39])
def test_subnormal_eps_with_zero_gradients_keeps_weights_on_every_path(device, eps):
    """With eps below float32's smallest normal and zero gradients the gain's denominator (eps) has no finite
    reciprocal in float32: the foreach and single-tensor paths gave NaN weights (s * (1 / denominator) = 0 * inf),
    where the kernel and the spec, s / denominator = 0, leave the weights as they are."""
    for path in PATHS:
        w = torch.nn.Parameter(torch.ones(5, device=device))
        opt = SGDF([w], lr=0.1, eps=eps, **PATHS[path])
        for _ in range(2):
            w.grad = torch.zeros(5, device=device)
            opt.step()
        assert torch.equal(w.detach(), torch.ones(5, device=device)), path


@pytest.mark.parametrize("optimizer", ["SGDF", "AdaSGDF"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.9, 0.99999), (0.0, 0.9999), (0.99, 0.0)])
def test_capturable_bias_corrections_match_the_hosts(device, betas, dtype, optimizer):
    """The capturable foreach path computes the bias corrections from the step tensors on the device as the
    non-capturable one does from their values on the host, in double: within float32 (float64) rounding. They were
    float32 powers of betas rounded to float32 (1 - 0.99999 0.14 % off), also for float64 params."""
    cls = getattr(sgdf_erd, optimizer)
    by_device = _make_params(dtype, seed=5, device=device)
    by_host = copy.deepcopy(by_device)
    opts = [cls(ps, lr=0.01, betas=betas, foreach=True, capturable=capturable)
            for ps, capturable in ((by_device, True), (by_host, False))]
    _step_alike(opts, (by_device, by_host), 4, 6, device)
    # (float64: the host's 1 - beta**t in double is itself ~1e-11 off where beta^t is near 1)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-11)
    for p, q in zip(by_device, by_host):
        torch.testing.assert_close(p, q, **tol)


@pytest.mark.parametrize("betas", [(0.9999, 0.999), (0.9, 0.9999), (0.99999, 0.99999)])
def test_betas_near_one_follow_the_reference_on_every_path(device, betas):
    """1 - beta enters the moments as the double beta's complement, as in the bias corrections: the kernel formed it
    in float32 from beta rounded to float32, 1.7e-4 off for 0.9999 (its first step moved a weight by 1.00008 lr
    for lr 1, grad 1 and beta1 0.9999), while foreach takes it from Python's double."""
    for path in PATHS:
        params = _make_params(torch.float32, shapes=[(3, 5), (130, 257)], seed=9, device=device)
        opt = SGDF(params, lr=0.01, betas=betas, **PATHS[path])
        ref = ReferenceSGDF(params, lr=0.01, betas=betas)
        _run_against_reference(params, opt, ref, steps=3)
        for p, q in zip(params, ref.p):
            torch.testing.assert_close(p.detach().cpu().double(), q, rtol=2e-6, atol=1e-7, msg=path)


def test_add_param_group_joins_the_path(device):
    a, b = _make_params(torch.float32, shapes=[(3,), (4,)], device=device)
    opt = SGDF([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 0.01})
    assert opt._path(opt.param_groups[1]) == "fused"
    b.grad = torch.ones(4, device=device)
    opt.step()
    assert float(opt.state[b]["step"]) == 1


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(lr=-0.1), ValueError, "lr"),
    (dict(lr="0.1"), TypeError, "lr"),
    (dict(betas=(1.0, 0.999)), ValueError, "betas"),
    (dict(betas=(0.9, -0.1)), ValueError, "betas"),
    (dict(betas=(0.9,)), ValueError, "betas"),
    (dict(gamma=0.0), ValueError, "gamma"),
    (dict(eps=-1e-8), ValueError, "eps"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(orthogonalize=True, ns_steps=1), ValueError, "ns_steps"),
    (dict(fused=True, foreach=True), RuntimeError, "fused"),
])
def test_invalid_hyperparameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SGDF(_make_params(torch.float32), **kwargs)


def test_differentiable_false_is_accepted_and_true_refused(device):
    """torch's optimizers take differentiable=False (and put it in `defaults`, so SGDF(params, **opt.defaults) must
    work); True, autograd through step(), is refused clearly, also in a param group."""
    params = _make_params(torch.float32, shapes=[(5, 4), (3,)], device=device)
    opt = SGDF(params, lr=0.05, differentiable=False)
    assert opt.defaults["differentiable"] is False and opt.param_groups[0]["differentiable"] is False
    again = SGDF(params, **opt.defaults)
    assert again.defaults == opt.defaults
    ref = ReferenceSGDF(params, lr=0.05)
    _run_against_reference(params, opt, ref, steps=3)
    _assert_close(params, ref, torch.float32)
    with pytest.raises(ValueError, match="differentiable"):
        SGDF(params, differentiable=True)
    with pytest.raises(ValueError, match="differentiable"):
        SGDF([{"params": params[:1]}, {"params": params[1:], "differentiable": True}])


def test_invalid_parameter_kinds():
    with pytest.raises(TypeError, match="floating point"):
        SGDF([torch.zeros(3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="complex"):
        SGDF([torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64))], orthogonalize=True)
    with pytest.raises(RuntimeError, match="fused"):
        SGDF([torch.nn.Parameter(torch.zeros(3, dtype=torch.float8_e4m3fn))], fused=True)


def test_sparse_gradient_leaves_nothing_half_updated(device):
    dense = torch.nn.Parameter(torch.randn(4, device=device))
    emb = torch.nn.Embedding(10, 3, sparse=True, device=device)
    opt = SGDF([{"params": [dense]}, {"params": emb.parameters()}], lr=0.1)
    dense.grad = torch.ones(4, device=device)
    emb(torch.tensor([1, 2], device=device)).sum().backward()
    before = dense.detach().clone()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(dense, before)


def test_build_info():
    info = sgdf_erd.build_info()
    assert {"version", "torch", "cuda", "cuda_arch_list"} <= set(info)
    assert info["version"] == sgdf_erd.__version__ == info["native_version"]
    assert isinstance(info["cuda"], bool) and (info["cuda"] == bool(info["cuda_arch_list"]))


@pytest.mark.skipif(os.environ.get("SGDF_ERD_BIGMEM") != "1", reason="set SGDF_ERD_BIGMEM=1 (needs ~20 GB of RAM)")
def test_tensor_over_2_pow_31_elements_cpu():
    n = 2**31 + 4099
    p = torch.nn.Parameter(torch.zeros(n, dtype=torch.bfloat16))
    p.grad = torch.ones_like(p)
    p.grad[-5:] = torch.arange(1, 6, dtype=torch.bfloat16)
    SGDF([p], lr=0.5, fused=True).step()
    # at step 1 the update is the raw gradient, so p = -lr * g
    torch.testing.assert_close(p[-5:].float(), -0.5 * torch.arange(1, 6, dtype=torch.float32))
    assert float(p[0]) == -0.5


@pytest.mark.parametrize("path", list(PATHS))
def test_mixed_dtypes_in_one_group(device, path):
    """A group mixing dtypes is split per (device, dtype); each part matches its own reference."""
    parts = {dtype: _make_params(dtype, shapes=[(9, 4), (33,)], seed=i, device=device)
             for i, dtype in enumerate((torch.float32, torch.float64, torch.bfloat16))}
    params = [p for ps in parts.values() for p in ps]
    opt = SGDF(params, lr=0.05, weight_decay=1e-3, **PATHS[path])
    refs = {d: ReferenceSGDF(ps, lr=0.05, weight_decay=1e-3, round_to=torch.bfloat16 if d == torch.bfloat16 else None)
            for d, ps in parts.items()}
    _run_against_references(params, opt, [(ref, slice(2 * i, 2 * i + 2)) for i, ref in enumerate(refs.values())],
                            steps=30, seed=6)
    for d, ps in parts.items():
        _assert_close(ps, refs[d], d)


# ----------------------------------------------------------------------------------------- memory layouts
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_misaligned_views_match_reference(device, path, dtype):
    """Parameters and gradients at odd storage offsets (buf[1:]) cannot use the CUDA kernel's vector loads; the
    element-wise fallback must give the same numbers."""
    shapes = [(33, 7), (130,), (5,)]
    source = _make_params(dtype, shapes=shapes, seed=12)
    params = []
    for p in source:
        buf = torch.zeros(p.numel() + 1, dtype=dtype, device=device)
        buf[1:].copy_(p.detach().reshape(-1))
        params.append(torch.nn.Parameter(buf[1:].view(p.shape)))
    assert all(p.storage_offset() == 1 for p in params)
    opt = SGDF(params, lr=0.05, weight_decay=1e-3, **PATHS[path])
    reduced = dtype != torch.float32
    ref = ReferenceSGDF(source, lr=0.05, weight_decay=1e-3, round_to=dtype if reduced else None)
    gen = torch.Generator().manual_seed(13)
    for _ in range(12):
        grads = _grads(params, gen)
        for p, g in zip(params, grads):
            buf = torch.zeros(g.numel() + 1, dtype=dtype, device=device)
            p.grad = buf[1:].view(g.shape).copy_(g)
        opt.step()
        ref.step(grads)
    _assert_close(params, ref, dtype)


@pytest.mark.parametrize("path", list(PATHS))
def test_channels_last_params_match_reference(device, path):
    """A channels_last conv weight keeps its layout (state too); a contiguous gradient is taken in either layout."""
    source = _make_params(torch.float32, shapes=[(8, 3, 3, 3), (4, 8, 1, 1)], seed=14)
    params = [torch.nn.Parameter(p.detach().to(device, memory_format=torch.channels_last)) for p in source]
    opt = SGDF(params, lr=0.05, weight_decay=1e-3, **PATHS[path])
    ref = ReferenceSGDF(source, lr=0.05, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(15)
    for step in range(12):
        grads = _grads(params, gen)
        for p, g in zip(params, grads):  # alternate gradient layouts
            p.grad = g.to(device, memory_format=torch.channels_last if step % 2 else torch.contiguous_format)
        opt.step()
        ref.step(grads)
    _assert_close(params, ref, torch.float32)
    for p in params:
        assert p.is_contiguous(memory_format=torch.channels_last)
        assert opt.state[p]["exp_avg"].is_contiguous(memory_format=torch.channels_last)
