"""The SGDF optimizer's contract for bad and edge input.

Every bad input gets a clear exception (type and a fragment naming the argument), and a call that raises leaves the
optimizer exactly as it was: params, grads, every state tensor bit for bit (step counts included), param_groups and
the optimizer's attributes. Edge inputs that are valid (zero-size params, non-dense views on the default path,
state saved from a channels_last model) must work and match the float64 reference.
"""

import contextlib
import copy
import math
import re
import subprocess
import sys

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgdf_erd import SGDF, AdaSGDF
from tests.devices import requires_cuda
from tests.reference.sgdf_reference import ReferenceSGDF

PATHS = {
    "default": dict(),
    "fused": dict(fused=True),
    "foreach": dict(foreach=True),
    "single": dict(foreach=False),
}


# ----------------------------------------------------------------------------------------- snapshots
def _bits(t: torch.Tensor):
    """Everything that identifies a tensor's contents: metadata and the raw bytes (NaN-safe)."""
    dense = t.detach().to_dense() if t.layout != torch.strided else t.detach()
    raw = dense.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8).clone()
    strides = t.stride() if t.layout == torch.strided else t.layout
    return (t.dtype, tuple(t.shape), strides, t.device, t.is_conj(), t.is_neg(), raw)


def _value(v):
    if isinstance(v, torch.Tensor):
        return ("tensor", id(v), _bits(v))
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(_value(x) for x in v))
    if isinstance(v, float) and math.isnan(v):
        return ("nan",)
    return ("value", v)


def _same(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def _snapshot(opt: SGDF):
    groups = [g if isinstance(g, dict) else {"(not a dict)": g} for g in opt.param_groups]  # (edited by hand)
    lists = [g["params"] for g in groups if type(g.get("params")) in (list, tuple)]
    params = [p for ps in lists for p in ps if isinstance(p, torch.Tensor)]
    return dict(
        attributes=sorted(opt.__dict__),
        amp=getattr(opt, "_step_supports_amp_scaling", None),
        params=[(id(p), _bits(p), None if p.grad is None else (id(p.grad), _bits(p.grad))) for p in params],
        groups=[(id(g), {k: [id(p) for p in v] if k == "params" and type(v) in (list, tuple) else _value(v)
                         for k, v in g.items()}) for g in groups],
        state=sorted(((id(p), {k: _value(v) for k, v in s.items()} if isinstance(s, dict) else repr(s))
                      for p, s in opt.state.items()),
                     key=lambda item: item[0]),
    )


def _assert_unchanged(opt: SGDF, before) -> None:
    after = _snapshot(opt)
    for key in before:
        assert _same(before[key], after[key]), f"the failed call changed the optimizer's {key}"


def _assert_step_refused(opt: SGDF, error, match=None) -> None:
    """opt.step() raises `error` (its message matching `match`) and changes nothing."""
    before = _snapshot(opt)
    with pytest.raises(error, match=match):
        opt.step()
    _assert_unchanged(opt, before)


def _model(device, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 4), (6,), (3, 2, 2)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).to(device))
            for s in shapes]


def _fill_grads(params, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype).to(p.device)


def _stepped(device, path="default", steps=2, groups="two", **options):
    """An optimizer with two groups (or one, or two with the last param in the first) that has taken `steps` steps,
    and fresh grads for the next one."""
    params = _model(device)
    param_groups = {"one": params, "two": [{"params": params[:1]}, {"params": params[1:], "lr": 0.02}],
                    "two_reversed": [{"params": params[1:], "lr": 0.02}, {"params": params[:1]}]}[groups]
    opt = SGDF(param_groups, lr=0.05, **options, **PATHS[path])
    for i in range(steps):
        _fill_grads(params, seed=i)
        opt.step()
    _fill_grads(params, seed=99)
    return params, opt


# ----------------------------------------------------------------------------------------- step is atomic
def _set_later_group(key, value):
    def change(params, opt):
        opt.param_groups[-1][key] = value(params[0].device) if callable(value) else value
    return change


def _reshape_data(params, opt):  # a param replaced by a tensor of another shape after its grad was set
    params[-1].data = torch.zeros(7, device=params[-1].device)


def _retype_data(params, opt):
    params[-1].data = params[-1].data.double()


def _grad_is_param(params, opt):
    params[-1].grad = params[-1].detach()


def _grad_overlaps_param(params, opt):
    p = params[-1]
    buf = torch.zeros(2 * p.numel(), device=p.device)
    p.data = buf[: p.numel()].view(p.shape)
    p.grad = buf[p.numel() // 2: p.numel() // 2 + p.numel()].view(p.shape)


def _complex_orthogonalized(params, opt):
    opt.param_groups[-1]["params"].append(torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.complex64,
                                                                         device=params[0].device)))
    opt.param_groups[-1]["params"][-1].grad = torch.ones(3, 3, dtype=torch.complex64, device=params[0].device)
    opt.param_groups[-1]["orthogonalize"] = True


def _edit_state(key, edit):  # the state of the last param, edited by hand
    def change(params, opt):
        state = opt.state[params[-1]]
        state[key] = edit(state[key])
    return change


BAD_STEPS = {
    "lr_two_elements": (_set_later_group("lr", lambda d: torch.tensor([0.1, 0.2], device=d)), ValueError, "lr"),
    "lr_negative": (_set_later_group("lr", -1.0), ValueError, "lr"),
    "lr_nan": (_set_later_group("lr", float("nan")), ValueError, "lr"),
    "lr_inf": (_set_later_group("lr", float("inf")), ValueError, "lr"),
    # beyond float32 (the arithmetic of every path): foreach refused it midway through the step (probe, F4)
    "lr_beyond_float32": (_set_later_group("lr", 1e39), ValueError, "lr=1e\\+39"),
    "weight_decay_beyond_float32": (_set_later_group("weight_decay", 1e39), ValueError, "weight_decay=1e\\+39"),
    "lr_cpu_tensor_nan": (_set_later_group("lr", lambda d: torch.tensor(float("nan"))), ValueError, "lr"),
    "lr_cpu_tensor_negative": (_set_later_group("lr", lambda d: torch.tensor(-0.1)), ValueError, "lr"),
    "lr_int_tensor": (_set_later_group("lr", lambda d: torch.tensor(1, device=d)), TypeError, "lr"),
    "beta1_one": (_set_later_group("betas", (1.0, 0.999)), ValueError, "betas"),
    "eps_nan": (_set_later_group("eps", float("nan")), ValueError, "eps"),
    "gamma_zero": (_set_later_group("gamma", 0.0), ValueError, "gamma"),
    "weight_decay_inf": (_set_later_group("weight_decay", float("inf")), ValueError, "weight_decay"),
    "ns_steps_one": (_set_later_group("orthogonalize", True), None, None),  # valid: ns_steps stays 5
    "grad_shape": (_reshape_data, ValueError, r"gradient|'grads\["),
    "grad_dtype": (_retype_data, ValueError, "gradient"),
    "grad_is_param": (_grad_is_param, ValueError, r"gradient|'grads\["),
    "grad_overlaps_param": (_grad_overlaps_param, ValueError, r"gradient|'grads\["),
    "complex_orthogonalized": (_complex_orthogonalized, ValueError, "complex"),
    # storage options edited after the state was made: the state no longer fits them
    "state_dtype_edited": (_set_later_group("state_dtype", torch.bfloat16), ValueError, "state"),
    "stochastic_rounding_edited": (_set_later_group("stochastic_rounding", True), ValueError, "stochastic_rounding"),
    "master_weights_edited": (_set_later_group("master_weights", True), ValueError, "master_weights"),
    "master_weights_none": (_set_later_group("master_weights", None), TypeError, "master_weights"),
    "stochastic_rounding_str": (_set_later_group("stochastic_rounding", "no"), TypeError, "stochastic_rounding"),
    # state edited by hand (every entry is checked, also where one kernel call steps the groups)
    "exp_var_reshaped": (_edit_state("exp_var", lambda t: t.reshape(-1)), ValueError, r"'exp_var'|'exp_vars\["),
    "exp_var_float64": (_edit_state("exp_var", lambda t: t.double()), ValueError, r"'exp_var'|'exp_vars\["),
    "step_int": (_edit_state("step", lambda t: t.long()), ValueError, r"'step'|'steps\["),
    "step_two_elements": (_edit_state("step", lambda t: t.repeat(2)), ValueError, r"'step'|'steps\["),
    # a number where a tensor belongs: named as state (the kernel's argument parser would say only "List[Tensor]")
    "step_python_int": (_edit_state("step", lambda t: int(t)), ValueError, "the state of .* holds 'step' as int"),
    "exp_avg_python_list": (_edit_state("exp_avg", lambda t: t.tolist()), ValueError, "holds 'exp_avg' as list"),
    # a param's .data replaced by a tensor a step cannot write in place (found by an adversarial probe: the other
    # group stepped first, then torch refused the write)
    "param_neg_bit": (lambda params, opt: setattr(params[-1], "data", torch._neg_view(-params[-1].data.clone())),
                      ValueError, r"parameter \d of param group \d has the negative bit set"),
    "param_expanded": (lambda params, opt: setattr(params[-1], "data", params[-1].data.flatten()[:1].reshape(
        [1] * params[-1].dim()).expand(params[-1].shape)), ValueError, r"parameter \d of param group \d has elements that share memory"),
    "state_none": (lambda params, opt: opt.state.__setitem__(params[-1], None), ValueError,
                   "the state of .* is NoneType, not a dict"),
    "param_as_strided_overlapping": (lambda params, opt: setattr(params[-1], "data", torch.randn(
        params[-1].numel(), device=params[-1].device).as_strided(params[-1].shape, [1] * params[-1].dim())),
        ValueError, "share memory"),
    "state_list": (lambda params, opt: opt.state.__setitem__(params[-1], [1, 2, 3]), ValueError, "is list, not a dict"),
    "state_int": (lambda params, opt: opt.state.__setitem__(params[-1], 7), ValueError, "is int, not a dict"),
    "state_tensor": (lambda params, opt: opt.state.__setitem__(params[-1], torch.zeros(3)), ValueError,
                     "is Tensor, not a dict"),
    "fused_yes": (_set_later_group("fused", "yes"), TypeError, "`fused` must be True, False or None"),
    "fused_and_foreach": (lambda params, opt: opt.param_groups[-1].update(fused=True, foreach=True), RuntimeError,
                          "cannot both be True"),
    "grad_scale_float": (lambda params, opt: setattr(opt, "grad_scale", 4.0), ValueError, "`grad_scale`"),
    "found_inf_two_elements": (lambda params, opt: setattr(opt, "found_inf", torch.zeros(2)), ValueError,
                               "`found_inf`"),
    # not a tensor, appended to a group by hand (AttributeError: 'list' object has no attribute 'grad' before)
    "params_list_appended": (lambda params, opt: opt.param_groups[-1]["params"].append([1.0]), TypeError,
                             "params must be tensors, got list"),
    # found by an adversarial probe (cases4): a tensor as 'params' was walked as its rows and silently not stepped;
    # the others gave Python's own messages
    "params_a_tensor": (lambda params, opt: opt.param_groups[-1].__setitem__("params", params[-1]), TypeError,
                        "holds 'params' as Parameter; 'params' is a list of tensors"),
    "params_a_generator": (lambda params, opt: opt.param_groups[-1].__setitem__("params", iter(params[1:])),
                           TypeError, "holds 'params' as list_iterator"),
    "params_deleted": (lambda params, opt: opt.param_groups[-1].pop("params"), TypeError, "holds no 'params'"),
    "group_replaced_by_none": (lambda params, opt: opt.param_groups.__setitem__(-1, None), TypeError,
                               "a param group is a dict, got NoneType"),
    # float32, the kernels' arithmetic, rounds these to 1 and to inf: the paths stepped them differently (probe)
    "beta2_one_in_float32": (_set_later_group("betas", (0.9, 0.99999999)), ValueError, "stays below 1 in float32"),
    "eps_beyond_float32": (_set_later_group("eps", 1e39), ValueError, "eps=1e\\+39"),
    # AdaSGDF's option in an SGDF group: the state gained exp_avg_sq, which the kernel refused after earlier groups
    # had stepped (probe)
    "preconditioner_in_sgdf_group": (_set_later_group("preconditioner", "second_moment"), ValueError,
                                     "AdaSGDF's option 'preconditioner'"),
    # a sparse tensor lr failed in a reshape after earlier groups had stepped (probe)
    "lr_sparse_tensor": (_set_later_group("lr", lambda d: torch.tensor([0.01], device=d).to_sparse()), ValueError,
                         "must be dense, got torch.sparse_coo"),
}


