"""torch.optim's contract as torch's generic optimizer tests check it (state_dict determinism, load hooks, meta
parameters, error order, deepcopy / pickle, defaults round trips), and the step's atomicity across param groups:
each bad input below raises before anything changes (params, grads, state, step counts, param_groups bit for bit)
and each valid one steps as the same values would without the twist.
"""

import copy
import pickle

import pytest
import torch

import sgdf_erd
from sgdf_erd import SGDF
from tests.test_sgdf_contract import PATHS, _assert_unchanged, _fill_grads, _model, _snapshot

# torch's contract holds for every optimizer of the family (AdaSGDF's too, where this build has it)
FAMILY = [SGDF] + [getattr(sgdf_erd, name) for name in ("AdaSGDF",) if hasattr(sgdf_erd, name)]


@pytest.fixture(params=FAMILY, ids=lambda cls: cls.__name__)
def optimizer_class(request):
    return request.param


def _stepped(device, path="default", optimizer_class=SGDF, **options):
    params = _model(device)
    opt = optimizer_class([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.05, **options,
                          **PATHS[path])
    _fill_grads(params, seed=0)
    opt.step()
    _fill_grads(params, seed=1)
    return params, opt


def _same_state_dict(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        sa, sb = a["state"][key], b["state"][key]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k]


# ----------------------------------------------------------------------------------------- issue 30: torch's contract
@pytest.mark.parametrize("path", list(PATHS))
def test_state_dict_round_trip_is_identical(device, path, optimizer_class):
    """A state dict saved after a load equals the one loaded (no key added to a group, e.g. `differentiable`)."""
    params, opt = _stepped(device, path, optimizer_class)
    saved = copy.deepcopy(opt.state_dict())
    twin = optimizer_class([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.05, **PATHS[path])
    twin.load_state_dict(copy.deepcopy(saved))
    _same_state_dict(twin.state_dict(), saved)


@pytest.mark.parametrize("path", list(PATHS))
def test_deepcopy_pickle_and_defaults_round_trip(device, path, optimizer_class):
    params, opt = _stepped(device, path, optimizer_class)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert [g.keys() for g in clone.param_groups] == [g.keys() for g in opt.param_groups]
        assert clone.defaults == opt.defaults
    again = optimizer_class(_model(device), **opt.defaults)  # the defaults are valid arguments
    assert again.defaults == opt.defaults
    with pytest.raises(ValueError, match="differentiable"):
        optimizer_class(_model(device), differentiable=True)


def test_load_hooks_run_around_the_whole_load(device, optimizer_class):
    """Pre-hooks before anything is loaded (their edits count), post-hooks after the load is complete (they see
    the loading optimizer's flags and may add state), as for torch's optimizers."""
    params, opt = _stepped(device, "foreach", optimizer_class)
    saved = copy.deepcopy(opt.state_dict())
    fused = optimizer_class([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.05, fused=True)
    seen = {}

    def pre_hook(optimizer, state_dict):
        state_dict = copy.deepcopy(state_dict)
        state_dict["state"][0]["exp_avg"].fill_(0.25)
        return state_dict

    def post_hook(optimizer):
        seen["fused"] = [g["fused"] for g in optimizer.param_groups]
        seen["exp_avg"] = optimizer.state[params[0]]["exp_avg"].clone()
        optimizer.state["ran_post_hook"] = True

    fused.register_load_state_dict_pre_hook(pre_hook)
    fused.register_load_state_dict_post_hook(post_hook)
    fused.load_state_dict(saved)
    assert seen["fused"] == [True, True]
    assert torch.equal(seen["exp_avg"], torch.full_like(params[0], 0.25))
    assert fused.state["ran_post_hook"] is True
    assert torch.equal(saved["state"][0]["exp_avg"], opt.state[params[0]]["exp_avg"])  # the caller's is untouched


@pytest.fixture
def params_kept_on_conversion():
    """module.to_empty() keeps the Parameter objects (swapping their contents), as FSDP2 relies on."""
    kept = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    yield
    torch.__future__.set_swap_module_params_on_conversion(kept)


@pytest.mark.parametrize("fused", [True, None])
def test_meta_params_construct_and_step_once_materialised(device, fused, params_kept_on_conversion,
                                                          optimizer_class):
    """Deferred initialisation (FSDP2, torchtitan): an optimizer built on meta parameters; a fused step on meta is
    refused before any state is made; after to_empty() the path is decided from the parameters as they are then
    (fused, also where `fused` was left unset), and the steps match those of one built on real parameters."""
    with torch.device("meta"):
        model = torch.nn.Linear(4, 3)
    opt = optimizer_class(model.parameters(), lr=0.1, fused=fused)
    if fused:
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        with pytest.raises(RuntimeError, match="meta"):
            opt.step()
        assert not opt.state
        model.zero_grad(set_to_none=True)
    model.to_empty(device=device)
    twin_model = torch.nn.Linear(4, 3).to(device)
    twin = optimizer_class(twin_model.parameters(), lr=0.1, fused=fused)
    with torch.no_grad():
        for p, q in zip(model.parameters(), twin_model.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) / 7)
            q.copy_(p)
    assert all(opt._path(g) == "fused" for g in opt.param_groups)
    for _ in range(2):
        for p, q in zip(model.parameters(), twin_model.parameters()):
            p.grad = torch.cos(p.detach())
            q.grad = p.grad.clone()
        opt.step()
        twin.step()
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)


def test_hyperparameters_are_checked_before_params(optimizer_class):
    with pytest.raises(ValueError, match="lr"):
        optimizer_class(None, lr=-1.0)


# ----------------------------------------------------------------------------------------- issue 25: one way to step
def _grad_is_other_groups_param(params, opt):
    params[1].grad = params[0].detach().reshape(-1)[:6]  # a view of a param of group 0


def _grad_overlaps_other_groups_grad(params, opt):
    buf = torch.zeros(30, device=params[0].device)
    params[0].grad = buf[:20].view(5, 4)
    params[1].grad = buf[15:21]  # overlaps group 0's gradient


def _state_view_of_other_groups_state(params, opt):
    opt.state[params[1]]["exp_avg"] = opt.state[params[0]]["exp_avg"].reshape(-1)[:6]


def _grad_is_own_exp_avg(params, opt):
    params[1].grad = opt.state[params[1]]["exp_avg"]


def _param_in_a_second_group(params, opt):
    opt.param_groups[0]["params"].append(params[1])


def _exp_avg_is_a_param(params, opt):
    opt.state[params[1]]["exp_avg"] = params[1].detach()


def _int_param_appended(params, opt):
    opt.param_groups[1]["params"].append(torch.zeros(3, dtype=torch.int64, device=params[0].device))


def _fused_for_float64_state(params, opt):
    for p in params[1:]:
        opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"].double()
        opt.state[p]["exp_var"] = opt.state[p]["exp_var"].double()
    opt.param_groups[1].update(state_dtype=torch.float64, fused=True, foreach=None)


def _master_weights_switched_on(params, opt):
    opt.param_groups[1]["master_weights"] = True


BAD_STEPS = {
    "grad_is_other_groups_param": _grad_is_other_groups_param,
    "grad_overlaps_other_groups_grad": _grad_overlaps_other_groups_grad,
    "state_view_of_other_groups_state": _state_view_of_other_groups_state,
    "grad_is_own_exp_avg": _grad_is_own_exp_avg,
    "param_in_a_second_group": _param_in_a_second_group,
    "exp_avg_is_a_param": _exp_avg_is_a_param,
    "fused_for_float64_state": _fused_for_float64_state,
    "master_weights_for_float32": _master_weights_switched_on,
    "int_param_appended": _int_param_appended,
}
# the foreach path only reads gradients: overlapping ones are fine there; a tensor without a gradient is not stepped
VALID_ON = {"grad_overlaps_other_groups_grad": ("foreach", "single"), "int_param_appended": tuple(PATHS)}


@pytest.mark.parametrize("grad_scale", [False, True])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(BAD_STEPS))
def test_bad_input_across_groups_changes_nothing(device, path, case, grad_scale):
    if grad_scale and path != "fused":
        pytest.skip("GradScaler hands grad_scale to fused=True only")
    params, opt = _stepped(device, path)
    BAD_STEPS[case](params, opt)
    if grad_scale:
        opt.grad_scale, opt.found_inf = torch.tensor(2.0, device=device), torch.tensor(0.0, device=device)
    before = _snapshot(opt)
    if path in VALID_ON.get(case, ()):
        opt.step()
        return
    with pytest.raises((ValueError, RuntimeError, TypeError, NotImplementedError)):
        opt.step()
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("path", list(PATHS))
def test_master_param_view_of_a_param_changes_nothing(device, path):
    params = [torch.nn.Parameter(t.bfloat16()) for t in _model(device)]
    opt = SGDF([{"params": params[:1]}, {"params": params[1:]}], lr=0.05, master_weights=True, **PATHS[path])
    _fill_grads(params, seed=0)
    opt.step()
    _fill_grads(params, seed=1)
    opt.state[params[1]]["master_param"] = opt.state[params[0]]["master_param"].reshape(-1)[:6]
    before = _snapshot(opt)
    with pytest.raises((ValueError, RuntimeError)):
        opt.step()
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("path", list(PATHS))
def test_master_weights_switched_on_before_the_first_step(device, path):
    """Valid for bfloat16 params: the state is made with master copies, as if set at construction."""
    results = []
    for late in (False, True):
        params = [torch.nn.Parameter(t.bfloat16()) for t in _model(device)]
        opt = SGDF(params, lr=0.05, master_weights=not late, **PATHS[path])
        opt.param_groups[0]["master_weights"] = True
        for i in range(2):
            _fill_grads(params, seed=i)
            opt.step()
        results.append(params)
    for p, q in zip(*results):
        assert torch.equal(p, q)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("path", list(PATHS))
