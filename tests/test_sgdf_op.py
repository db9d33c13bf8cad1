"""The raw operator ``torch.ops.sgdf_erd.fused_sgdf_``: schema and fake implementation (opcheck), step bookkeeping
under AMP, and its contract for bad input: a clear error, and every input bit-identical afterwards.

The update's numbers are checked against the float64 reference in tests/test_sgdf.py (through the optimizer).
"""

import gc
import re
import time
import weakref

import pytest
import torch

import sgdf_erd  # noqa: F401  (registers the ops and their fake implementations)
from tests.devices import requires_cuda

op = torch.ops.sgdf_erd.fused_sgdf_
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(5, 4), (7,), (0, 3), (2, 3, 3)]


def make_args(device, dtype=torch.float32, shapes=SHAPES, updates=False, lr_tensor=False, amp=False, seed=0,
              step=0.0, found_inf=0.0, state_dtype=None, master=False, stochastic=False):
    """A dict of the op's arguments by name; states are nonzero so that every operand matters."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, scale=1.0, dtype=dtype):
        return (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)

    state_dtype = state_dtype or dtype
    params = [rand(s) for s in shapes]
    return dict(
        params=params,
        grads=[rand(s) for s in shapes],
        exp_avgs=[rand(s, 0.1, state_dtype) for s in shapes],
        exp_vars=[rand(s, 0.1, state_dtype).abs() for s in shapes],
        updates=[torch.zeros(s, device=device, dtype=dtype) for s in shapes] if updates else [],
        steps=[torch.full((), step, device=device) for _ in shapes],
        lr=0.0 if lr_tensor else 0.1,
        lr_tensor=torch.full((1,), 0.1, device=device) if lr_tensor else None,
        beta1=0.9, beta2=0.999, eps=1e-8, gamma=0.5, weight_decay=1e-3, decoupled_weight_decay=False, sign=False,
        maximize=False,
        grad_scale=torch.full((1,), 4.0, device=device) if amp else None,
        found_inf=torch.full((1,), found_inf, device=device) if amp else None,
        master_params=[p.float() + rand(p.shape, 1e-3, torch.float32) for p in params] if master else [],
        rounding_seeds=[int(torch.randint(0, 2**32, (), generator=gen)) for _ in shapes] if stochastic else [],
        rounding_offsets=[int(torch.randint(0, 2**40, (), generator=gen)) for _ in shapes] if stochastic else [],
    )


def call(args):
    return op(*args.values())


def tensors_of(args):
    """Every tensor argument, by name."""
    out = {}
    for name, value in args.items():
        if isinstance(value, list):
            out.update({f"{name}[{i}]": t for i, t in enumerate(value) if isinstance(t, torch.Tensor)})
        elif isinstance(value, torch.Tensor):
            out[name] = value
    return out


def snapshot(args):
    return {name: t.detach().clone() for name, t in tensors_of(args).items()}


def bits(t):
    t = t.detach().cpu()
    if t.is_sparse:
        t = t.to_dense()
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_bit_identical(args, before):
    for name, t in tensors_of(args).items():
        if t.device.type != "meta":
            assert torch.equal(bits(t), bits(before[name])), f"{name} changed"


# --------------------------------------------------------------------------------------------- schema and fake
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("updates", [False, True], ids=["apply", "updates"])
@pytest.mark.parametrize("scalars", [False, True], ids=["floats", "lr_tensor,grad_scale,found_inf"])
def test_opcheck(device, dtype, updates, scalars):
    args = make_args(device, dtype, updates=updates, lr_tensor=scalars, amp=scalars)
    torch.library.opcheck(op.default, tuple(args.values()))


# (param dtype, state dtype, master copies, stochastic rounding seeds)
STORAGE = {
    "bf16_state_sr": (torch.float32, torch.bfloat16, False, True),
    "bf16_params_f16_state": (torch.bfloat16, torch.float16, False, False),
    "bf16_master_sr": (torch.bfloat16, torch.bfloat16, True, True),
    "f16_master_f32_state": (torch.float16, torch.float32, True, False),
}


@pytest.mark.parametrize("storage", list(STORAGE))
@pytest.mark.parametrize("updates", [False, True], ids=["apply", "updates"])
def test_opcheck_with_storage_options(device, storage, updates):
    dtype, state_dtype, master, stochastic = STORAGE[storage]
    args = make_args(device, dtype, updates=updates, amp=True, state_dtype=state_dtype, master=master,
                     stochastic=stochastic)
    torch.library.opcheck(op.default, tuple(args.values()))


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(master_params=[p.float() for p in a["params"]]), "master_params.*bfloat16 / float16"),
    (lambda a: a.update(rounding_seeds=[1]), "rounding_seeds"),
    (lambda a: a.update(rounding_seeds=[-1] * len(a["params"])), "rounding_seeds"),
    (lambda a: a.update(rounding_seeds=[2**32] * len(a["params"])), "rounding_seeds"),
    (lambda a: a.update(rounding_offsets=[0] * len(a["params"])), "rounding_offsets"),  # without seeds
    (lambda a: a.update(rounding_seeds=[1] * len(a["params"]), rounding_offsets=[0]), "rounding_offsets"),
    (lambda a: a.update(rounding_seeds=[1] * len(a["params"]), rounding_offsets=[-1] * len(a["params"])),
     "rounding_offsets"),
    (lambda a: a["exp_vars"].__setitem__(0, a["exp_vars"][0].bfloat16()), "share a dtype"),
    (lambda a: a["exp_avgs"].__setitem__(0, a["exp_avgs"][0].double()), "exp_avgs"),
])
def test_bad_storage_arguments_raise_and_change_nothing(device, change, match):
    args = make_args(device)
    change(args)
    before = snapshot(args)
    with pytest.raises((RuntimeError, ValueError), match=match):
        call(args)
    assert_bit_identical(args, before)


@pytest.mark.parametrize("dtype,state_dtype,master", [
    (torch.bfloat16, torch.bfloat16, False), (torch.float32, torch.bfloat16, False),
    (torch.float16, torch.float16, False), (torch.bfloat16, torch.bfloat16, True)])
def test_shards_numbered_from_their_offsets_round_as_the_whole_tensor(device, dtype, state_dtype, master):
    """Two shards of a tensor (rows 0-19 and 20-63, as two ranks hold them), each numbered from its first element's
    position in the whole tensor, step exactly as the whole tensor does; numbered from 0, the second would not."""
    whole = make_args(device, dtype, shapes=[(64, 33)], state_dtype=state_dtype, master=master, stochastic=True,
                      step=2.0)
    whole["grads"][0] = whole["grads"][0] * 1e-3  # updates below a 16-bit spacing: the rounding decides

    def shards(offsets):
        args = {name: [piece.clone() for t in value for piece in (t[:20], t[20:])]
                if name in ("params", "grads", "exp_avgs", "exp_vars", "master_params") else value
                for name, value in whole.items()}
        args["steps"] = [whole["steps"][0].clone() for _ in range(2)]
        args["rounding_seeds"] = whole["rounding_seeds"] * 2
        args["rounding_offsets"] = offsets
        call(args)
        return args

    numbered, from_zero = shards([7, 7 + 20 * 33]), shards([0, 0])
    whole["rounding_offsets"] = [7]
    call(whole)
    for name in ("params", "exp_avgs", "exp_vars", "master_params"):
        if whole[name]:
            assert torch.equal(bits(torch.cat(numbered[name])), bits(whole[name][0])), name
    stored = "exp_avgs" if master or dtype == torch.float32 else "params"
    assert not torch.equal(bits(torch.cat(from_zero[stored])), bits(whole[stored][0]))


def test_master_params_must_be_float32_and_match_the_params(device):
    args = make_args(device, torch.bfloat16, master=True)
    args["master_params"][1] = args["master_params"][1].double()
    before = snapshot(args)
    with pytest.raises(RuntimeError, match="master_params"):
        call(args)
    assert_bit_identical(args, before)
    args = make_args(device, torch.bfloat16, master=True)
    args["master_params"][0] = args["params"][1].float()  # another shape
    with pytest.raises(RuntimeError, match="master_params"):
        call(args)


def test_all_meta_inputs_propagate_without_error():
    """All-meta inputs take the fake path (shape propagation); the op returns nothing."""
    assert call(make_args("meta", amp=True, lr_tensor=True, updates=True)) is None


# --------------------------------------------------------------------------------------------- step bookkeeping
@pytest.mark.parametrize("found_inf", [0.0, 1.0, 2.0, 3.0])
def test_step_advances_by_one_only_without_inf(device, found_inf):
    """GradScaler passes the *sum* of found_inf over devices: any nonzero value skips the step whole."""
    args = make_args(device, amp=True, step=5.0, found_inf=found_inf)
    before = snapshot(args)
    call(args)
    if found_inf:
        assert_bit_identical(args, before)
    else:
        assert all(float(s) == 6.0 for s in args["steps"])
        assert not torch.equal(args["params"][0], before["params[0]"])


def test_skipped_step_keeps_a_count_beyond_float32_integers(device):
    """From 2^24 a float32 count no longer changes by +1, so add-then-subtract would move it back."""
    args = make_args(device, amp=True, step=2.0**24 - 1)
    call(args)
    assert all(float(s) == 2.0**24 for s in args["steps"])
    for found_inf in (1.0, 2.0):
        args["found_inf"].fill_(found_inf)
        call(args)
        assert all(float(s) == 2.0**24 for s in args["steps"])


# --------------------------------------------------------------------------------------------- bad input
def _set(name, value):
    def edit(args):
        args[name] = value(args) if callable(value) else value
    return edit


def _set_item(name, i, value):
    def edit(args):
        args[name][i] = value(args)
    return edit


def _all_lists(fn):
    def edit(args):
        for name in ("params", "grads", "exp_avgs", "exp_vars"):
            args[name] = [fn(t) for t in args[name]]
    return edit


def _device(args):
    return args["params"][0].device


def _flat_views(args):
    """exp_avgs[0] and exp_vars[1] as views of one buffer that overlap by one element."""
    m, s = args["exp_avgs"][0], args["exp_vars"][1]
    buf = torch.zeros(m.numel() + s.numel() - 1, device=m.device)
    args["exp_avgs"][0] = buf[:m.numel()].view(m.shape)
    args["exp_vars"][1] = buf[m.numel() - 1:].view(s.shape)


def _same_param_twice(args):
    """params[1] is params[0]; the other lists get distinct tensors of that shape."""
    for name in ("params", "grads", "exp_avgs", "exp_vars"):
        args[name][1] = args[name][0].clone()
    args["params"][1] = args["params"][0]


BAD_INPUTS = {
    # dtypes
    "int params": (_all_lists(lambda t: t.to(torch.int64)), "int64|Long"),
    "complex params": (_all_lists(lambda t: t.to(torch.complex64)), "ComplexFloat|complex"),
    "grads of another dtype": (_set_item("grads", 1, lambda a: a["grads"][1].double()), "grads\\[1\\]"),
    "int step": (_set_item("steps", 0, lambda a: torch.zeros((), dtype=torch.int64, device=_device(a))), "steps\\[0\\]"),
    "two-element step": (_set_item("steps", 2, lambda a: torch.zeros(2, device=_device(a))), "steps\\[2\\]"),
    "float64 lr_tensor": (_set("lr_tensor", lambda a: torch.ones(1, dtype=torch.float64, device=_device(a))),
                          "lr_tensor"),
    "two-element grad_scale": (_set("grad_scale", lambda a: torch.ones(2, device=_device(a))), "grad_scale"),
    "int found_inf": (_set("found_inf", lambda a: torch.zeros(1, dtype=torch.int32, device=_device(a))), "found_inf"),
    # lists and layouts
    "grads list too short": (_set("grads", lambda a: a["grads"][:-1]), "grads"),
    "steps list too short": (_set("steps", lambda a: a["steps"][:-1]), "steps"),
    "exp_avg of another shape": (_set_item("exp_avgs", 0, lambda a: a["exp_avgs"][0].reshape(4, 5)), "exp_avgs\\[0\\]"),
    "grad with other strides": (_set_item("grads", 0, lambda a: a["grads"][0].T.contiguous().T), "grads\\[0\\]"),
    "non-dense param": (_set_item("params", 0, lambda a: torch.zeros(5, 8, device=_device(a))[:, ::2]), "dense"),
    "sparse grad": (_set_item("grads", 1, lambda a: a["grads"][1].to_sparse()), "'grads\\[1\\]' is Sparse"),
    "step on the meta device": (_set_item("steps", 1, lambda a: torch.zeros((), device="meta")), "meta"),
    # hyperparameters
    "lr nan": (_set("lr", float("nan")), "lr"),
    "lr negative": (_set("lr", -0.1), "lr"),
    "beta1 = 1": (_set("beta1", 1.0), "beta1"),
    "beta1 nan": (_set("beta1", float("nan")), "beta1"),
    "beta2 = 1": (_set("beta2", 1.0), "beta2"),
    "beta2 negative": (_set("beta2", -0.5), "beta2"),
    # (1 in float32, where the arithmetic runs: no update for beta1, a step of ~1e6 with the variance preconditioner)
    "beta1 1 in float32": (_set("beta1", 0.999999999), "beta1=.*stay below 1 in float32"),
    "beta2 1 in float32": (_set("beta2", 0.9999999999), "beta2=.*stay below 1 in float32"),
    "eps negative": (_set("eps", -1e-8), "eps"),
    "gamma zero": (_set("gamma", 0.0), "gamma"),
    "gamma negative": (_set("gamma", -0.5), "gamma"),
    "weight_decay negative": (_set("weight_decay", -1e-3), "weight_decay"),
    "lr inf": (_set("lr", float("inf")), "lr"),
    "eps inf": (_set("eps", float("inf")), "eps"),
    "gamma inf": (_set("gamma", float("inf")), "gamma"),
    "weight_decay inf": (_set("weight_decay", float("inf")), "weight_decay"),
    # (beyond float32's range, where the arithmetic runs: the weights became inf)
    "lr beyond float32": (_set("lr", 1e39), "lr"),
    "grad_scale zero": (_set("grad_scale", lambda a: torch.zeros(1, device=_device(a))), "grad_scale"),
    "eps beyond float32": (_set("eps", 1e39), "eps"),
    "weight_decay beyond float32": (_set("weight_decay", 1e39), "weight_decay"),
    # aliasing
    "params[i] is grads[i]": (_set_item("grads", 0, lambda a: a["params"][0]), "'params\\[0\\]' and 'grads\\[0\\]'"),
    "exp_avgs[i] is exp_vars[i]": (_set_item("exp_vars", 1, lambda a: a["exp_avgs"][1]), "exp_avgs\\[1\\].*exp_vars\\[1\\]"),
    "same param twice": (_same_param_twice, "'params\\[0\\]' and 'params\\[1\\]'"),
    "same step twice": (_set_item("steps", 3, lambda a: a["steps"][0]), "steps\\[0\\]' and 'steps\\[3\\]"),
    "overlapping views across lists": (_flat_views, "'exp_avgs\\[0\\]' and 'exp_vars\\[1\\]'"),
    "found_inf is a step": (_set("found_inf", lambda a: a["steps"][2].view(1)), "share memory"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_and_changes_nothing(device, case):
    edit, match = BAD_INPUTS[case]
    args = make_args(device, amp=True, lr_tensor=True)
    edit(args)
    before = snapshot(args)
    with pytest.raises(RuntimeError, match=match):
        call(args)
    assert_bit_identical(args, before)


@pytest.mark.parametrize("name", ["params", "grads", "exp_avgs", "exp_vars", "steps", "lr_tensor"])
def test_a_tensor_without_memory_is_refused(device, name):
    """A freed storage (untyped_storage().resize_(0), as FSDP frees unsharded parameters) or an efficient zero tensor
    was read and written through a null pointer: a segfault."""
    args = make_args(device, amp=True, lr_tensor=True)
    listed = isinstance(args[name], list)
    if listed:
        args[name][1].untyped_storage().resize_(0)
    else:
        args[name] = torch._efficientzerotensor(1, device=device)
    freed = f"{name}[1]" if listed else name
    before = {key: t.clone() for key, t in tensors_of(args).items() if key != freed}
    with pytest.raises(RuntimeError, match=re.escape(f"'{freed}' has elements but no memory")):
        torch.ops.sgdf_erd.fused_sgdf_grouped_(  # (the one-group op: torch's fallback materialises zero tensors)
            args["params"], args["grads"], args["exp_avgs"], args["exp_vars"], args["steps"], [], [],
            [len(args["params"])], [args["lr"]], [args["lr_tensor"]], [0.9], [0.999], [1e-8], [0.5], [0.0], [False],
            [False], [False], [False], [False], args["grad_scale"], args["found_inf"])
    if listed:
        with pytest.raises(RuntimeError, match=re.escape(f"'{freed}' has elements but no memory")):
            call(args)
    for key, t in before.items():
        assert torch.equal(bits(tensors_of(args)[key]), bits(t)), f"{key} changed"


@pytest.mark.parametrize("name", ["lr_tensor", "grad_scale", "found_inf", "exp_avg_sqs"])
def test_lazily_negated_optional_arguments_are_refused(device, name):
    """torch's fallback for lazily negated tensors resolves the op's required lists but passes the optional ones as
    stored, so the kernel read the opposite values: exp_avg_sqs came out negated, a negated lr stepped uphill."""
    args = make_args(device, amp=True, lr_tensor=True)
    args.update(exp_avg_sqs=[torch.rand_like(p) for p in args["params"]], preconditioner="second_moment")
    if name == "exp_avg_sqs":
        args[name][1] = torch._neg_view(-args[name][1])
    else:
        args[name] = torch._neg_view(-args[name])
    params = [p.clone() for p in args["params"]]
    with pytest.raises(ValueError, match=re.escape(f"'{name}{'[1]' if name == 'exp_avg_sqs' else ''}' has the "
                                                   "negative bit set")):
        sgdf_erd.ops.fused_sgdf_(**args)
    assert all(torch.equal(a, b) for a, b in zip(args["params"], params))


@pytest.mark.parametrize("value", [float("nan"), -0.5, float("inf")])
def test_cpu_lr_tensor_value_is_checked(value):
    """A CPU lr tensor is read for free; a CUDA one is not read (that would be a host sync), see the op's docs."""
    args = make_args("cpu")
    args["lr"], args["lr_tensor"] = 0.0, torch.full((1,), value)
    before = snapshot(args)
    with pytest.raises(RuntimeError, match="lr_tensor"):
        call(args)
    assert_bit_identical(args, before)


