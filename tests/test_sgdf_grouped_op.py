"""The raw operator ``torch.ops.sgdf_erd.fused_sgdf_grouped_`` (one SGDF step over several param groups): schema and
fake (opcheck), every group stepped bit for bit as ``fused_sgdf_`` steps it alone, and its contract for bad input:
a clear error and every input of every group bit-identical afterwards, also where only a later group is bad.

The update's numbers are checked against the float64 reference through the optimizer (tests/test_sgdf.py), which
steps its fused groups with this op.
"""

import gc
import weakref

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.devices import DEVICES
from tests.test_sgdf_op import assert_bit_identical, make_args, snapshot

grouped_op = torch.ops.sgdf_erd.fused_sgdf_grouped_
single_op = torch.ops.sgdf_erd.fused_sgdf_
HYPER = ("lr", "beta1", "beta2", "eps", "gamma", "weight_decay", "decoupled_weight_decay", "sign", "maximize")


def group_args(device, dtype=torch.float32, state_dtype=None, master=False, stochastic=False, seed=0,
               shapes=((5, 4), (7,), (0, 3)), lr_tensor=False, amp=False, **hyper):
    """fused_sgdf_'s arguments for one group (no update buffers or rounding offsets, which the grouped op has not)."""
    args = make_args(device, dtype, shapes=shapes, seed=seed, state_dtype=state_dtype, master=master,
                     stochastic=stochastic, lr_tensor=lr_tensor, amp=amp)
    args["rounding_offsets"] = []
    args.update(hyper)
    return args


def grouped(groups, grad_scale=None, found_inf=None):
    """fused_sgdf_grouped_'s arguments for per-group fused_sgdf_ arguments, by name."""
    merged = {name: [t for g in groups for t in g[name]] for name in
              ("params", "grads", "exp_avgs", "exp_vars", "steps", "master_params", "rounding_seeds")}
    merged["group_sizes"] = [len(g["params"]) for g in groups]
    merged["lr"] = [g["lr"] for g in groups]
    merged["lr_tensor"] = [g["lr_tensor"] for g in groups]
    merged.update({name: [g[name] for g in groups] for name in HYPER[1:]})
    merged["master_weights"] = [bool(g["master_params"]) for g in groups]
    merged["stochastic_rounding"] = [bool(g["rounding_seeds"]) for g in groups]
    merged["grad_scale"], merged["found_inf"] = grad_scale, found_inf
    return merged


def call_grouped(args):
    grouped_op(*args.values())


def _with_check_only(args, check_only):
    """`args` (grouped's) with the trailing arguments up to check_only, by position."""
    args.update(exp_avg_sqs=None, preconditioner="none", check_only=check_only)
    return args


MIXED = [  # (param dtype, state dtype, master copies, stochastic rounding, hyperparameters) of each group
    (torch.float32, None, False, False, {}),
    (torch.bfloat16, torch.bfloat16, True, True, dict(weight_decay=0.1, decoupled_weight_decay=True, gamma=1.0)),
    (torch.float16, torch.float32, False, True, dict(sign=True, maximize=True, beta2=0.9)),
    (torch.float64, None, False, False, dict(lr=0.3, eps=0.0)),
]


def mixed_groups(device, lr_tensor=False, amp=False, count=len(MIXED)):
    """lr_tensor: False, True, or "mixed" (tensors for groups 0 and 2, floats for the others: the float64 group's
    float lr must stay a double)."""
    return [group_args(device, dtype, state_dtype, master, stochastic, seed=i, amp=amp,
                       lr_tensor=lr_tensor is True or (lr_tensor == "mixed" and i % 2 == 0), **hyper)
            for i, (dtype, state_dtype, master, stochastic, hyper) in enumerate(MIXED[:count])]


# --------------------------------------------------------------------------------------------- schema and fake
@pytest.mark.parametrize("scalars", [False, True, "mixed"],
                         ids=["floats", "lr_tensor,grad_scale,found_inf", "some_lr_tensors"])
