"""SGDF under torch.compile: `torch.compile(opt.step)` and a compiled training step give eager's results, with no
graph break inside the step and no recompilation when a tensor `lr` changes after the first steps (an LR scheduler
running). Sizes are tiny and the variants few: inductor compiles each one, which is slow on a small CPU."""

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from sgdf_erd import SGDF

pytestmark = pytest.mark.compile  # inductor compiles every case: scripts/gpu_check.sh runs these last

# Each path once, plus capturable and orthogonalisation (with decoupled weight decay, which multiplies by the lr).
CASES = {
    "fused": dict(fused=True),
    "foreach": dict(foreach=True),
    "single": dict(foreach=False),
    "capturable": dict(foreach=True, capturable=True),
    "orthogonalize": dict(fused=True, orthogonalize=True, weight_decay=0.1, decoupled_weight_decay=True),
}
WARMUP_STEPS, STEPS = 2, 5  # the first steps create the state, which compiles the step once more


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _model(device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).to(device)


def _twins(device, options):
    """The same model and optimizer twice: one runs compiled, the other eagerly."""
    models = [_model(device), _model(device)]
    opts = [SGDF(m.parameters(), lr=torch.tensor(0.05, device=device), **options) for m in models]
    return models, opts


def _assert_same(model, eager_model):
    for p, q in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _compiled_frames() -> int:
    return counters["frames"]["total"]


@pytest.mark.parametrize("case", CASES)
def test_compiled_step_matches_eager_without_breaks_or_recompiles(device, case):
    (model, eager_model), (opt, eager_opt) = _twins(device, CASES[case])
    step = torch.compile(opt.step, fullgraph=True)  # fullgraph: a graph break inside the step raises
    x = torch.randn(5, 4, device=device)
    for i in range(STEPS):
        if i == WARMUP_STEPS:
            frames = _compiled_frames()
        if i >= WARMUP_STEPS:  # the lr changes in place, as LR schedulers change a tensor lr
            for o in (opt, eager_opt):
                o.param_groups[0]["lr"].mul_(0.5)
        for m in (model, eager_model):
            m.zero_grad()
            m(x).square().sum().backward()
        step()
        eager_opt.step()
        _assert_same(model, eager_model)
    assert _compiled_frames() == frames, "the step was compiled again after the lr changed"
    assert not counters["graph_break"]
    for p, q in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(opt.state[p]["step"].cpu(), eager_opt.state[q]["step"].cpu(), rtol=0, atol=0)


# bfloat16 parameters with the storage options. The fused kernel does the arithmetic in both runs: bit-identical
# results. Compiled foreach code may round float32 intermediates differently from eager, which sends a
# stochastically rounded element to its other neighbour when its random number falls within that difference of the
# rounding threshold (seen: 2 of 2048 weights in a step), and such an element then follows its own path: all but a
# few elements must match exactly (with other random numbers, or none, about half would differ).
STORAGE_CASES = {
    "foreach-stochastic-bf16-state": (dict(foreach=True, stochastic_rounding=True, state_dtype=torch.bfloat16), 0.02),
    "fused-master-stochastic": (dict(fused=True, master_weights=True, stochastic_rounding=True), 0.0),
}


def _assert_nearly_equal(got, want, mismatch_fraction):
    """Equal, except at most `mismatch_fraction` of the elements, which stay close."""
    differ = got != want
    assert differ.float().mean().item() <= mismatch_fraction, f"{differ.sum().item()} of {got.numel()} differ"
    torch.testing.assert_close(got, want, rtol=0.1, atol=0.01)