def test_adjacent_views_of_one_buffer_are_accepted(device):
    """Tensors carved out of one flat buffer without overlap (as flat-parameter wrappers do) are fine, and give the
    same result as separate tensors."""
    separate = make_args(device, shapes=[(5, 4), (7,), (3, 3)])
    flat = make_args(device, shapes=[(5, 4), (7,), (3, 3)])
    for name in ("params", "grads", "exp_avgs", "exp_vars"):
        buf = torch.cat([t.reshape(-1) for t in flat[name]])
        views, offset = [], 0
        for t in flat[name]:
            views.append(buf[offset:offset + t.numel()].view(t.shape))
            offset += t.numel()
        flat[name] = views
    call(separate)
    call(flat)
    for name in ("params", "exp_avgs", "exp_vars"):
        for a, b in zip(separate[name], flat[name]):
            assert torch.equal(a, b)


def test_alias_check_scales_to_many_tensors():
    """Thousands of tensors per call: the memory-sharing check must stay O(n log n) (an all-pairs check over the
    120k operands here would take minutes)."""
    n = 20000
    args = make_args("cpu", shapes=[(1,)])
    for name in ("params", "grads", "exp_avgs", "exp_vars"):
        args[name] = [torch.ones(1) for _ in range(n)]
    args["steps"] = [torch.zeros(()) for _ in range(n)]
    start = time.perf_counter()
    call(args)
    assert time.perf_counter() - start < 5.0
    assert float(args["steps"][-1]) == 1.0