# On the fused paths, groups whose state exists are stepped by one kernel call that checks them all before writing
# (its refusals are RuntimeErrors naming the kernel's argument), the others are checked first in Python: a bad
# parameter in the only group, a later group (two) and the first group (two_reversed).
@pytest.mark.parametrize("groups", ["one", "two", "two_reversed"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(BAD_STEPS))
def test_bad_step_changes_nothing(device, path, case, groups):
    change, exc, match = BAD_STEPS[case]
    params, opt = _stepped(device, path, groups=groups)
    change(params, opt)
    if exc is None:
        opt.step()
        return
    _assert_step_refused(opt, _refusal(exc, path), match=match)


def _refusal(exc, path):
    """What a refusal raises: on the fused paths the kernel's checks may be the ones that refuse (RuntimeError)."""
    return (exc, RuntimeError) if path in ("default", "fused") else exc


@pytest.mark.parametrize("path", ["fused", "foreach"])
@pytest.mark.parametrize("edit,match", [
    (_edit_state("rounding_seed", lambda seed: 2**32), r"'rounding_seed'|'rounding_seeds\["),
    (_edit_state("rounding_seed", lambda seed: float(seed)), "'rounding_seed'"),
    (_edit_state("master_param", lambda t: t.half()), r"'master_param'|'master_params\["),
    (_edit_state("master_param", lambda t: t[:1]), r"'master_param'|'master_params\["),
    (_edit_state("rounding_seed", lambda seed: True), "'rounding_seed'"),
    (_edit_state("rounding_seed", lambda seed: torch.tensor(3)), "'rounding_seed'"),
], ids=["seed_out_of_range", "seed_float", "master_float16", "master_reshaped", "seed_bool", "seed_tensor"])
def test_storage_state_edited_by_hand_in_a_later_group_changes_nothing(device, path, edit, match):
    """bfloat16 params with master copies and stochastic rounding in two groups: state a later group's kernel (or
    foreach step) would refuse is refused before the first group steps."""
    params = _model(device, torch.bfloat16)
    opt = SGDF([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.05, master_weights=True,
               stochastic_rounding=True, **PATHS[path])
    for i in range(2):
        _fill_grads(params, seed=i)
        opt.step()
    edit(params, opt)
    _assert_step_refused(opt, _refusal(ValueError, path), match=match)


@pytest.mark.parametrize("stepped_before", [False, True])  # True: the first group is stepped by one kernel call
@pytest.mark.parametrize("same_group", [False, True])
def test_overlapping_grads_of_fused_params_are_refused(device, stepped_before, same_group):
    """Gradients that are overlapping views of one buffer, in a later group (which steps after the first) or across
    groups (each kernel call sees only its own): refused before anything changes."""
    a, b, c = (torch.nn.Parameter(torch.randn(4, device=device)) for _ in range(3))
    opt = SGDF([{"params": [a]}, {"params": [b, c]}], fused=True)
    if stepped_before:
        for p in (a, b, c):
            p.grad = torch.ones(4, device=device)
        opt.step()
    buf = torch.ones(6, device=device)
    a.grad = torch.ones(4, device=device) if same_group else buf[:4]
    b.grad, c.grad = buf[2:], torch.ones(4, device=device) if not same_group else buf[:4]
    _assert_step_refused(opt, _refusal(ValueError, "fused"), match="share memory")


def test_grads_as_disjoint_views_of_one_buffer_step(device):
    """Gradients that are disjoint views of one buffer (DDP's gradient_as_bucket_view) are fine, across groups and
    within one: the steps equal those with separate gradients."""
    results = []
    for bucket in (True, False):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, device=device)) for _ in range(3)]
        opt = SGDF([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], fused=True)
        for step in range(3):
            values = torch.randn(12, generator=torch.Generator().manual_seed(step)).to(device)
            buf = values.clone() if bucket else None
            for i, p in enumerate(params):
                p.grad = buf[4 * i: 4 * i + 4] if bucket else values[4 * i: 4 * i + 4].clone()
            opt.step()
        results.append([p.detach().clone() for p in params])
    for got, want in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.parametrize("path", ["fused", "foreach"])
