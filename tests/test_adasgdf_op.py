"""AdaSGDF through the raw operators: ``fused_sgdf_`` / ``fused_sgdf_grouped_`` with a ``preconditioner``. Steps
against the float64 reference written from the definition (tests/reference/adasgdf_reference.py), for every dtype,
storage option and hyperparameter (hypothesis); schema and fake (opcheck); the grouped op stepping each group as the
single op does; and the contract for bad input: a clear error and every input bit-identical afterwards.
"""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sgdf_erd  # noqa: F401  (registers the ops and their fake implementations)
from tests.devices import DEVICES
from tests.reference.adasgdf_reference import PRECONDITIONERS, ReferenceAdaSGDF
from tests.test_sgdf_op import assert_bit_identical, make_args, op, snapshot

grouped_op = torch.ops.sgdf_erd.fused_sgdf_grouped_
SHAPES = [(5, 4), (7,), (0, 3), (2, 3, 3), (37,)]


def ada_args(device, preconditioner, **kwargs):
    """make_args (nonzero state, every operand matters) with the AdaSGDF arguments appended in schema order."""
    args = make_args(device, **kwargs)
    state_dtype = args["exp_avgs"][0].dtype
    gen = torch.Generator().manual_seed(1)
    args["exp_avg_sqs"] = ([(0.01 * torch.rand(p.shape, generator=gen, dtype=torch.float64)).to(device, state_dtype)
                            for p in args["params"]] if preconditioner == "second_moment" else None)
    args["preconditioner"] = preconditioner
    return args


def call(args):
    op(*args.values())


def zero_state(args):
    for name in ("exp_avgs", "exp_vars", "exp_avg_sqs", "steps"):
        for t in args[name] or []:
            t.zero_()


def run_against_reference(device, preconditioner, dtype, state_dtype, master, hyper, steps, shapes, seed):
    """`steps` op calls from zero state beside the reference; returns (args, reference)."""
    args = ada_args(device, preconditioner, dtype=dtype, state_dtype=state_dtype, master=master, shapes=shapes,
                    seed=seed)
    zero_state(args)
    if master:
        args["master_params"] = [p.float() for p in args["params"]]
    args.update({k: hyper[k] for k in ("beta1", "beta2", "eps", "gamma", "weight_decay", "decoupled_weight_decay",
                                       "maximize", "lr")})
    low = dtype in (torch.bfloat16, torch.float16)
    ref = ReferenceAdaSGDF(args["params"], lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"],
                           gamma=hyper["gamma"], weight_decay=hyper["weight_decay"],
                           decoupled_weight_decay=hyper["decoupled_weight_decay"], maximize=hyper["maximize"],
                           preconditioner=preconditioner,
                           round_to=torch.float32 if master else (dtype if low else None),
                           state_round_to=state_dtype if state_dtype not in (None, torch.float64) else None)
    gen = torch.Generator().manual_seed(seed + 100)
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(device, dtype) for p in args["params"]]
        args["grads"] = [g.clone() for g in grads]
        call(args)
        ref.step(grads)
    return args, ref


def assert_matches(args, ref, dtype, state_dtype, master):
    state_dtype = state_dtype or dtype
    tol = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5),
           torch.bfloat16: dict(rtol=2**-7, atol=1e-2), torch.float16: dict(rtol=2**-10, atol=1e-3)}
    weights = args["master_params"] if master else args["params"]
    for i, w in enumerate(weights):
        assert_weights_close(w.double().cpu(), ref.p[i], ref, i, **tol[torch.float32 if master else dtype])
        state = ref.state(i)
        assert int(args["steps"][i]) == state["step"]
        for key, name in (("exp_avg", "exp_avgs"), ("exp_var", "exp_vars"), ("exp_avg_sq", "exp_avg_sqs")):
            if key not in state:
                continue
            actual, expected = args[name][i].double().cpu(), state[key]
            if key == "exp_avg" and ref.wd and not ref.decoupled:
                # coupled decay: each g = grad + wd p carries wd times the weight's error (assert_weights_close's
                # bound), which a cancellation in g leaves large against m itself (lr 0.3, wd 0.2, eps 1e-3,
                # beta1 0, maximize, seed 6845: m = -36.412 for wd p = 2147, 1.3e-3 off, 3.5e-5 of m)
                weight_tol = tol[torch.float32 if master else dtype]
                allowed = (tol[state_dtype]["atol"] + tol[state_dtype]["rtol"] * expected.abs()
                           + ref.wd * weight_tol["rtol"] * (ref.peak[i] + ref.sensitivity[i]))
                far = ~((actual - expected).abs() <= allowed)
                assert not far.any(), (f"'{key}' of parameter {i}: {int(far.sum())} elements off, the worst "
                                       f"{(actual - expected).abs().max().item()}")
            else:
                torch.testing.assert_close(actual, expected, **tol[state_dtype])