@pytest.mark.parametrize("raises", [False, True], ids=["steps", "raises"])
def test_op_keeps_no_reference_to_its_tensors(device, raises):
    """The op receives its lists as tensor handles it owns (csrc/common/tensor_lists.h, TensorHandles): each must be
    released, also when a check raises, or the tensors would never be freed (weak references stay alive)."""
    args = make_args(device, amp=True, lr_tensor=True, updates=True)
    args["exp_avg_sqs"] = [torch.zeros_like(m) for m in args["exp_avgs"]]
    args["preconditioner"] = "second_moment"
    if raises:  # refused by the last check, after every tensor was read
        args["found_inf"] = args["steps"][0].view(1)
    refs = [weakref.ref(t) for t in tensors_of(args).values()]
    if raises:
        with pytest.raises(RuntimeError, match="share memory"):
            call(args)
    else:
        call(args)
    del args
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


@requires_cuda
def test_cuda_call_with_a_cpu_step_is_refused():
    args = make_args("cuda")
    args["steps"][0] = torch.zeros(())
    before = snapshot(args)
    with pytest.raises(RuntimeError, match="steps\\[0\\]"):
        call(args)
    assert_bit_identical(args, before)


# ----------------------------------------------------------------------------------------- the Python wrappers
# sgdf_erd.ops.fused_sgdf_ / fused_sgdf_grouped_ check what the dispatcher would convert silently (True as 1, a
# one-element tensor as its value) or refuse with a message about the list's type (an int beyond int64).
@pytest.mark.parametrize("name,value,exc", [
    ("rounding_seeds", True, TypeError),
    ("rounding_seeds", torch.tensor(3), TypeError),
    ("rounding_seeds", 3.0, TypeError),
    ("rounding_seeds", 2**70, ValueError),
    ("rounding_offsets", True, TypeError),
    ("rounding_offsets", torch.tensor(0), TypeError),
    ("rounding_offsets", 2**64, ValueError),
])
def test_wrapper_refuses_seeds_and_offsets_the_dispatcher_would_convert(device, name, value, exc):
    args = make_args(device, stochastic=True)
    args[name][1] = value
    before = snapshot(args)
    with pytest.raises(exc, match=f"'{name}\\[1\\]'"):
        sgdf_erd.ops.fused_sgdf_(*args.values())
    assert_bit_identical(args, before)


def test_wrapper_takes_numpy_integers_as_seeds(device):
    np = pytest.importorskip("numpy")
    args, same = make_args(device, stochastic=True), make_args(device, stochastic=True)
    args["rounding_seeds"] = [np.int64(s) for s in args["rounding_seeds"]]
    sgdf_erd.ops.fused_sgdf_(*args.values())
    call(same)
    for a, b in zip(args["params"], same["params"]):
        assert torch.equal(a, b)


def test_wrapper_call_without_tensors_does_nothing():
    """Empty lists (an empty param group): nothing to step; the dispatcher alone has no kernel to choose."""
    sgdf_erd.ops.fused_sgdf_([], [], [], [], [], [], 0.1, None, 0.9, 0.999, 1e-8, 0.5, 0.0, False, False, False,
                             None, None)
    sgdf_erd.ops.fused_sgdf_grouped_([], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [],
                                     None, None)
    sgdf_erd.ops.fused_sgdf_grouped_([], [], [], [], [], [], [], [0], [0.1], [None], [0.9], [0.999], [1e-8], [0.5],
                                     [0.0], [False], [False], [False], [False], [False], None, None)