def test_state_tensor_serving_two_params_is_refused(device, path):
    """A state tensor edited by hand into the state of a param of another group would be stepped twice."""
    params = [torch.nn.Parameter(torch.randn(5, 4, device=device)) for _ in range(2)]
    opt = SGDF([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.05, **PATHS[path])
    for i in range(2):
        _fill_grads(params, seed=i)
        opt.step()
    opt.state[params[1]]["exp_var"] = opt.state[params[0]]["exp_var"]
    _assert_step_refused(opt, _refusal(ValueError, path), match="same tensor")


def _other_layout(t):
    return t.T.contiguous().T


def _with_gaps(t):
    return torch.zeros(t.shape[0], 2 * t.shape[1], dtype=t.dtype, device=t.device)[:, ::2].copy_(t)


@pytest.mark.parametrize("key,edit", [("exp_var", _other_layout), ("master_param", _other_layout),
                                      ("exp_var", _with_gaps), ("master_param", _with_gaps)],
                         ids=["exp_var_other_layout", "master_other_layout", "exp_var_with_gaps", "master_with_gaps"])
def test_state_in_another_layout_is_converted_and_steps(device, key, edit):
    """An exp_var or master copy edited by hand into another memory layout (or a view with gaps) in a later group
    is converted to the layout the kernel walks (as for a model converted after stepping:
    test_model_converted_to_channels_last_after_stepping_keeps_stepping) and steps as the unedited state would
    (it was refused before, where foreach stepped it)."""
    results = []
    for edited in (False, True):
        params = [torch.nn.Parameter(torch.randn(4, 5, generator=torch.Generator().manual_seed(i))
                                     .to(torch.bfloat16).to(device)) for i in range(2)]
        opt = SGDF([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.05, master_weights=True)
        _fill_grads(params, seed=0)
        opt.step()
        if edited:
            state = opt.state[params[1]]
            state[key] = edit(state[key])
        _fill_grads(params, seed=1)
        opt.step()
        results.append([p.detach().clone() for p in params] + [opt.state[params[1]][key].clone()])
    for got, want in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.parametrize("second_starts", [0, 1])
@pytest.mark.parametrize("path", ["foreach", "single"])
def test_one_grad_shared_by_params_of_two_groups_steps_where_only_read(device, path, second_starts):
    """foreach and single-tensor steps only read gradients, so one gradient may serve params of two groups (after
    the first step the kernel's call checks these groups too, without stepping them; with `second_starts` 1 the
    second group, without state at step 1, is checked in Python then, beside the first in the kernel's call): the
    steps equal those with a copy each."""
    results = []
    for shared in (True, False):
        params = [torch.nn.Parameter(torch.randn(4, generator=torch.Generator().manual_seed(i)).to(device))
                  for i in range(2)]
        opt = SGDF([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.05, **PATHS[path])
        for step in range(3):
            grad = torch.randn(4, generator=torch.Generator().manual_seed(10 + step)).to(device)
            params[0].grad, params[1].grad = (grad, grad) if shared else (grad, grad.clone())
            if step < second_starts:
                params[1].grad = None
            opt.step()
        results.append([p.detach().clone() for p in params])
    for got, want in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.parametrize("orthogonalize", [False, True])  # True: the later group is checked in Python
@pytest.mark.parametrize("path", list(PATHS))
def test_tensor_lr_sharing_memory_with_its_groups_state_changes_nothing(device, path, orthogonalize):
    """A tensor `lr` that views a state tensor of its group would be read while the step writes it: refused, on
    every path, before anything changes (the kernel's call refused it for the groups it checks, the Python checks
    did not, so foreach stepped on the first path and an earlier group stepped before the refusal on the other)."""
    params, opt = _stepped(device, path)
    opt.param_groups[-1]["orthogonalize"] = orthogonalize
    exp_avg = opt.state[params[-1]]["exp_avg"]
    exp_avg.view(-1)[0] = 0.01
    opt.param_groups[-1]["lr"] = exp_avg.view(-1)[0]
    _assert_step_refused(opt, ValueError, match="`lr` of param group 1 and 'exp_avg'")


@pytest.mark.parametrize("path", list(PATHS))
def test_tensor_lr_viewing_a_param_of_its_group_is_refused_on_the_first_step(device, path):
    """On the first step (groups checked in Python) too: the single-tensor path reads the lr again for each param,
    after writing the earlier ones (a silently wrong step), and a later fused group's own kernel call refused it
    after the first group stepped."""
    params, opt = _stepped(device, path, steps=0)
    with torch.no_grad():
        params[-1].view(-1)[0] = 0.01
    opt.param_groups[-1]["lr"] = params[-1].detach().view(-1)[0]
    _assert_step_refused(opt, ValueError, match="`lr` of param group 1 and parameter 1 of param group 1")


@pytest.mark.parametrize("stepped_before", [False, True])  # True: the groups are checked by one kernel call
@pytest.mark.parametrize("path", ["default", "fused"])
def test_grad_scale_sharing_memory_with_a_later_groups_grad_changes_nothing(device, path, stepped_before):
    """The fused kernel unscales gradients in place by `grad_scale`: one sharing memory with a gradient of a later
    group is refused before the first group steps."""
    params, opt = _stepped(device, path, steps=2 if stepped_before else 0)
    params[-1].grad.view(-1)[0] = 2.0
    opt.grad_scale, opt.found_inf = params[-1].grad.view(-1)[0], torch.zeros((), device=device)
    _assert_step_refused(opt, ValueError, match="`grad_scale` and the gradient of parameter 1 of param group 1")


@pytest.mark.parametrize("groups", ["one", "two"])
@pytest.mark.parametrize("path", list(PATHS))
def test_tensor_lr_with_the_negative_bit_steps_as_its_value(device, path, groups):
    """A tensor `lr` that is a lazily negated view (of a negative number) is the positive number it reads as: the
    kernel's call, which reads its memory, refused it as negative on the groups it checks after the first step."""
    results = []
    for negated in (True, False):
        params, opt = _stepped(device, path, groups=groups)
        lr = torch._neg_view(torch.tensor(-0.03, device=device)) if negated else torch.tensor(0.03, device=device)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        results.append([p.detach().clone() for p in params])
    for got, want in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.parametrize("steps", [0, 2])  # 2: the groups are checked by one kernel call
@pytest.mark.parametrize("path", list(PATHS))
def test_efficient_zero_grad_in_a_later_group(device, path, steps):
    """An efficient zero gradient (torch._efficientzerotensor), which torch's dispatch refuses to the kernel as an
    argument it may write: the fused paths refuse it before anything changes (the first group stepped first), the
    foreach and single-tensor paths step it as zeros (the kernel's call refused it after the first step)."""
    results = []
    for zero in (torch._efficientzerotensor, torch.zeros):
        params, opt = _stepped(device, path, steps=steps)
        params[-1].grad = zero(params[-1].shape, device=device)
        if path in ("default", "fused") and zero is torch._efficientzerotensor:
            _assert_step_refused(opt, ValueError, match="gradient of parameter 1 of param group 1 is an efficient zero")
            return
        opt.step()
        results.append([p.detach().clone() for p in params])
    for got, want in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.parametrize("path", list(PATHS))
def test_step_count_of_another_dtype_is_refused_naming_where_it_belongs(device, path):
    """The message names the device(s) a step count may be on: the parameter's, or the CPU too for a group that
    keeps them on the host (not capturable, not fused) with params elsewhere."""
    params, opt = _stepped(device, path)
    opt.state[params[-1]]["step"] = opt.state[params[-1]]["step"].double()
    on_host = path in ("foreach", "single") and device.type != "cpu"
    places = f"{'the CPU or ' if on_host else ''}{params[-1].device}"
    with pytest.raises(ValueError, match=re.escape(f"tensor on {places}:")):
        opt.step()


@requires_cuda
@pytest.mark.parametrize("path", ["foreach", "single"])
def test_step_counts_on_host_and_device_in_one_group_step(path):
    """A non-capturable group off the fused path keeps its step counts on the host, and the checks accept one on
    the parameter's device too (e.g. from a time the group was fused): such a group steps, whichever param comes
    first (the kernel's call, which takes step counts only on the device, leaves these groups to the Python
    checks)."""
    results = []
    for moved in (True, False):
        params = _model("cuda")
        opt = SGDF([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.05, **PATHS[path])
        for step in range(3):
            _fill_grads(params, seed=step)
            opt.step()
            if moved and step == 0:
                opt.state[params[1]]["step"] = opt.state[params[1]]["step"].cuda()  # the first of its group
        results.append([p.detach().clone() for p in params])
    for got, want in zip(*results):
        assert torch.equal(got, want)


class _OwnOpsTensor(torch.Tensor):
    """A tensor subclass that runs torch's ops on the tensor it wraps and knows no other op, as torchao's do."""

    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype, device=elem.device,
                                                   strides=elem.stride())

    def __init__(self, elem):
        self.elem = elem

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func.namespace != "aten":
            raise NotImplementedError(f"{cls.__name__} does not implement {func}")
        unwrap = lambda t: t.elem if isinstance(t, cls) else t  # noqa: E731
        out = func(*pytree.tree_map(unwrap, args), **pytree.tree_map(unwrap, kwargs or {}))
        returns = func._schema.returns
        if not returns:
            return None
        if returns[0].alias_info is not None and returns[0].alias_info.is_write:  # in place: the tensor written
            return args[0]
        return pytree.tree_map_only(torch.Tensor, cls, out)


@pytest.mark.parametrize("path", ["foreach", "single"])
def test_params_of_a_subclass_that_runs_its_own_ops_step_on_foreach_paths(device, path):
    """Tensor subclasses that implement torch's ops (the foreach paths' ops) but not the kernel's step on those paths
    at every step, as plain tensors do (the kernel's call, which checks such groups once they have state, leaves
    them to the Python checks)."""
    results = []
    for wrap in (True, False):
        params = [torch.nn.Parameter(_OwnOpsTensor(p.detach()) if wrap else p.detach()) for p in _model(device)]
        opt = SGDF([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.05, **PATHS[path])
        for step in range(3):
            _fill_grads(params, seed=step)
            if wrap:
                for p in params:
                    p.grad = _OwnOpsTensor(p.grad)
            opt.step()
        results.append([p.elem if wrap else p.detach() for p in params])
    for got, want in zip(*results):
        assert torch.equal(got, want)


def test_params_of_a_subclass_that_runs_its_own_ops_are_refused_by_fused_and_step_foreach_by_default(device):
    """The kernel's op is unknown to such a subclass: fused=True refuses its params when the group joins, and the
    default path steps them on foreach (beside a plain group the kernel's call steps), as plain tensors step."""
    with pytest.raises(NotImplementedError, match="_OwnOpsTensor parameters .* runs torch's ops itself"):
        SGDF([torch.nn.Parameter(_OwnOpsTensor(torch.zeros(3, device=device)))], fused=True)
    results = []
    for wrap in (True, False):
        params = _model(device)
        wrapped = [torch.nn.Parameter(_OwnOpsTensor(p.detach()) if wrap else p.detach()) for p in params[1:]]
        path = {} if wrap else {"foreach": True}  # (the foreach path's rounding, not the kernel's)
        opt = SGDF([{"params": params[:1]}, {"params": wrapped, "lr": 0.02, **path}], lr=0.05)
        for step in range(3):
            _fill_grads(params[:1] + wrapped, seed=step)
            if wrap:
                for p in wrapped:
                    p.grad = _OwnOpsTensor(p.grad)
            opt.step()
        results.append([params[0].detach()] + [p.elem if wrap else p.detach() for p in wrapped])
    for got, want in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.parametrize("path", ["default", "fused"])
def test_frozen_params_of_a_subclass_that_runs_its_own_ops_leave_the_group_fused(device, path):
    """A frozen parameter of such a subclass (a quantized base weight passed along with model.parameters()) is never
    stepped: the group is built with fused=True and its other params step fused by default, as without it (it was
    refused, and sent the whole group to foreach). Given a gradient, it is refused at that step, changing nothing."""
    results = []
    for frozen in (False, True):  # (the frozen one last: its optimizer is used below)
        params = _model(device)
        base = [torch.nn.Parameter(_OwnOpsTensor(torch.zeros(4, device=device)), requires_grad=False)] * frozen
        opt = SGDF([{"params": params[:1]}, {"params": base + params[1:], "lr": 0.02}], lr=0.05, **PATHS[path])
        for step in range(3):
            _fill_grads(params, seed=step)
            opt.step()
        assert opt._path(opt.param_groups[1]) == "fused"
        results.append([p.detach() for p in params])
    for got, want in zip(*results):
        assert torch.equal(got, want)
    base[0].requires_grad_(True)
    base[0].grad = _OwnOpsTensor(torch.ones(4, device=device))
    _fill_grads(params, seed=3)
    if path == "default":  # (the group goes to foreach, the subclass's ops)
        assert opt._path(opt.param_groups[1]) == "foreach"
        opt.step()
        assert int(opt.state[base[0]]["step"]) == 1
        return
    _assert_step_refused(opt, NotImplementedError, match="_OwnOpsTensor parameters .* runs torch's ops itself")


@pytest.mark.parametrize("steps", [0, 2])
@pytest.mark.parametrize("path", list(PATHS))
def test_grad_of_a_subclass_that_runs_its_own_ops_for_a_plain_param_is_refused(device, path, steps):
    """A gradient that runs torch's ops itself (TwoTensor: every op once per tensor it holds) for a plain parameter
    was stepped twice per step on the kernel's paths and wrongly on the others (the state updated once per held
    tensor); it is refused on every path, first step or later, before anything changes."""
    from torch.testing._internal.two_tensor import TwoTensor
    params, opt = _stepped(device, path, steps=steps)
    params[-1].grad = TwoTensor(params[-1].grad, params[-1].grad.clone())
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=r"gradient of parameter 1 of param group 1 is a TwoTensor, a tensor subclass "
                                         r"that runs torch's ops itself"):
        opt.step()
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("path", ["default", "fused"])
def test_step_traced_with_fake_tensors_runs_the_kernel(device, path):
    """torch's tracing tensors (FakeTensor here, as torch.optim.swap_in_optimizer_params_and_state's make_fx recipe
    gives a step) run the kernel's op through its fake implementation: they are not subclasses that may not know it.
    The traced step calls the kernel, and the live optimizer is unchanged (fused=True refused them, and the default
    path sent them to foreach, which cannot be traced with host step counts, when they counted as such subclasses)."""
    from torch._subclasses import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    params = _model(device)
    opt = SGDF([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.05, **PATHS[path])
    _fill_grads(params, seed=0)
    opt.step()
    _fill_grads(params, seed=1)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    with fake_mode:
        fakes = {str(i): fake_mode.from_tensor(p) for i, p in enumerate(params)}
        for p, fake in zip(params, fakes.values()):
            fake.grad = fake_mode.from_tensor(p.grad)
        fake_state = torch.utils._pytree.tree_map_only(torch.Tensor, fake_mode.from_tensor, opt.state_dict())

    def step(live, state_dict):
        with torch.optim.swap_in_optimizer_params_and_state(opt, live, state_dict):
            opt.step()
        return live, state_dict

    before = _snapshot(opt)
    traced = make_fx(step)(fakes, fake_state)
    _assert_unchanged(opt, before)
    assert any(str(node.target).startswith("sgdf_erd.fused_sgdf") for node in traced.graph.nodes)


@pytest.mark.parametrize("path", list(PATHS))
def test_param_emptied_after_stepping_is_skipped_on_every_path(device, path):
    """A param whose .data was replaced by an empty tensor keeps its (stale) state and is skipped, as every empty
    param is, beside a group the kernel's call checks (it refused the stale state there, where foreach skipped)."""
    params, opt = _stepped(device, path)
    params[-1].data = torch.zeros(0, device=device)
    params[-1].grad = torch.zeros(0, device=device)
    stale = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[params[-1]].items()}
    expected = [p.detach().clone() for p in params[:-1]]
    opt.step()
    assert not any(torch.equal(p.detach(), e) for p, e in zip(params[:-1], expected))  # the others stepped
    for key, value in opt.state[params[-1]].items():
        assert torch.equal(value, stale[key]) if isinstance(value, torch.Tensor) else value == stale[key]


@pytest.mark.parametrize("stepped_before", [False, True])  # True: the first group is stepped by one kernel call
def test_one_grad_shared_by_two_fused_params_is_refused(device, stepped_before):
    """The fused kernel unscales gradients in place, so a shared one would be unscaled twice."""
    a, b = (torch.nn.Parameter(torch.randn(4, device=device)) for _ in range(2))
    opt = SGDF([{"params": [a]}, {"params": [b]}], fused=True)
    if stepped_before:
        a.grad, b.grad = torch.ones(4, device=device), torch.ones(4, device=device)
        opt.step()
    a.grad = b.grad = torch.ones(4, device=device)
    _assert_step_refused(opt, _refusal(ValueError, "fused"), match="share memory")


def test_ns_steps_checked_at_step(device):
    params, opt = _stepped(device)
    opt.param_groups[-1].update(orthogonalize=True, ns_steps=1)
    _assert_step_refused(opt, ValueError, match="ns_steps")


@pytest.mark.parametrize("path", list(PATHS))
def test_sparse_grad_in_a_later_group_changes_nothing(device, path):
    params, opt = _stepped(device, path)
    emb = torch.nn.Embedding(10, 3, sparse=True).to(device)
    opt.add_param_group({"params": emb.parameters()})
    emb(torch.tensor([1, 2], device=device)).sum().backward()
    _assert_step_refused(opt, RuntimeError, match="sparse")


def test_param_and_grad_in_one_buffer_without_overlap_step(device):
    """Memory shared is not memory overlapping: a flat buffer holding a param and, after it, its gradient."""
    buf = torch.zeros(8, device=device)
    p = torch.nn.Parameter(buf[:4])
    opt = SGDF([p], lr=0.5)
    p.grad = buf[4:]
    p.grad.fill_(1.0)
    opt.step()
    assert torch.equal(p.detach().cpu(), torch.full((4,), -0.5))  # the first update is the raw gradient


def test_state_of_a_param_changed_after_stepping_is_refused(device):
    params, opt = _stepped(device)
    params[-1].data = params[-1].data.double()
    params[-1].grad = torch.ones_like(params[-1])
    _assert_step_refused(opt, ValueError, match="state")


@pytest.mark.parametrize("path", list(PATHS))
def test_zero_size_params_are_skipped(device, path):
    """orthogonalize=True used to divide by zero on a (0, n) matrix after the other params had stepped."""
    params = _model(device) + [torch.nn.Parameter(torch.zeros(0, 4, device=device)),
                               torch.nn.Parameter(torch.zeros(3, 0, device=device))]
    opt = SGDF(params, lr=0.05, orthogonalize=True, **PATHS[path])
    ref = ReferenceSGDF(params[:3], lr=0.05, orthogonalize=True)
    for i in range(3):
        _fill_grads(params, seed=i)
        opt.step()
        ref.step([p.grad.cpu() for p in params[:3]])
    for p, q in zip(params[:3], ref.p):
        torch.testing.assert_close(p.detach().cpu().double(), q, rtol=2e-5, atol=2e-5)
    assert params[3] not in opt.state and params[4] not in opt.state


# ----------------------------------------------------------------------------------------- duplicates
def test_duplicate_param_in_one_group_is_refused(device):
    p = _model(device)[0]
    with pytest.raises(ValueError, match="only once"):
        SGDF([p, p])


def test_duplicate_param_across_groups_is_refused(device):
    p, q, _ = _model(device)
    with pytest.raises(ValueError, match="only once"):
        SGDF([{"params": [p, q]}, {"params": [p]}])


def test_overlapping_views_are_refused(device):
    base = torch.zeros(10, device=device)
    with pytest.raises(ValueError, match="share memory"):
        SGDF([base[:6], base[4:]])


def test_add_param_group_with_a_present_param_changes_nothing(device):
    params, opt = _stepped(device)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="only once"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, device=device)), params[1]]})
    _assert_unchanged(opt, before)