@pytest.mark.parametrize("case", STORAGE_CASES)
def test_compiled_step_with_storage_options_matches_eager(device, case):
    options, mismatch_fraction = STORAGE_CASES[case]
    # one weight: inductor's code for the stochastic rounding of each stored tensor takes about 20 s per tensor to
    # compile on a 2-core CPU (once; then it is cached)
    torch.manual_seed(0)
    models = [torch.nn.Linear(64, 32, bias=False, device=device, dtype=torch.bfloat16) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    (model, eager_model), (opt, eager_opt) = models, [
        SGDF(m.parameters(), lr=torch.tensor(0.05, device=device), **options) for m in models]
    x = torch.randn(5, 64, device=device, dtype=torch.bfloat16)

    def backward():
        for m in (model, eager_model):
            m.zero_grad()
            m(x).float().square().sum().backward()

    torch.manual_seed(0)  # the first (eager) step creates the state and draws the rounding seeds: the same in both
    backward()
    opt.step()
    torch.manual_seed(0)
    eager_opt.step()
    step = torch.compile(opt.step, fullgraph=True)
    for i in range(3):
        if i == 1:
            frames = _compiled_frames()
        for o in (opt, eager_opt):
            o.param_groups[0]["lr"].mul_(0.5)
        backward()
        step()
        eager_opt.step()
        for p, q in zip(model.parameters(), eager_model.parameters()):
            _assert_nearly_equal(p, q, mismatch_fraction)
            for key in ("exp_avg", "exp_var", "master_param"):
                if key in opt.state[p]:
                    _assert_nearly_equal(opt.state[p][key], eager_opt.state[q][key], mismatch_fraction)
    assert _compiled_frames() == frames, "the step was compiled again after the lr changed"
    assert not counters["graph_break"]


def _train_step(model, opt, x):
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("case", ["fused", "foreach"])
def test_compiled_train_step_matches_eager(device, case):
    """Forward, backward and opt.step() in one compiled function; the only graph break is Dynamo's own at
    `loss.backward()`, none inside the step, and an lr changed in place (as schedulers do) compiles nothing new."""
    (model, eager_model), (opt, eager_opt) = _twins(device, CASES[case])
    compiled_step = torch.compile(_train_step)
    x = torch.randn(5, 4, device=device)
    for i in range(STEPS):
        if i == WARMUP_STEPS:
            frames = _compiled_frames()
        for o in (opt, eager_opt):
            o.zero_grad()
            o.param_groups[0]["lr"].fill_(0.05 * 0.7**i)
        torch.testing.assert_close(compiled_step(model, opt, x), _train_step(eager_model, eager_opt, x))
        _assert_same(model, eager_model)
    assert _compiled_frames() == frames, "the train step was compiled again after the lr changed"
    breaks = list(counters["graph_break"])
    assert len(breaks) == 1 and "Tensor.backward()" in breaks[0], breaks


def test_compiled_step_with_lr_scheduler(device):
    """torch's recipe (opt.step() and scheduler.step() in one compiled function, tensor lr): the only graph breaks
    are at torch's scheduler, whose file Dynamo never traces (it wraps opt.step); no recompiles as the lr decays."""
    (model, eager_model), (opt, eager_opt) = _twins(device, CASES["fused"])
    schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.7) for o in (opt, eager_opt)]
    x = torch.randn(5, 4, device=device)

    def step_and_schedule(o, scheduler):
        o.step()
        scheduler.step()

    compiled = torch.compile(step_and_schedule)
    for i in range(STEPS):
        if i == WARMUP_STEPS:
            frames = _compiled_frames()
        for m, o, s, run in ((model, opt, schedulers[0], compiled), (eager_model, eager_opt, schedulers[1],
                                                                     step_and_schedule)):
            o.zero_grad()
            m(x).square().mean().backward()
            run(o, s)
        _assert_same(model, eager_model)
    torch.testing.assert_close(opt.param_groups[0]["lr"], eager_opt.param_groups[0]["lr"])
    assert _compiled_frames() == frames, "the step was compiled again after the scheduler changed the lr"
    assert all("lr_scheduler.py" in reason for reason in counters["graph_break"]), list(counters["graph_break"])


def test_compiled_step_checks_before_anything_changes():
    """Under compile the step's checks run while Dynamo traces; a bad second group leaves the first untouched."""
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))
    opt = SGDF([{"params": [a]}, {"params": [b]}], lr=0.1, foreach=True)
    a.grad, b.grad = torch.randn(3), torch.randn(2, 2)
    opt.param_groups[1]["lr"] = float("nan")
    before = copy.deepcopy((a, b))
    with pytest.raises(Exception, match=r"ValueError: SGDF \(param group 1\): invalid learning rate lr=nan"):
        torch.compile(opt.step)()  # Dynamo wraps the ValueError raised while it traces
    assert not opt.state
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])


@pytest.mark.parametrize("bad", ["freed storage", "grad_scale on foreach"])
def test_compiled_step_refuses_what_the_eager_step_refuses(bad):
    """The checks the eager step runs before its kernel call run under compile too: a parameter whose storage was
    freed was read and written through a null pointer (a segfault), grad_scale / found_inf on a foreach group were
    ignored (found_inf = 1 stepped it)."""
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))
    opt = SGDF([{"params": [a]}, {"params": [b]}], lr=0.1, foreach=True)
    a.grad, b.grad = torch.randn(3), torch.randn(2, 2)
    opt.step()
    first = a.detach().clone(), opt.state[a]["exp_avg"].clone()
    if bad == "freed storage":
        b.untyped_storage().resize_(0)
        match = r"ValueError: SGDF: parameter 0 of param group 1 has elements but no memory"
    else:
        opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(1.0)
        match = r"ValueError: SGDF: grad_scale / found_inf are set .* param group 0 steps on the foreach path"
    with pytest.raises(Exception, match=match):
        torch.compile(opt.step, backend="eager")()  # Dynamo wraps the ValueError raised while it traces
    assert torch.equal(a, first[0]) and torch.equal(opt.state[a]["exp_avg"], first[1])