def assert_weights_close(actual, expected, ref, i, rtol, atol):
    """|actual - expected| <= atol + rtol * (peak + sensitivity) elementwise, the scales ReferenceAdaSGDF keeps
    for parameter i: rtol is the relative error each input of a step may carry (a stored value, or a result of the
    arithmetic), and these are what such errors become in the weight:
    - peak, the largest |p| along the trajectory, not the final |p|: each step rounds p_k and lr u_k relative to
      their own size (|lr u_k| <= |p_k| + |p_(k-1)|), whatever p_n cancels to. Where eps dominates d + eps the
      steps are large: with beta1 = 0, m = g and g - m = 0 exactly in every precision, so s = 0, d = 0 and the
      step is lr g / eps (1e5 for lr = 1e-3); a float32 weight that goes to -8.5e4 and back to -2.5e2 carries
      ulp(8.5e4) / 2 = 0.004 per rounding: 3e-5 of its final value, 5e-8 of its peak.
    - sensitivity, the sum of lr (|grad| + |wd p| + |m^|) / (d + eps): an input of the numerator g^ known to a
      relative e moves the step by e times that. It exceeds |lr u| only where g^ is a cancellation that eps
      dominates: coupled weight decay with grad = -wd p on the bfloat16 grid makes g exactly 0 in float64, and
      (0.2f - 0.2) p ~ 1e-9 with float32's wd, which the step divides by eps = 1e-8."""
    peak, sensitivity = ref.peak[i], ref.sensitivity[i]
    assert actual.shape == expected.shape == peak.shape
    far = ~((actual - expected).abs() <= atol + rtol * (peak + sensitivity)) & (actual != expected)  # NaN is far
    if far.any():
        j = int(torch.where(far, (actual - expected).abs().nan_to_num(float("inf")), -1).flatten().argmax())
        a, e, m, se = (float(x.flatten()[j]) for x in (actual, expected, peak, sensitivity))
        raise AssertionError(f"{int(far.sum())} of {far.numel()} elements differ by more than {atol} + {rtol} * "
                             f"(peak + sensitivity); the worst, flat index {j}: {a} against {e} (peak {m}, "
                             f"sensitivity {se})")


hyperparameters = st.fixed_dictionaries(dict(
    lr=st.sampled_from([1e-3, 0.05, 0.3]),
    beta1=st.sampled_from([0.0, 0.5, 0.9]),
    beta2=st.sampled_from([0.9, 0.99, 0.999]),
    eps=st.sampled_from([1e-8, 1e-3]),
    gamma=st.sampled_from([0.5, 1.0, 0.3]),
    weight_decay=st.sampled_from([0.0, 1e-2, 0.2]),
    decoupled_weight_decay=st.booleans(),
    maximize=st.booleans(),
))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@settings(max_examples=15, deadline=None)
@given(hyper=hyperparameters, steps=st.integers(1, 4), seed=st.integers(0, 2**16),
       shapes=st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4))
# eps-dominated steps (beta1 = 0: s = 0) of ~1e5 whose sum cancels to -2.5e2 in one element (assert_weights_close)
@example(hyper=dict(lr=1e-3, beta1=0.0, beta2=0.9, eps=1e-8, gamma=0.5, weight_decay=0.0, decoupled_weight_decay=False,
                    maximize=False), steps=2, seed=664, shapes=[(5, 4), (37,)])