# ----------------------------------------------------------------------------------------- add_param_group
BAD_GROUPS = {
    "lr_negative": (dict(lr=-5.0), ValueError, "lr"),
    "lr_tensor_nan": (dict(lr=torch.tensor(float("nan"))), ValueError, "lr"),
    "lr_tensor_negative": (dict(lr=torch.tensor(-1.0)), ValueError, "lr"),
    "betas_one": (dict(betas=(1.0, 0.999)), ValueError, "betas"),
    "gamma_negative": (dict(gamma=-1.0), ValueError, "gamma"),
    "fused_and_foreach": (dict(fused=True, foreach=True), RuntimeError, "fused"),
    "int_param": (dict(params=[torch.zeros(3, dtype=torch.int64)]), TypeError, "floating point"),
    "complex_orthogonalized": (dict(params=[torch.zeros(3, 3, dtype=torch.complex64)], orthogonalize=True),
                               ValueError, "complex"),
    "no_params": (dict(params=None), TypeError, "params"),
    "non_leaf": (dict(params=[torch.ones(2, requires_grad=True) * 2]), ValueError, "leaf"),
    "params_missing": ("drop", ValueError, "params"),
    "adasgdf_preconditioner": (dict(preconditioner="second_moment"), ValueError, "AdaSGDF's option 'preconditioner'"),
}