def test_conjugate_gradients_step_as_resolved(device, path, groups):
    """A complex gradient with the conjugate bit set steps as the same values without it, on every path."""
    results = []
    for conj_bit in (False, True):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(3, 2, generator=gen, dtype=torch.complex64).to(device)),
                  torch.nn.Parameter(torch.randn(4, generator=gen).to(device))]
        param_groups = params if groups == 1 else [{"params": params[:1]}, {"params": params[1:]}]
        opt = SGDF(param_groups, lr=0.05, **PATHS[path])
        for step in range(3):
            g = torch.randn(3, 2, generator=torch.Generator().manual_seed(step), dtype=torch.complex64).to(device)
            params[0].grad = g.conj().resolve_conj().conj() if conj_bit else g.clone()
            assert params[0].grad.is_conj() == conj_bit
            params[1].grad = torch.ones(4, device=device)
            opt.step()
        results.append([p.detach().clone() for p in params])
    for p, q in zip(*results):
        assert torch.equal(p, q)


@pytest.mark.parametrize("path", list(PATHS))
def test_conjugate_param_is_refused_before_state_is_made(device, path):
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64, device=device).conj())
    assert p.is_conj()
    opt = SGDF([p], lr=0.05, **PATHS[path])
    p.grad = torch.ones_like(p).resolve_conj()
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="conjugate"):
        opt.step()
    _assert_unchanged(opt, before)
    assert p not in opt.state