# coupled decay cancelling in g: exp_avg carries the weight's error times wd (assert_matches; hypothesis found it)
@example(hyper=dict(lr=0.3, beta1=0.0, beta2=0.9, eps=1e-3, gamma=0.5, weight_decay=0.2, decoupled_weight_decay=False,
                    maximize=True), steps=4, seed=6845, shapes=[(5, 4), (2, 3, 3)])
def test_steps_match_the_reference(device, preconditioner, dtype, hyper, steps, seed, shapes):
    args, ref = run_against_reference(device, preconditioner, dtype, None, False, hyper, steps, shapes, seed)
    assert_matches(args, ref, dtype, None, False)


# (param dtype, state dtype, master copies)
STORAGE = {
    "f32_bf16_state": (torch.float32, torch.bfloat16, False),
    "bf16": (torch.bfloat16, None, False),
    "bf16_f32_state": (torch.bfloat16, torch.float32, False),
    "f16_master": (torch.float16, torch.float32, True),
    "bf16_master_bf16_state": (torch.bfloat16, torch.bfloat16, True),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("storage", list(STORAGE))
@settings(max_examples=5, deadline=None)
@given(hyper=hyperparameters, seed=st.integers(0, 2**16))
# grad = -wd p exactly for one bfloat16 element: g is 0 in float64 and ~1e-9 with float32's wd (assert_weights_close)
@example(hyper=dict(lr=0.3, beta1=0.9, beta2=0.9, eps=1e-8, gamma=0.5, weight_decay=0.2, decoupled_weight_decay=False,
                    maximize=False), seed=2460)
def test_one_step_of_each_storage_matches_the_reference(device, preconditioner, storage, hyper, seed):
    """One step from zero state: the kernel's float32 arithmetic on the stored values, rounded once into storage,
    is the reference's rounded result within one unit of the storage dtype."""
    dtype, state_dtype, master = STORAGE[storage]
    args, ref = run_against_reference(device, preconditioner, dtype, state_dtype, master, hyper, 1, SHAPES, seed)
    assert_matches(args, ref, dtype, state_dtype, master)


# ------------------------------------------------------------------------------------------ schema and fake
OPCHECK_STORAGE = {  # (param dtype, state dtype, master copies, stochastic rounding, update buffers)
    "f32": (torch.float32, None, False, False, False),
    "f64_updates": (torch.float64, None, False, False, True),
    "bf16_state_sr": (torch.float32, torch.bfloat16, False, True, False),
    "bf16_master_sr_updates": (torch.bfloat16, torch.bfloat16, True, True, True),
    "f16_f32_state": (torch.float16, torch.float32, False, False, False),
}


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
@pytest.mark.parametrize("storage", list(OPCHECK_STORAGE))
def test_opcheck(device, preconditioner, storage):
    dtype, state_dtype, master, stochastic, updates = OPCHECK_STORAGE[storage]
    args = ada_args(device, preconditioner, dtype=dtype, state_dtype=state_dtype, master=master,
                    stochastic=stochastic, updates=updates, amp=True, lr_tensor=True)
    torch.library.opcheck(op.default, tuple(args.values()))


def test_fake_takes_the_new_arguments():
    args = ada_args("meta", "second_moment", amp=True, lr_tensor=True)
    assert op(*args.values()) is None


# ------------------------------------------------------------------------------------------ kernel behaviour
@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
def test_update_mode_writes_the_preconditioned_update(device, preconditioner):
    """With update buffers the kernel writes lr-free g^ / (d + eps) and leaves the weights: p - lr * update is what
    the apply mode writes."""
    applied = ada_args(device, preconditioner, updates=False)
    buffered = ada_args(device, preconditioner, updates=True)
    applied["weight_decay"] = buffered["weight_decay"] = 0.0
    params_before = [p.clone() for p in buffered["params"]]
    call(applied)
    call(buffered)
    for p, p0, u, q in zip(buffered["params"], params_before, buffered["updates"], applied["params"]):
        assert torch.equal(p, p0)
        torch.testing.assert_close(p0 - 0.1 * u, q, rtol=1e-6, atol=1e-6)
    for name in ("exp_avgs", "exp_vars", "exp_avg_sqs"):
        for a, b in zip(applied[name] or [], buffered[name] or []):
            assert torch.equal(a, b)


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
def test_found_inf_skips_everything(device, preconditioner):
    args = ada_args(device, preconditioner, amp=True, found_inf=1.0, step=3.0)
    before = snapshot(args)
    call(args)
    assert_bit_identical(args, before)


def test_variance_mode_reads_no_second_moment_and_none_keeps_sgdf(device):
    """preconditioner='none' is SGDF bit for bit (the op's default), and the adaptive modes differ from it."""
    default, explicit, variance = (make_args(device) for _ in range(3))
    call(default)
    op(*explicit.values(), None, "none")
    op(*variance.values(), None, "variance")
    for a, b, c in zip(default["params"], explicit["params"], variance["params"]):
        assert torch.equal(a, b)
        if a.numel():
            assert not torch.equal(a, c)


@pytest.mark.parametrize("dtype,state_dtype,master", [(torch.float32, torch.bfloat16, False),
                                                      (torch.bfloat16, torch.bfloat16, True)])
def test_stochastic_rounding_rounds_exp_avg_sq_with_its_own_stream(device, dtype, state_dtype, master):
    """exp_avg_sq rounds stochastically with stream 3, as the Python paths round it (counter_random.py)."""
    from sgdf_erd.optim.counter_random import EXP_AVG_SQ_STREAM
    from sgdf_erd.optim.stochastic_rounding import round_all_into_
    args = ada_args(device, "second_moment", dtype=dtype, state_dtype=state_dtype, master=master, stochastic=True,
                    shapes=[(300,)], step=4.0)
    args["rounding_offsets"] = []
    # the same step with float32 state and no rounding: the kernel's float32 result before it is stored
    twin = {k: ([t.float() if k in ("exp_avgs", "exp_vars", "exp_avg_sqs") else t.clone() for t in v]
                if isinstance(v, list) and v and isinstance(v[0], torch.Tensor) else v) for k, v in args.items()}
    twin["rounding_seeds"] = []
    call(args)
    call(twin)
    expected = torch.empty_like(args["exp_avg_sqs"][0])
    round_all_into_([expected], [twin["exp_avg_sqs"][0]], args["rounding_seeds"], args["steps"], EXP_AVG_SQ_STREAM)
    assert torch.equal(expected, args["exp_avg_sqs"][0])
    nearest = twin["exp_avg_sqs"][0].to(state_dtype)
    assert not torch.equal(nearest, args["exp_avg_sqs"][0])  # (the test can tell the two apart)


# ------------------------------------------------------------------------------------------ grouped op
@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
def test_grouped_op_steps_each_group_as_the_single_op(device, preconditioner):
    groups = [ada_args(device, preconditioner, seed=0, shapes=[(5, 4), (7,)]),
              ada_args(device, preconditioner, seed=1, dtype=torch.bfloat16, state_dtype=torch.float32, master=True,
                       stochastic=True, shapes=[(9,)]),
              ada_args(device, preconditioner, seed=2, dtype=torch.float64, shapes=[(3, 3)])]
    groups[1].update(weight_decay=0.1, decoupled_weight_decay=True, maximize=True, gamma=1.0)
    for g in groups:
        g["rounding_offsets"] = []
    singles = [{k: ([t.clone() for t in v] if isinstance(v, list) and v and isinstance(v[0], torch.Tensor) else v)
                for k, v in g.items()} for g in groups]
    for s in singles:
        call(s)
    grouped_op(*grouped(groups, preconditioner).values())
    for g, s in zip(groups, singles):
        for name in ("params", "exp_avgs", "exp_vars", "exp_avg_sqs", "master_params", "steps"):
            for a, b in zip(g[name] or [], s[name] or []):
                assert torch.equal(a, b), name


def grouped(groups, preconditioner):
    merged = {name: [t for g in groups for t in g[name]] for name in
              ("params", "grads", "exp_avgs", "exp_vars", "steps", "master_params", "rounding_seeds")}
    merged["group_sizes"] = [len(g["params"]) for g in groups]
    merged["lr"] = [g["lr"] for g in groups]
    merged["lr_tensor"] = [g["lr_tensor"] for g in groups]
    for name in ("beta1", "beta2", "eps", "gamma", "weight_decay", "decoupled_weight_decay", "sign", "maximize"):
        merged[name] = [g[name] for g in groups]
    merged["master_weights"] = [bool(g["master_params"]) for g in groups]
    merged["stochastic_rounding"] = [bool(g["rounding_seeds"]) for g in groups]
    merged["grad_scale"] = merged["found_inf"] = None
    merged["exp_avg_sqs"] = [t for g in groups for t in g["exp_avg_sqs"]] if preconditioner == "second_moment" \
        else None
    merged["preconditioner"] = preconditioner
    return merged


def test_grouped_opcheck(device):
    groups = [ada_args(device, "second_moment", seed=0), ada_args(device, "second_moment", seed=1,
                                                                  dtype=torch.float64)]
    for g in groups:
        g["rounding_offsets"] = []
    torch.library.opcheck(grouped_op.default, tuple(grouped(groups, "second_moment").values()))


# ------------------------------------------------------------------------------------------ bad input
def _drop_one(args):
    args["exp_avg_sqs"] = args["exp_avg_sqs"][:-1]


BAD = {
    # (the raw op: its ValueError marker reaches Python as ValueError up to torch 2.14, RuntimeError from 2.15)
    "unknown preconditioner": (lambda a: a.update(preconditioner="adam"), (ValueError, RuntimeError),
                               "invalid preconditioner"),
    "missing exp_avg_sqs": (lambda a: a.update(exp_avg_sqs=None), RuntimeError, "exp_avg_sqs"),
    "one exp_avg_sq short": (_drop_one, RuntimeError, "exp_avg_sqs"),
    "exp_avg_sq of another dtype": (lambda a: a["exp_avg_sqs"].__setitem__(1, a["exp_avg_sqs"][1].double()),
                                    RuntimeError, "exp_avg_sqs\\[1\\]"),
    "exp_avg_sq of another shape": (lambda a: a["exp_avg_sqs"].__setitem__(0, a["exp_avg_sqs"][0].reshape(-1)),
                                    RuntimeError, "exp_avg_sqs\\[0\\]"),
    "exp_avg_sq sharing the param": (lambda a: a["exp_avg_sqs"].__setitem__(0, a["params"][0]), RuntimeError,
                                     "exp_avg_sqs|memory"),
    "exp_avg_sqs without their mode": (lambda a: a.update(preconditioner="variance"), RuntimeError,
                                       "only the 'second_moment'"),
    # (the kernels took it and returned sign(u / d), i.e. sign(u): the preconditioner did nothing but update its state)
    "sign with a preconditioner": (lambda a: a.update(sign=True), RuntimeError, "sign=True is SGDF's option"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_and_changes_nothing(device, case):
    change, exc, match = BAD[case]
    args = ada_args(device, "second_moment", amp=True)
    change(args)
    before = snapshot(args)
    with pytest.raises(exc, match=match):
        call(args)
    assert_bit_identical(args, before)


def test_grouped_bad_exp_avg_sqs_raise_and_change_nothing(device):
    groups = [ada_args(device, "second_moment", seed=0), ada_args(device, "second_moment", seed=1)]
    for g in groups:
        g["rounding_offsets"] = []
    args = grouped(groups, "second_moment")
    args["exp_avg_sqs"] = args["exp_avg_sqs"][:-1]
    before = snapshot(args)
    with pytest.raises(RuntimeError, match="exp_avg_sqs"):
        grouped_op(*args.values())
    assert_bit_identical(args, before)
    args["exp_avg_sqs"] = None
    with pytest.raises(RuntimeError, match="exp_avg_sqs"):
        grouped_op(*args.values())
    assert_bit_identical(args, before)