@pytest.mark.parametrize("case", list(BAD_GROUPS))
def test_rejected_group_changes_nothing_and_is_not_stepped(device, case):
    options, exc, match = BAD_GROUPS[case]
    params, opt = _stepped(device)
    new = torch.nn.Parameter(torch.ones(4, device=device))
    group = {"params": [new]}
    if options == "drop":
        group = {"lr": 0.1}
    else:
        group.update({k: v.to(device) if isinstance(v, torch.Tensor) and k != "lr" else v
                      for k, v in options.items()})
        group["params"] = [p.to(device) for p in group["params"]] if group["params"] is not None else None
    before = _snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.add_param_group(group)
    _assert_unchanged(opt, before)
    new.grad = torch.ones_like(new)
    opt.step()
    assert torch.equal(new, torch.ones_like(new)) and new not in opt.state


@pytest.mark.parametrize("lr", [float("nan"), -0.1], ids=["nan", "negative"])
def test_tensor_lr_checked_at_construction(device, lr):
    with pytest.raises(ValueError, match="lr"):
        SGDF(_model(device), lr=torch.tensor(lr, device=device))


# ----------------------------------------------------------------------------------------- load_state_dict
def _saved(device, path="default"):
    params, opt = _stepped(device, path)
    return params, opt, copy.deepcopy(opt.state_dict())


def _drop_exp_var(sd):
    del sd["state"][1]["exp_var"]


def _reverse_state(sd):  # params in another order
    sd["state"] = {i: sd["state"][2 - i] for i in range(3)}


def _set_step(value):
    def change(sd):
        sd["state"][0]["step"] = value
    return change


def _set_group(key, value):
    def change(sd):
        sd["param_groups"][1][key] = value
    return change


def _unknown_param(sd):
    sd["state"][17] = copy.deepcopy(sd["state"][0])


def _state_not_tensor(sd):
    sd["state"][0]["exp_avg"] = [0.0] * 20


def _one_group(sd):
    sd["param_groups"] = sd["param_groups"][:1]


def _group_size(sd):
    sd["param_groups"][1]["params"] = sd["param_groups"][1]["params"][:1]


def _no_groups(sd):
    del sd["param_groups"]


def _group_without_params(sd):
    del sd["param_groups"][0]["params"]


BAD_CHECKPOINTS = {
    "betas_one": (_set_group("betas", (1.0, 0.999)), ValueError, "betas"),
    "lr_negative": (_set_group("lr", -5.0), ValueError, "lr"),
    "lr_tensor_nan": (_set_group("lr", torch.tensor(float("nan"))), ValueError, "lr"),
    "exp_var_missing": (_drop_exp_var, ValueError, "exp_var"),
    "params_reordered": (_reverse_state, ValueError, "shape"),
    "step_negative": (_set_step(torch.tensor(-1.0)), ValueError, "step"),
    "step_nan": (_set_step(float("nan")), ValueError, "step"),
    "step_inf": (_set_step(torch.tensor(float("inf"))), ValueError, "step"),
    "step_two_elements": (_set_step(torch.tensor([1.0, 2.0])), ValueError, "step"),
    "step_string": (_set_step("3"), TypeError, "step"),
    "unknown_param": (_unknown_param, ValueError, "17"),
    "state_not_tensor": (_state_not_tensor, TypeError, "exp_avg"),
    "group_count": (_one_group, ValueError, "param groups"),
    "group_size": (_group_size, ValueError, "group 1"),
    "no_param_groups": (_no_groups, ValueError, "param_groups"),
    "group_without_params": (_group_without_params, ValueError, "'params'"),
    # found by an adversarial probe (cases4): Python's AttributeError ('list' object has no attribute 'items'); an
    # AdaSGDF checkpoint made SGDF keep exp_avg_sq, which the kernel refused at every step
    "state_a_list": (lambda sd: sd.__setitem__("state", list(sd["state"].values())), TypeError,
                     "'state' is list, not a dict"),
    "param_groups_none": (lambda sd: sd.__setitem__("param_groups", None), TypeError, "'param_groups' is NoneType"),
    "adasgdf_preconditioner": (_set_group("preconditioner", "variance"), ValueError,
                               "AdaSGDF's option 'preconditioner'"),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_changes_nothing(device, path, case):
    change, exc, match = BAD_CHECKPOINTS[case]
    params, opt, sd = _saved(device, path)
    change(sd)
    before = _snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, before)
    opt.step()  # still works, and gives finite numbers
    assert all(torch.isfinite(p).all() for p in params)


def test_loaded_state_is_owned_by_the_optimizer(device):
    """Stepping after a load does not write into the checkpoint's tensors."""
    params, opt, sd = _saved(device)
    kept = copy.deepcopy(sd)
    opt.load_state_dict(sd)
    opt.step()
    assert _same(_value(sd["state"][0]["exp_avg"])[2], _value(kept["state"][0]["exp_avg"])[2])


# ----------------------------------------------------------------------------------------- valid setups
def _non_dense_model(device):
    gen = torch.Generator().manual_seed(5)
    dense = torch.nn.Parameter(torch.randn(5, 4, generator=gen).to(device))
    base32 = torch.randn(6, 8, generator=gen).to(device)
    base64 = torch.randn(9, 6, generator=gen, dtype=torch.float64).to(device)
    return [dense, torch.nn.Parameter(base32[:, ::2]), torch.nn.Parameter(base64.T[1:, ::3])]


@pytest.mark.parametrize("path", ["default", "foreach", "single"])
def test_non_dense_params_work_on_every_non_explicit_path(device, path):
    params = _non_dense_model(device)
    assert not params[1].is_contiguous() and not params[2].is_contiguous()
    opt = SGDF([{"params": params[:1]}, {"params": params[1:]}], lr=0.05, weight_decay=1e-3, **PATHS[path])
    if path == "default":
        assert all(opt._path(g) == "fused" for g in opt.param_groups)
    ref = ReferenceSGDF(params, lr=0.05, weight_decay=1e-3)
    for i in range(5):
        _fill_grads(params, seed=i)
        opt.step()
        ref.step([p.grad.cpu() for p in params])
    for p, q in zip(params, ref.p):
        torch.testing.assert_close(p.detach().cpu().double(), q, rtol=2e-5, atol=2e-5)
    assert all(float(opt.state[p]["step"]) == 5 for p in params)


def test_views_with_gaps_leave_the_other_groups_to_one_call(device, monkeypatch):
    """Two default groups, the second with a view with gaps: the first steps in the one kernel call from its second
    step on, the second (stepped on a dense copy) is checked in Python at every step; both step like the
    reference and nothing is ever refused."""
    params = _non_dense_model(device)[:2]  # float32: a dense param and a strided view
    opt = SGDF([{"params": params[:1]}, {"params": params[1:]}], lr=0.05)
    ref = ReferenceSGDF(params, lr=0.05)
    in_one_call = []
    attempt = opt._step_in_one_call
    monkeypatch.setattr(opt, "_step_in_one_call",
                        lambda plan, *args: in_one_call.append(list(plan)) or attempt(plan, *args))
    for i in range(4):
        _fill_grads(params, seed=i)
        opt.step()
        ref.step([p.grad.cpu() for p in params])
    assert in_one_call == [[0]] * 3  # step 1 makes the state
    for p, q in zip(params, ref.p):
        torch.testing.assert_close(p.detach().cpu().double(), q, rtol=2e-5, atol=2e-5)


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_views_step_like_the_reference_on_the_default_path(device, shape, data, dtype, seed):
    every = data.draw(st.lists(st.integers(1, 3), min_size=len(shape), max_size=len(shape)), label="every")
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn([n * k for n, k in zip(shape, every)], generator=gen, dtype=torch.float64)
    view = base.to(dtype).to(device)[tuple(slice(None, None, k) for k in every)]
    if data.draw(st.booleans(), label="transpose"):
        view = view.transpose(0, -1)
    params = [torch.nn.Parameter(view), torch.nn.Parameter(torch.randn(4, generator=gen).to(dtype).to(device))]
    opt = SGDF(params, lr=0.05, weight_decay=1e-3)
    ref = ReferenceSGDF(params, lr=0.05, weight_decay=1e-3)
    for i in range(3):
        _fill_grads(params, seed=seed + i)
        opt.step()
        ref.step([p.grad.cpu() for p in params])
    tol = 2e-5 if dtype == torch.float32 else 1e-10
    for p, q in zip(params, ref.p):
        torch.testing.assert_close(p.detach().cpu().double(), q, rtol=tol, atol=tol)