@pytest.mark.parametrize("options", [dict(), dict(weight_decay=0.1, maximize=True), dict(stochastic_rounding=True)])
def test_foreach_steps_in_chunks_as_in_one_piece(monkeypatch, options):
    """On the CPU the foreach step takes a few tensors at a time (for the cache): bit for bit the same steps."""
    from sgdf_erd.optim import sgdf_functional
    results = []
    for chunk in (1 << 40, 7):
        monkeypatch.setattr(sgdf_functional, "_CPU_CHUNK_ELEMENTS", chunk)
        params = [torch.nn.Parameter(t.bfloat16()) for t in _model("cpu")] + _model("cpu", seed=3)
        opt = SGDF([{"params": params[:3]}, {"params": params[3:], "lr": 0.02}], lr=0.05, foreach=True, **options)
        torch.manual_seed(0)
        for i in range(3):
            _fill_grads(params, seed=i)
            opt.step()
        results.append([p.detach().clone() for p in params] + [opt.state[p]["exp_var"] for p in params])
    for p, q in zip(*results):
        assert torch.equal(p, q)


@pytest.mark.parametrize("case", ["param_in_a_second_group", "master_weights_for_float32",
                                  "grad_is_other_groups_param"])
@pytest.mark.parametrize("path", list(PATHS))
def test_bad_input_before_the_first_step_makes_no_state(device, path, case):
    """The same bad inputs before the first step (when every group's state is still to be made): refused before
    any state is made or anything written."""
    params = _model(device)
    opt = SGDF([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.05, **PATHS[path])
    _fill_grads(params, seed=0)
    BAD_STEPS[case](params, opt)
    before = _snapshot(opt)
    with pytest.raises((ValueError, RuntimeError, TypeError)):
        opt.step()
    _assert_unchanged(opt, before)
    assert not opt.state