def test_opcheck(device, scalars):
    groups = mixed_groups(device, lr_tensor=scalars, amp=bool(scalars))
    amp = groups[0]
    torch.library.opcheck(grouped_op.default, tuple(grouped(groups, amp["grad_scale"], amp["found_inf"]).values()))


def test_opcheck_with_check_only_groups(device):
    groups = mixed_groups(device, lr_tensor="mixed")
    torch.library.opcheck(grouped_op.default, tuple(_with_check_only(grouped(groups), [True, False, False, True])
                                                    .values()))


# --------------------------------------------------------------------------------------------- the step
def _clone(group):
    return {name: [t.clone() if isinstance(t, torch.Tensor) else t for t in value] if isinstance(value, list)
            else value.clone() if isinstance(value, torch.Tensor) else value for name, value in group.items()}


def _assert_groups_equal(got, want):
    for g, w in zip(got, want):
        for name in ("params", "grads", "exp_avgs", "exp_vars", "steps", "master_params"):
            for a, b in zip(g[name], w[name]):
                assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)), name


@pytest.mark.parametrize("found_inf", [0.0, 1.0])
@pytest.mark.parametrize("lr_tensor", [False, True, "mixed"])
def test_each_group_steps_as_fused_sgdf_alone(device, lr_tensor, found_inf):
    """Groups with their own dtypes, storage options and hyperparameters, under AMP (a skipped step included)."""
    groups = mixed_groups(device, lr_tensor=lr_tensor)
    alone = [_clone(g) for g in groups]
    grad_scale = torch.full((1,), 4.0, device=device)
    inf = torch.full((1,), found_inf, device=device)
    call_grouped(grouped(groups, grad_scale, inf))
    for g in alone:
        g["grad_scale"], g["found_inf"] = grad_scale, inf
        single_op(*g.values())
    _assert_groups_equal(groups, alone)
    assert all(float(s) == (0.0 if found_inf else 1.0) for g in groups for s in g["steps"])