def test_explicit_fused_refuses_non_dense_params_at_construction(device):
    params = _non_dense_model(device)
    with pytest.raises(ValueError, match="foreach=True"):
        SGDF(params, fused=True)
    opt = SGDF(params[:1], fused=True)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="dense"):
        opt.add_param_group({"params": params[1:]})
    _assert_unchanged(opt, before)


def test_non_dense_param_with_grad_scaler_skips_and_unscales(device):
    params = _non_dense_model(device)[:2]
    opt = SGDF(params, lr=0.05)
    assert not opt._step_supports_amp_scaling  # the default path: the scaler unscales before the step
    ref = ReferenceSGDF(params, lr=0.05)
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**4, growth_interval=1000)
    for i in range(4):
        _fill_grads(params, seed=i)
        true_grads = [p.grad.cpu().double() for p in params]
        for p in params:
            p.grad = scaler.scale(p.grad)
        if i == 2:
            params[1].grad[0, 0] = float("inf")
            before = _snapshot(opt)
        scaler.step(opt)
        scaler.update()
        if i == 2:
            for p, (_, bits, _) in zip(params, before["params"]):
                assert _same(_bits(p), bits)
            assert float(opt.state[params[1]]["step"]) == 2
        else:
            ref.step(true_grads)
    for p, q in zip(params, ref.p):
        torch.testing.assert_close(p.detach().cpu().double(), q, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("path", ["default", "fused"])
def test_channels_last_state_resumes_into_a_contiguous_model(device, path):
    conv = torch.nn.Conv2d(3, 4, 3).to(device).to(memory_format=torch.channels_last)
    opt = SGDF(conv.parameters(), lr=0.05, **PATHS[path])
    conv(torch.randn(2, 3, 6, 6, device=device).to(memory_format=torch.channels_last)).sum().backward()
    opt.step()
    assert opt.state[conv.weight]["exp_avg"].stride() == conv.weight.stride()
    contiguous = copy.deepcopy(conv).to(memory_format=torch.contiguous_format)
    assert contiguous.weight.is_contiguous()
    resumed = SGDF(contiguous.parameters(), lr=0.05, **PATHS[path])
    resumed.load_state_dict(opt.state_dict())
    for p in contiguous.parameters():
        for key in ("exp_avg", "exp_var"):
            assert resumed.state[p][key].stride() == p.stride()
    contiguous(torch.randn(2, 3, 6, 6, device=device)).sum().backward()
    resumed.step()
    assert float(resumed.state[contiguous.weight]["step"]) == 2


@pytest.mark.parametrize("dtype,options", [
    (torch.float32, {}),
    (torch.float32, dict(state_dtype=torch.bfloat16)),
    (torch.bfloat16, dict(master_weights=True)),  # (stochastic rounding numbers elements in memory order)
], ids=["plain", "bf16_state", "master_weights"])
def test_model_converted_to_channels_last_after_stepping_keeps_stepping(device, dtype, options):
    """The state (master copies included) takes the new layout and keeps its dtype and values: the step after the
    conversion is the step of a model that never changed layout (up to the order of rounding)."""
    convs = [torch.nn.Conv2d(3, 4, 3).to(device=device, dtype=dtype) for _ in range(2)]
    convs[1].load_state_dict(convs[0].state_dict())
    opts = [SGDF([{"params": [c.weight]}, {"params": [c.bias], "lr": 0.01}], lr=0.05, fused=True, **options)
            for c in convs]
    x = torch.randn(2, 3, 6, 6, device=device, dtype=dtype)

    def step_both():
        # one gradient for both (computed again, a convolution may round otherwise), in each model's layout
        convs[1].zero_grad()
        convs[1](x).sum().backward()
        layout = torch.contiguous_format if convs[0].weight.is_contiguous() else torch.channels_last
        convs[0].weight.grad = convs[1].weight.grad.clone(memory_format=layout)
        convs[0].bias.grad = convs[1].bias.grad.clone()
        for opt in opts:
            opt.step()

    step_both()
    convs[0].to(memory_format=torch.channels_last)
    assert not convs[0].weight.is_contiguous()
    step_both()
    state, want = opts[0].state[convs[0].weight], opts[1].state[convs[1].weight]
    assert state.keys() == want.keys()
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            assert value.stride() == convs[0].weight.stride() and value.dtype == want[key].dtype, key
            # (elements at other memory positions may take the kernel's vector or scalar code: float32 may
            # differ in the last bit, a 16-bit value by one rounding step)
            tol = 1e-6 if value.dtype == torch.float32 else 1e-2
            torch.testing.assert_close(value, want[key], rtol=tol, atol=tol, msg=key)
    assert float(state["step"]) == 2
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(convs[0].weight, convs[1].weight, rtol=tol, atol=tol)
    convs[0].to(memory_format=torch.contiguous_format)  # and back, with the state in channels_last
    step_both()
    assert float(opts[0].state[convs[0].weight]["step"]) == 3
    torch.testing.assert_close(convs[0].weight, convs[1].weight, rtol=tol, atol=tol)


def test_channels_last_model_steps_in_one_kernel_call(device, monkeypatch):
    """A channels_last model's fused groups go to the one kernel call (the kernel walks any dense layout) from their
    second step on, and step as the same model in the contiguous layout."""
    convs = [torch.nn.Conv2d(3, 4, 3).to(device) for _ in range(2)]
    convs[1].load_state_dict(convs[0].state_dict())
    convs[0].to(memory_format=torch.channels_last)
    opts = [SGDF(c.parameters(), lr=0.05) for c in convs]
    in_one_call = []
    attempt = opts[0]._step_in_one_call
    monkeypatch.setattr(opts[0], "_step_in_one_call",
                        lambda plan, *args: in_one_call.append(list(plan)) or attempt(plan, *args))
    x = torch.randn(2, 3, 6, 6, device=device)
    for _ in range(3):
        for c in convs:
            c.zero_grad()
            c(x).sum().backward()
        for opt in opts:
            opt.step()
    assert not convs[0].weight.is_contiguous() and in_one_call == [[0]] * 2
    torch.testing.assert_close(convs[0].weight, convs[1].weight, rtol=1e-5, atol=1e-6)


def test_foreach_false_means_single_tensor(device):
    opt = SGDF(_model(device), foreach=False)
    assert opt._path(opt.param_groups[0]) == "single"
    default = SGDF(_model(device))
    assert default._path(default.param_groups[0]) == "fused"


def test_release_checkpoint_with_int_step_still_loads(device):
    params = _model(device)
    opt = SGDF(params, lr=1.0)
    sd = {"state": {i: {"step": 3, "exp_avg": torch.zeros(p.shape), "exp_var": torch.zeros(p.shape)}
                    for i, p in enumerate(params)},
          "param_groups": [{"lr": 0.05, "betas": (0.9, 0.999), "eps": 1e-8, "gamma": 0.5, "weight_decay": 0.0,
                            "weight_decouple": False, "use_sign": False, "use_muon": False, "ns_steps": 5,
                            "params": [0, 1, 2]}]}
    opt.load_state_dict(sd)
    _fill_grads(params)
    opt.step()
    assert all(float(opt.state[p]["step"]) == 4 for p in params)


@pytest.mark.parametrize("value", ["int64", "float32", "int32"])
def test_checkpoint_step_as_a_numpy_scalar_loads(device, value):
    """A step count stored as a numpy scalar loads as the number it is (np.int64 was refused, np.float64 taken)."""
    np = pytest.importorskip("numpy")
    params, opt, sd = _saved(device)
    for state in sd["state"].values():
        state["step"] = getattr(np, value)(float(state["step"]))
    opt.load_state_dict(sd)
    opt.step()
    assert all(float(opt.state[p]["step"]) == 3 for p in params)


@pytest.mark.parametrize("path", list(PATHS))
def test_params_set_to_a_tuple_by_hand_step_as_a_list(device, path):
    results = []
    for as_tuple in (True, False):
        params, opt = _stepped(device, path)
        if as_tuple:
            opt.param_groups[-1]["params"] = tuple(opt.param_groups[-1]["params"])
        opt.step()
        results.append([p.detach().clone() for p in params])
    for got, want in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.parametrize("path", list(PATHS))
def test_state_replaced_by_a_plain_dict_steps_a_group_added_after(device, path):
    """opt.state as a plain dict (not torch's defaultdict): the state of a group added afterwards is made as with the
    defaultdict (a KeyError came after the earlier groups had stepped)."""
    results = []
    for plain in (True, False):
        params = _model(device)
        opt = SGDF([{"params": params[:1]}], lr=0.05, **PATHS[path])
        _fill_grads(params, seed=0)
        opt.step()
        if plain:
            opt.state = dict(opt.state)
        opt.add_param_group({"params": params[1:], "lr": 0.02})
        _fill_grads(params, seed=1)
        opt.step()
        results.append([p.detach().clone() for p in params])
    for got, want in zip(*results):
        assert torch.equal(got, want)


def test_first_step_under_a_meta_default_device_draws_rounding_seeds(device):
    """A step run inside torch.device("meta") (as model-building code may leave it) draws its rounding seeds on the
    CPU, as without the context (the seed's draw on the meta device raised after the state was made)."""
    results = []
    for meta in (True, False):
        torch.manual_seed(0)
        params = _model(device, dtype=torch.bfloat16)
        opt = SGDF(params, lr=0.05, stochastic_rounding=True, foreach=True)
        _fill_grads(params)
        with torch.device("meta") if meta else contextlib.nullcontext():
            opt.step()
        results.append([p.detach().clone() for p in params] + [opt.state[p]["rounding_seed"] for p in params])
    assert results[0][3:] == results[1][3:]
    for got, want in zip(results[0][:3], results[1][:3]):
        assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------- minor bad inputs
def _delete_state_entry(key):
    def change(params, opt):
        del opt.state[params[-1]][key]
    return change


def _delete_group_key(key):
    def change(params, opt):
        del opt.param_groups[-1][key]
    return change


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("change,match", [
    (_delete_state_entry("exp_var"), "lacks 'exp_var'"),
    (_delete_state_entry("exp_avg"), "lacks 'exp_avg'"),
    (_delete_state_entry("step"), "lacks 'step'"),
    (_delete_group_key("eps"), "lacks 'eps'"),
    (_delete_group_key("fused"), "lacks 'fused'"),
    (_delete_group_key("betas"), "lacks 'betas'"),
], ids=["state_exp_var", "state_exp_avg", "state_step", "group_eps", "group_fused", "group_betas"])
def test_key_deleted_by_hand_is_named_and_changes_nothing(device, path, change, match):
    """A state entry or group key deleted by hand: a ValueError naming it, not a bare KeyError."""
    params, opt = _stepped(device, path)
    change(params, opt)
    _assert_step_refused(opt, ValueError, match=match)


@pytest.mark.parametrize("path", list(PATHS))
def test_numpy_scalars_are_accepted_as_numbers(device, path):
    """np.float32 lr / betas / eps / gamma / weight_decay step exactly as the same Python floats."""
    np = pytest.importorskip("numpy")
    results = []
    for as_numpy in (True, False):
        number = np.float32 if as_numpy else (lambda v: float(np.float32(v)))
        params = _model(device)
        opt = SGDF(params, lr=number(0.05), betas=(number(0.8), number(0.99)), eps=number(1e-8),
                   gamma=number(0.5), weight_decay=number(1e-3), **PATHS[path])
        for i in range(3):
            _fill_grads(params, seed=i)
            opt.step()
        results.append(params)
    for got, want in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(lr=torch.tensor(0.1, device="meta")), ValueError, "meta"),
    (dict(lr=10**400), ValueError, "lr"),  # an int beyond a float's range: not an OverflowError
    (dict(weight_decay=10**400), ValueError, "weight_decay"),
    (dict(lr=float("inf")), ValueError, "lr"),
    (dict(weight_decay=float("inf")), ValueError, "weight_decay"),
    (dict(betas=(True, 0.9)), ValueError, "betas"),
])
def test_bad_numbers_are_refused_at_construction(device, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SGDF(_model(device), **kwargs)


@pytest.mark.parametrize("params,match", [
    (lambda ps: [("weight",)], "tuple"),
    (lambda ps: [(ps[0],)], "tuple"),
    (lambda ps: [("weight", ps[0], 1)], "tuple"),
    (lambda ps: [(1, ps[0])], "tuple"),
    (lambda ps: [ps[0], None], "tensors"),
    (lambda ps: [[ps[0]]], "tensors"),
], ids=["name_only", "tensor_only", "triple", "int_name", "none", "nested_list"])
def test_non_tensor_in_params_is_refused_clearly(device, params, match):
    with pytest.raises(TypeError, match=match):
        SGDF(params(_model(device)))


def test_named_parameters_are_accepted(device):
    model = torch.nn.Linear(3, 2).to(device)
    opt = SGDF(model.named_parameters(), lr=0.1)
    model(torch.ones(1, 3, device=device)).sum().backward()
    opt.step()
    assert all(float(opt.state[p]["step"]) == 1 for p in model.parameters())


def test_checkpoint_with_complex_state_for_a_real_param_changes_nothing(device):
    """Casting would drop the imaginary part silently."""
    params, opt, sd = _saved(device)
    sd["state"][1]["exp_var"] = sd["state"][1]["exp_var"].to(torch.complex64) + 1j
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="exp_var"):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, before)


# ------------------------------------------- state that cannot be written in place, and step counts edited by hand
def _edit_state(key, edit):
    def change(params, opt):
        state = opt.state[params[-1]]
        state[key] = edit(state[key])
    return change


def _neg_grad(params, opt):
    params[-1].grad = torch._neg_view(params[-1].grad.clone())


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("change,match", [
    (_edit_state("exp_avg", lambda t: t.to_sparse()), "sparse|exp_avg"),
    (_edit_state("exp_var", lambda t: t.to_sparse()), "sparse|exp_var"),
    (_edit_state("exp_avg", lambda t: t.flatten()[:1].expand(t.shape) if t.dim() == 1 else
                 t.reshape(-1)[:1].reshape([1] * t.dim()).expand(t.shape)), "share memory|overlap|expanded|exp_avg"),
    (_edit_state("exp_var", lambda t: torch._neg_view(t.clone())), "negati|exp_var"),
    (_edit_state("step", lambda t: torch.full_like(t, float("nan"))), "step"),
    (_edit_state("step", lambda t: torch.full_like(t, -1.0)), "step"),
    (_edit_state("step", lambda t: torch.full_like(t, float("inf"))), "step"),
    (_neg_grad, "negati"),
], ids=["sparse_exp_avg", "sparse_exp_var", "expanded_exp_avg", "neg_exp_var", "nan_step", "negative_step",
        "inf_step", "neg_grad"])
def test_state_a_step_cannot_write_is_refused_before_any_group_steps(device, path, change, match):
    """The last group's state is made unwritable (or its step count invalid): raised before the first group steps."""
    params, opt = _stepped(device, path)
    change(params, opt)
    _assert_step_refused(opt, (ValueError, RuntimeError), match=match)


def test_state_made_in_inference_mode_is_refused_before_any_group_steps(device):
    params, opt = _stepped(device, "foreach")
    with torch.inference_mode():
        opt.state[params[-1]]["exp_var"] = opt.state[params[-1]]["exp_var"].clone()
    _assert_step_refused(opt, ValueError, match="inference")


@pytest.mark.parametrize("make_grad", [
    lambda p: (torch.randn(p.shape[-1:], device=p.device) * 4).expand(p.shape),  # elements sharing memory
    lambda p: torch._neg_view(-torch.randn(p.shape, device=p.device) * 4),
], ids=["expanded", "neg_bit"])
def test_gradient_the_kernel_cannot_unscale_in_place_changes_nothing(device, make_grad):
    """fused=True with a GradScaler's grad_scale: the kernel writes the unscaled gradients, so a gradient that cannot
    be written in place is refused before any group steps (found by an adversarial probe: the first group stepped,
    then writing the unscaled copy back failed)."""
    params, opt = _stepped(device, "fused")
    params[-1].grad = make_grad(params[-1])
    opt.grad_scale, opt.found_inf = torch.tensor(4.0, device=device), torch.tensor(0.0, device=device)
    _assert_step_refused(opt, ValueError, match="gradient of parameter 1 of param group 1")


def test_view_with_gaps_and_state_relaid_by_hand_steps_as_without(device):
    """A param that is a view with gaps, whose exp_var was given another dense layout by hand (same values), beside
    a group the one kernel call steps: it steps as the same optimizer without the relayout (its state is converted
    before it steps; the kernel refused it after the other group had stepped before)."""
    results = []
    for relaid in (False, True):
        base = torch.zeros(4, 6, device=device)
        a = torch.nn.Parameter(base[:, ::2])  # a view with gaps
        with torch.no_grad():
            a.copy_(torch.arange(12.0, device=device).reshape(4, 3) / 7)
        b = torch.nn.Parameter(torch.linspace(-1, 1, 5, device=device))
        opt = SGDF([{"params": [a]}, {"params": [b]}], lr=0.01)
        for i in range(3):
            a.grad, b.grad = torch.full((4, 3), 0.3 - 0.2 * i, device=device), torch.full((5,), 0.1 * i, device=device)
            if i == 2 and relaid:
                state = opt.state[a]
                state["exp_var"] = state["exp_var"].t().contiguous().t()
            opt.step()
        results.append((a.detach().clone(), b.detach().clone(), {k: v.clone() for k, v in opt.state[a].items()}))
    (a0, b0, s0), (a1, b1, s1) = results
    assert torch.equal(a0, a1) and torch.equal(b0, b1)
    for key in s0:
        assert torch.equal(s0[key], s1[key]), key