@given(spec=st.lists(st.tuples(st.integers(0, len(MIXED) - 1), st.integers(0, 3), st.floats(0.0, 1.0),
                               st.floats(0.0, 0.99), st.booleans()), min_size=1, max_size=4),
       seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
@pytest.mark.parametrize("device", DEVICES)  # not the fixture: hypothesis reruns the body, not the fixture
def test_random_groups_step_as_fused_sgdf_alone(device, spec, seed):
    groups = []
    for i, (kind, count, lr, beta1, decoupled) in enumerate(spec):
        dtype, state_dtype, master, stochastic, hyper = MIXED[kind]
        shapes = [(3, 1 + (seed + i + k) % 9) for k in range(count)]
        groups.append(group_args(device, dtype, state_dtype, master, stochastic, seed=seed + i, shapes=shapes,
                                 **dict(hyper, lr=lr, beta1=beta1, decoupled_weight_decay=decoupled)))
    assume(any(g["params"] for g in groups))  # the dispatcher needs a tensor (as for fused_sgdf_)
    alone = [_clone(g) for g in groups]
    call_grouped(grouped(groups))  # empty groups in between included
    for g in alone:
        if g["params"]:
            single_op(*g.values())
    _assert_groups_equal(groups, alone)


@pytest.mark.parametrize("found_inf", [0.0, 1.0])
def test_check_only_groups_are_left_as_they_are(device, found_inf):
    """Groups marked check_only are not stepped (their step counts included); the others step as fused_sgdf_
    steps them alone."""
    groups = mixed_groups(device)
    alone = [_clone(g) for g in groups]
    grad_scale, inf = torch.full((1,), 4.0, device=device), torch.full((1,), found_inf, device=device)
    call_grouped(_with_check_only(grouped(groups, grad_scale, inf), [False, True, False, True]))
    for g in alone[::2]:
        g["grad_scale"], g["found_inf"] = grad_scale, inf
        single_op(*g.values())
    _assert_groups_equal(groups, alone)  # (groups 1 and 3 against their unstepped clones)
    assert [float(s) for g in groups for s in g["steps"]][:3] == [0.0 if found_inf else 1.0] * 3
    assert all(float(s) == 0.0 for g in groups[1::2] for s in g["steps"])


def test_check_only_groups_are_checked(device):
    groups = mixed_groups(device)
    groups[3]["steps"][1] = groups[3]["steps"][1].long()
    args = _with_check_only(grouped(groups), [False, False, False, True])
    before = snapshot(args)
    with pytest.raises(RuntimeError, match="param group 3.*steps\\[1\\]"):
        call_grouped(args)
    assert_bit_identical(args, before)


@pytest.mark.parametrize("shared", ["grad of two check_only groups", "grad and a stepped group's param",
                                    "grad and a stepped group's grad"])
def test_gradients_of_check_only_groups_are_only_read(device, shared):
    """A check_only group's gradients are read only (its caller steps it without writing them): they may share
    memory with each other, not with a tensor the call (or a stepped group, which unscales its gradients) writes."""
    groups = _two_float32_groups(device)
    if shared == "grad and a stepped group's param":
        groups[1]["grads"][0] = groups[0]["params"][0]
    else:
        _grad_in_two_groups(groups)
    accepted = shared == "grad of two check_only groups"
    args = _with_check_only(grouped(groups), [accepted, True])
    before = snapshot(args)
    if accepted:
        call_grouped(args)
    else:
        with pytest.raises(RuntimeError, match="share memory"):
            call_grouped(args)
    assert_bit_identical(args, before)


# --------------------------------------------------------------------------------------------- bad input
def _in_group(index, edit):
    def change(groups):
        edit(groups[index])
    return change


def _merged(edit):
    def change(args):
        edit(args)
    change.merged = True
    return change


def _set_item(name, i, value):
    def edit(group):
        group[name][i] = value(group)
    return edit


BAD = {
    # per-group argument lists
    "lr list too short": (_merged(lambda a: a.update(lr=a["lr"][:-1])), "'lr' has 3 values for 4 param groups"),
    "sign list too long": (_merged(lambda a: a.update(sign=a["sign"] + [False])), "'sign' has 5 values"),
    "lr_tensor list too short": (_merged(lambda a: a.update(lr_tensor=[torch.ones(1, device=a["params"][0].device)])),
                                 "'lr_tensor' has 1 entries for 4 param groups"),
    "float64 lr_tensor in a later group": (_merged(lambda a: a["lr_tensor"].__setitem__(
        2, torch.ones(1, dtype=torch.float64, device=a["params"][0].device))), "param group 2.*'lr_tensor'"),
    "negative group size": (_merged(lambda a: a["group_sizes"].__setitem__(0, -1)), "'group_sizes\\[0\\]'=-1"),
    "sizes do not add up": (_merged(lambda a: a["group_sizes"].__setitem__(1, 2)), "add up to"),
    "a size beyond the params left": (_merged(lambda a: a["group_sizes"].__setitem__(1, 13)),
                                      "'group_sizes\\[1\\]'=13"),
    "sizes that overflow a sum": (_merged(lambda a: a.update(group_sizes=[2**63 - 1, 2**63 - 1, 3, 3])),
                                  "'group_sizes\\[0\\]'=9223372036854775807"),
    "a grad missing": (_merged(lambda a: a.update(grads=a["grads"][:-1])), "'grads' has"),
    "master copies missing": (_merged(lambda a: a.update(master_params=a["master_params"][:-1])),
                              "'master_params' has"),
    "seeds missing": (_merged(lambda a: a.update(rounding_seeds=a["rounding_seeds"][1:])), "'rounding_seeds' has"),
    # one bad group, after good ones
    "later group: exp_var of another shape": (_in_group(2, _set_item("exp_vars", 0, lambda g: g["exp_vars"][0].T)),
                                              "param group 2.*exp_vars\\[0\\]"),
    "later group: seed out of range": (_in_group(1, lambda g: g["rounding_seeds"].__setitem__(2, 2**32)),
                                       "param group 1.*rounding_seeds\\[2\\]"),
    "later group: negative beta1": (_in_group(3, lambda g: g.update(beta1=-0.1)), "param group 3.*beta1"),
    "later group: int step": (_in_group(3, _set_item("steps", 1, lambda g: g["steps"][1].long())),
                              "param group 3.*steps\\[1\\]"),
    "check_only list too short": (_merged(lambda a: _with_check_only(a, [True])),
                                  "'check_only' has 1 values for 4 param groups"),
}


def _grad_in_two_groups(groups):
    """Group 1 holds the same gradient tensor as group 0 (both float32 here): AMP would unscale it twice."""
    groups[1]["grads"][0] = groups[0]["grads"][0]


def _two_float32_groups(device):
    return [group_args(device, seed=0), group_args(device, seed=1, shapes=((5, 4), (2,)))]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_and_changes_nothing(device, case):
    edit, match = BAD[case]
    groups = mixed_groups(device)
    if not getattr(edit, "merged", False):
        edit(groups)
    args = grouped(groups)
    if getattr(edit, "merged", False):
        edit(args)
    before = snapshot(args)
    with pytest.raises((RuntimeError, ValueError), match=match):
        call_grouped(args)
    assert_bit_identical(args, before)


def test_memory_shared_between_groups_is_refused(device):
    groups = _two_float32_groups(device)
    _grad_in_two_groups(groups)
    args = grouped(groups, torch.full((1,), 4.0, device=device), torch.zeros(1, device=device))
    before = snapshot(args)
    with pytest.raises(RuntimeError, match="'grads\\[0\\] of param group 0' and 'grads\\[0\\] of param group 1'"):
        call_grouped(args)
    assert_bit_identical(args, before)


@pytest.mark.parametrize("raises", [False, True], ids=["steps", "raises"])
def test_op_keeps_no_reference_to_its_tensors(device, raises):
    """Every list's tensor handles are released (csrc/common/tensor_lists.h, TensorHandles), also when a check
    raises: else the tensors would never be freed."""
    args = grouped(mixed_groups(device, lr_tensor="mixed", amp=False), grad_scale=torch.ones(1, device=device),
                   found_inf=torch.zeros(1, device=device))
    args["exp_avg_sqs"] = [torch.zeros_like(m) for m in args["exp_avgs"]]
    args["preconditioner"] = "second_moment"
    args["sign"] = [False] * len(args["sign"])  # (not defined with a preconditioner)
    if raises:
        args["lr"][1] = -1.0
    refs = [weakref.ref(t) for name, value in args.items() for t in (value if isinstance(value, list) else [value])
            if isinstance(t, torch.Tensor)]
    if raises:
        with pytest.raises(RuntimeError, match="invalid lr"):
            call_grouped(args)
    else:
        call_grouped(args)
    del args
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_groups_on_several_devices_are_refused():
    groups = _two_float32_groups("cpu")
    groups[1] = {k: [t.to("meta") if isinstance(t, torch.Tensor) else t for t in v] if isinstance(v, list) else v
                 for k, v in groups[1].items()}
    with pytest.raises(RuntimeError, match="meta"):
        call_grouped(grouped(groups))


@pytest.mark.parametrize("name,index,value,exc", [
    ("group_sizes", 0, 2**64, ValueError),
    ("group_sizes", 0, True, TypeError),
    ("rounding_seeds", 0, 2**70, ValueError),
    ("rounding_seeds", 0, True, TypeError),
    ("rounding_seeds", 0, torch.tensor(5), TypeError),
])
def test_wrapper_refuses_ints_the_dispatcher_would_convert(device, name, index, value, exc):
    import sgdf_erd

    args = grouped(mixed_groups(device))
    args[name][index] = value
    before = snapshot(args)
    with pytest.raises(exc, match=f"'{name}\\[{index}\\]'"):
        sgdf_erd.ops.fused_sgdf_grouped_(*args.values())
    assert_bit_identical(args, before)