def test_checkpoint_with_a_state_that_is_not_a_dict_is_refused(device):
    params, opt = _stepped(device)
    checkpoint = opt.state_dict()
    checkpoint["state"][0] = None
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="holds NoneType as the state of a parameter"):
        opt.load_state_dict(checkpoint)
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("entry,value,match", [
    ("step", 10**400, "'step' of .* is 1000"),  # (an OverflowError before)
    # beyond float32's range, where step counts are kept (loaded as inf, refused at the next step)
    ("step", 10**40, "'step' of .* is 1000.*float32's largest value"),
    ("step", lambda d: torch.tensor(1e39, dtype=torch.float64, device=d), "'step' of .* is 1e\\+39"),
    ("step", lambda d: torch.tensor(1.0, device="meta"), "'step' of .* is a meta tensor"),
    ("step", lambda d: torch.tensor(1 + 1j, device=d), "'step' of .* must be a real one-element dense tensor"),
    ("exp_avg", lambda d: torch.zeros(5, 4, device="meta"), "'exp_avg' of .* is a meta tensor"),
    ("exp_avg", lambda d: torch.zeros(5, 4, device=d).to_sparse(), "'exp_avg' of .* is torch.sparse_coo"),
])
def test_checkpoint_with_state_entries_without_values_is_refused(device, entry, value, match):
    params, opt = _stepped(device)
    checkpoint = opt.state_dict()
    checkpoint["state"][0] = dict(checkpoint["state"][0], **{entry: value(device) if callable(value) else value})
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(checkpoint)
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("key", ["exp_var", "master_param", "exp_avg_sq"])
def test_state_relaid_by_hand_steps_as_without(device, key):
    """A state entry given another dense layout by hand (same values) is converted and stepped on the default path,
    as foreach steps it (a reviewer found the one kernel call refusing all but exp_avg)."""
    results = []
    for relaid in (False, True):
        params = [torch.nn.Parameter(torch.linspace(-1, 1, 15, device=device).reshape(3, 5).to(
            torch.bfloat16 if key == "master_param" else torch.float32))]
        opt = (AdaSGDF(params, lr=0.01) if key == "exp_avg_sq" else
               SGDF(params, lr=0.01, master_weights=key == "master_param"))
        for i in range(3):
            params[0].grad = torch.full_like(params[0], 0.3 - 0.2 * i)
            if i == 2 and relaid:
                opt.state[params[0]][key] = opt.state[params[0]][key].t().contiguous().t()
            opt.step()
        results.append((params[0].detach().clone(), {k: v.clone() for k, v in opt.state[params[0]].items()
                                                      if isinstance(v, torch.Tensor)}))
    (p0, s0), (p1, s1) = results
    assert torch.equal(p0, p1)
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k


def test_conjugate_gradient_unscaled_by_the_fused_kernel(device):
    """fused=True with a GradScaler's grad_scale and a complex gradient with the conjugate bit set: it steps as the
    same values without the bit, and the unscaled gradient is written back through the view (the first check of
    written gradients refused it)."""
    results = []
    for conj in (False, True):
        p = torch.nn.Parameter(torch.tensor([1 + 2j, -0.5 + 0.25j, 3 - 1j], device=device))
        opt = SGDF([p], lr=0.01, fused=True)
        g = torch.tensor([4 - 8j, 2 + 2j, -4 + 1j], device=device)
        p.grad = g.conj().resolve_conj().conj() if conj else g.clone()  # same values; the bit set when conj
        assert p.grad.is_conj() == conj
        opt.grad_scale, opt.found_inf = torch.tensor(4.0, device=device), torch.tensor(0.0, device=device)
        opt.step()
        results.append((p.detach().clone(), p.grad.resolve_conj().clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# ------------------------------------------------------------------------- the sixth adversarial run's findings
@pytest.mark.parametrize("freed", ["param", "grad", "exp_avg", "step"])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_freed_storage_is_refused_before_any_write(device, path, freed):
    """A tensor whose storage was freed (untyped_storage().resize_(0), as FSDP frees unsharded parameters) was read
    and written through a null pointer on every path: a segfault. Now a refusal naming it, the first group left as
    it was."""
    params, opt = _stepped(device, path)
    p = params[-1]
    tensor = {"param": p, "grad": p.grad, "exp_avg": opt.state[p]["exp_avg"], "step": opt.state[p]["step"]}[freed]
    first = params[0].detach().clone(), opt.state[params[0]]["exp_avg"].clone(), float(opt.state[params[0]]["step"])
    tensor.untyped_storage().resize_(0)
    with pytest.raises(ValueError, match="has elements but no memory"):
        opt.step()
    assert torch.equal(params[0], first[0]) and torch.equal(opt.state[params[0]]["exp_avg"], first[1])
    assert float(opt.state[params[0]]["step"]) == first[2]


@pytest.mark.parametrize("path", list(PATHS))
def test_a_freed_parameter_is_not_told_to_clone_itself(device, path):
    """The fix named for a parameter that cannot be written in place, p.data = p.data.clone(), reads the freed
    memory too (a segfault): its refusal names one that works."""
    params, opt = _stepped(device, path)
    params[-1].untyped_storage().resize_(0)
    with pytest.raises(ValueError, match="parameter 1 of param group 1 has elements but no memory") as info:
        opt.step()
    assert "clone" not in str(info.value) and "build the optimizer over the sharded" in str(info.value)


_LAZY_DEVICE_STEPS = """
import torch, torch._lazy, torch._lazy.ts_backend
torch._lazy.ts_backend.init()
from sgdf_erd import SGDF
p = torch.nn.Parameter(torch.ones(4, device="lazy"))
p.grad = torch.ones(4, device="lazy")
assert p.data_ptr() == 0  # (the backend keeps the data)
opt = SGDF([p], lr=0.1, foreach={foreach})
for _ in range(2):
    opt.step()
torch._lazy.mark_step()
assert (p.cpu() < 1).all()
"""


@pytest.mark.parametrize("foreach", [True, False])
def test_a_device_without_data_pointers_steps(foreach):
    """The freed-storage check read 'no address' as 'freed': parameters of a backend that keeps its data itself
    (torch's lazy tensors here, XLA's alike), which the foreach and single-tensor paths stepped, were refused. A
    subprocess: the lazy backend's start is for the whole process."""
    pytest.importorskip("torch._lazy.ts_backend")
    result = subprocess.run([sys.executable, "-c", _LAZY_DEVICE_STEPS.format(foreach=foreach)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("path", list(PATHS))
def test_an_efficient_zero_tensor_lr_is_refused(device, path):
    """An efficient zero tensor has no memory: the kernel's call read its lr through a null pointer (a segfault on
    the second step)."""
    with pytest.raises(ValueError, match="efficient zero tensor"):
        SGDF(_model(device), lr=torch._efficientzerotensor((), device=device), **PATHS[path])
    params, opt = _stepped(device, path)
    opt.param_groups[-1]["lr"] = torch._efficientzerotensor((), device=device)
    _assert_step_refused(opt, ValueError, match="efficient zero tensor")


@pytest.mark.parametrize("path", ["foreach", "single", "mixed"])
def test_grad_scale_on_a_path_that_does_not_unscale_is_refused(device, path):
    """grad_scale / found_inf set by hand: the kernel unscales and skips, the foreach and single-tensor paths stepped
    on the scaled gradients (found_inf = 1 skipped the fused group and stepped the others)."""
    params, opt = _stepped(device, "foreach" if path == "mixed" else path)
    if path == "mixed":
        opt.param_groups[0]["foreach"], opt.param_groups[0]["fused"] = None, True
    opt.grad_scale, opt.found_inf = torch.full((), 4.0, device=device), torch.ones((), device=device)
    first = 1 if path == "mixed" else 0
    _assert_step_refused(opt, ValueError, match=f"param group {first} steps on the (foreach|single) path, which neither")


@pytest.mark.parametrize("scale", [0.0, -2.0, float("nan"), float("inf")])
def test_a_loss_scale_that_is_not_positive_and_finite_is_refused(scale):
    """0 or NaN turned the weights into NaN, a negative one flipped the step (read on the CPU only: a CUDA scale
    would cost a host synchronisation)."""
    params, opt = _stepped(torch.device("cpu"), "fused")
    opt.grad_scale, opt.found_inf = torch.full((), scale), torch.zeros(())
    _assert_step_refused(opt, ValueError, match="a loss scale is finite and > 0")


@pytest.mark.parametrize("path", list(PATHS))
def test_loading_state_onto_meta_parameters_is_refused(path):
    """torch's load moves the state to the parameters' device: on meta its values were lost without a word (the
    fused path refused, blaming the checkpoint)."""
    params, opt = _stepped(torch.device("cpu"), path)
    checkpoint = opt.state_dict()
    meta = [torch.nn.Parameter(torch.empty_like(p, device="meta")) for p in params]
    fresh = SGDF([{"params": meta[:1]}, {"params": meta[1:], "lr": 0.02}], lr=0.01, **PATHS[path])
    with pytest.raises(ValueError, match="on the meta device .* materialize the model first"):
        fresh.load_state_dict(checkpoint)
    assert not fresh.state


def test_switching_adasgdf_to_the_second_moment_after_a_step_names_the_switch(device):
    """The 'variance' preconditioner keeps no second moment: the refusal said the state was edited by hand."""
    params = _model(device)
    opt = AdaSGDF(params, lr=0.01, preconditioner="variance")
    _fill_grads(params)
    opt.step()
    opt.param_groups[0]["preconditioner"] = "second_moment"
    _assert_step_refused(opt, ValueError, match="preconditioner was switched to 'second_moment'")
