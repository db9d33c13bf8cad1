"""The ERD loss under torch.func transforms (grad, vjp, jvp, vmap, per-sample gradients, second derivatives) and
torch.compile, against the float64 reference (tests/reference/erd_reference.py) on every device."""

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call, grad, hessian, jacrev, jvp, vjp, vmap

from tests.reference import erd_reference as ref
from sgdf_erd.erd import ERDLoss, erd_loss, schedules

F64 = torch.float64


def make_batch(device, shape=(5, 3, 4), seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    output = torch.randn(shape, generator=g, dtype=F64)
    target = torch.randn(shape, generator=g, dtype=F64)
    values = schedules.ContinuousCosine()(torch.rand(shape[0], generator=g, dtype=F64) * 0.9 + 0.05)
    return output.to(device, dtype), target.to(device, dtype), values.alpha.to(device), values.sigma.to(device)


def reference_grads(output, target, alpha, sigma, prediction, weighting="erd"):
    """d loss / d output and d loss / d target of the float64 reference."""
    o = output.detach().cpu().double().requires_grad_(True)
    t = target.detach().cpu().double().requires_grad_(True)
    w = ref.baseline_weight(alpha.cpu(), sigma.cpu(), prediction, weighting)
    return torch.autograd.grad(ref.loss(o, t, w), (o, t))


@pytest.mark.parametrize("prediction,weighting", [("eps", "erd"), ("v", "erd"), ("x0", "min_snr"),
                                                  ("flow", "erd")])
def test_func_grad_matches_reference(device, prediction, weighting):
    output, target, alpha, sigma = make_batch(device, seed=1)
    loss = lambda o, t: erd_loss(o, t, alpha, sigma, prediction, weighting)[0]  # noqa: E731
    d_output, d_target = grad(loss, argnums=(0, 1))(output, target)
    expected = reference_grads(output, target, alpha, sigma, prediction, weighting)
    torch.testing.assert_close(d_output.cpu(), expected[0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(d_target.cpu(), expected[1], rtol=1e-12, atol=1e-15)


def test_func_grad_of_module_and_float32(device):
    output, target, alpha, sigma = make_batch(device, seed=2, dtype=torch.float32)
    loss_fn = ERDLoss("v").to(device)
    d_output = grad(lambda o: loss_fn(o, target, alpha, sigma))(output)
    assert d_output.dtype == torch.float32
    expected = reference_grads(output, target, alpha, sigma, "v")[0]
    torch.testing.assert_close(d_output.cpu().double(), expected, rtol=1e-5, atol=1e-9)


def test_func_vjp_matches_reference(device):
    output, target, alpha, sigma = make_batch(device, seed=3)
    loss, pullback = vjp(lambda o, t: erd_loss(o, t, alpha, sigma, "eps")[0], output, target)
    d_output, d_target = pullback(torch.tensor(2.5, dtype=F64, device=device))
    w = ref.erd_weight(alpha.cpu(), sigma.cpu(), "eps")
    torch.testing.assert_close(loss.cpu(), ref.loss(output.cpu(), target.cpu(), w), rtol=1e-12, atol=0)
    expected = reference_grads(output, target, alpha, sigma, "eps")
    torch.testing.assert_close(d_output.cpu(), 2.5 * expected[0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(d_target.cpu(), 2.5 * expected[1], rtol=1e-12, atol=1e-15)


def test_vmap_forward_equals_one_call_per_slice(device):
    # a leading vmapped dimension of 3 over batches of 5: each slice is its own loss, statistics included
    output, target, alpha, sigma = make_batch(device, shape=(3, 5, 6), seed=4)
    alpha, sigma = alpha[:, None].expand(3, 5).contiguous(), sigma[:, None].expand(3, 5).contiguous()
    batched = vmap(lambda o, t, a, s: erd_loss(o, t, a, s, "v"))(output, target, alpha, sigma)
    for i in range(3):
        one = erd_loss(output[i], target[i], alpha[i], sigma[i], "v")
        for got, want in zip(batched, one):
            assert torch.equal(got[i], want)
    w = ref.erd_weight(alpha[0].cpu(), sigma[0].cpu(), "v")
    torch.testing.assert_close(batched[0][0].cpu(), ref.loss(output[0].cpu(), target[0].cpu(), w), rtol=1e-12,
                               atol=0)
    # an argument not vmapped (in_dims None) is shared by every slice
    shared = vmap(lambda o: erd_loss(o, target[0], alpha[0], sigma[0], "eps")[0])(output)
    assert torch.equal(shared[1], erd_loss(output[1], target[0], alpha[0], sigma[0], "eps")[0])


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 5), features=st.integers(1, 7), prediction=st.sampled_from(["eps", "x0", "v", "flow"]),
       seed=st.integers(0, 2**16))
def test_per_sample_gradients_match_reference_drawn(batch, features, prediction, seed):
    # vmap(grad) over drawn batches: sample i's gradient is the gradient of its own batch-of-one loss
    output, target, alpha, sigma = make_batch("cpu", shape=(batch, features), seed=seed)
    sample_loss = lambda o, t, a, s: erd_loss(o[None], t[None], a[None], s[None], prediction)[0]  # noqa: E731
    d_output, d_target = vmap(grad(sample_loss, argnums=(0, 1)))(output, target, alpha, sigma)
    for i in range(batch):
        expected = reference_grads(output[i:i + 1], target[i:i + 1], alpha[i:i + 1], sigma[i:i + 1], prediction)
        torch.testing.assert_close(d_output[i], expected[0][0], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(d_target[i], expected[1][0], rtol=1e-12, atol=1e-15)


def test_per_sample_gradients_of_a_model(device):
    # vmap(grad(...)) over the batch: each sample's parameter gradient of its own (batch-of-one) loss
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 6).to(device, F64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, target, alpha, sigma = make_batch(device, shape=(4, 6), seed=5)
    loss_fn = ERDLoss("eps")

    def sample_loss(p, xi, ti, ai, si):
        out = functional_call(model, p, (xi[None],))
        return loss_fn(out, ti[None], ai[None], si[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0, 0))(params, x, target, alpha, sigma)
    for i in range(4):
        p = {k: v.cpu().clone().requires_grad_(True) for k, v in params.items()}
        out = x[i:i + 1].cpu() @ p["weight"].T + p["bias"]
        w = ref.erd_weight(alpha[i:i + 1].cpu(), sigma[i:i + 1].cpu(), "eps")
        expected = torch.autograd.grad(ref.loss(out, target[i:i + 1].cpu(), w), (p["weight"], p["bias"]))
        torch.testing.assert_close(per_sample["weight"][i].cpu(), expected[0], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(per_sample["bias"][i].cpu(), expected[1], rtol=1e-12, atol=1e-15)


def test_second_derivatives_under_func(device):
    # jacrev(grad(...)): the Hessian in output, through the backward op's own derivative
    output, target, alpha, sigma = make_batch(device, shape=(3, 2), seed=6)
    loss = lambda o: erd_loss(o, target, alpha, sigma, "v")[0]  # noqa: E731
    hessian = jacrev(grad(loss))(output)
    w = ref.erd_weight(alpha.cpu(), sigma.cpu(), "v")
    expected = torch.autograd.functional.hessian(lambda o: ref.loss(o, target.cpu(), w), output.cpu())
    torch.testing.assert_close(hessian.cpu(), expected, rtol=1e-12, atol=1e-15)
    # mixed derivative d^2 loss / d output d target = -Hessian
    mixed = jacrev(grad(lambda o, t: erd_loss(o, t, alpha, sigma, "v")[0]), argnums=1)(output, target)
    torch.testing.assert_close(mixed.cpu(), -expected, rtol=1e-12, atol=1e-15)


def test_forward_mode_jvp_and_hessian(device):
    # forward mode (jvp) and torch.func.hessian (jacfwd over jacrev), the backward op's jvp included
    output, target, alpha, sigma = make_batch(device, shape=(3, 2), seed=10)
    w = ref.erd_weight(alpha.cpu(), sigma.cpu(), "eps")
    tangents = (torch.randn_like(output), torch.randn_like(target))
    _, got = jvp(lambda o, t: erd_loss(o, t, alpha, sigma, "eps")[0], (output, target), tangents)
    _, expected = jvp(lambda o, t: ref.loss(o, t, w), (output.cpu(), target.cpu()), tuple(t.cpu() for t in tangents))
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-15)
    got = hessian(lambda o: erd_loss(o, target, alpha, sigma, "eps")[0])(output)
    expected = torch.autograd.functional.hessian(lambda o: ref.loss(o, target.cpu(), w), output.cpu())
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-15)


def test_create_graph_gradient_of_gradient_norm(device):
    # autograd's double backward (gradient penalty): d/d output of |d loss / d output|^2 against the reference
    output, target, alpha, sigma = make_batch(device, seed=7)
    o = output.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(erd_loss(o, target, alpha, sigma, "eps")[0], o, create_graph=True)
    (gg,) = torch.autograd.grad(g.square().sum(), o)
    o64 = output.cpu().clone().requires_grad_(True)
    w = ref.erd_weight(alpha.cpu(), sigma.cpu(), "eps")
    (g64,) = torch.autograd.grad(ref.loss(o64, target.cpu(), w), o64, create_graph=True)
    (expected,) = torch.autograd.grad(g64.square().sum(), o64)
    torch.testing.assert_close(gg.cpu(), expected, rtol=1e-12, atol=1e-15)


def test_forward_over_reverse_outside_torch_func(device):
    # a Hessian-vector product with torch.autograd.forward_ad over a plain backward (no create_graph): the backward
    # kernel's call must keep the tangent of its dual input
    import torch.autograd.forward_ad as fwAD
    output, target, alpha, sigma = make_batch(device, seed=11)
    tangent = torch.randn_like(output)
    with fwAD.dual_level():
        o = fwAD.make_dual(output.clone().requires_grad_(True), tangent)
        (g,) = torch.autograd.grad(erd_loss(o, target, alpha, sigma, "eps")[0], o)
        got = fwAD.unpack_dual(g).tangent
    assert got is not None, "the tangent was lost"
    w = ref.erd_weight(alpha.cpu(), sigma.cpu(), "eps")
    o64 = output.cpu().clone().requires_grad_(True)
    (g64,) = torch.autograd.grad(ref.loss(o64, target.cpu(), w), o64, create_graph=True)
    (expected,) = torch.autograd.grad(g64, o64, tangent.cpu())  # the Hessian (symmetric) times the tangent
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-15)


def test_outputs_other_than_the_loss_carry_no_gradient(device):
    output, target, alpha, sigma = make_batch(device)
    loss, mse, weight, bin_sums = erd_loss(output.requires_grad_(True), target, alpha, sigma)
    assert loss.requires_grad and not (mse.requires_grad or weight.requires_grad or bin_sums.requires_grad)


def test_torch_compile_matches_eager(device):
    # one graph (fullgraph) for the loss; AOTAutograd compiles its backward, run by loss.backward()
    output, target, alpha, sigma = make_batch(device, seed=8, dtype=torch.float32)
    loss_fn = ERDLoss("v").to(device)
    results = []
    for fn in (loss_fn, torch.compile(loss_fn, backend="aot_eager", fullgraph=True)):
        o = output.clone().requires_grad_(True)
        loss = fn(o, target, alpha, sigma)
        loss.backward()
        results.append((loss.detach(), o.grad))
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-9)
    assert int(loss_fn.num_batches_tracked) == 2  # the compiled call kept the statistics too


def test_statistics_untouched_under_transforms_and_kept_outside(device):
    output, target, alpha, sigma = make_batch(device, seed=9)
    loss_fn = ERDLoss("eps").to(device)
    grad(lambda o: loss_fn(o, target, alpha, sigma))(output)
    vmap(lambda o, t: loss_fn(o[None], t[None], alpha[:1], sigma[:1]))(output, target)
    assert int(loss_fn.num_batches_tracked) == 0 and not loss_fn.running_sums.any()
    loss_fn(output, target, alpha, sigma)
    assert int(loss_fn.num_batches_tracked) == 1 and loss_fn.statistics()["count"].sum() == output.shape[0]


def test_autograd_batched_gradients(device):
    """autograd's own vmap (torch.autograd.grad(is_grads_batched=True), autograd.functional's vectorize=True,
    gradcheck's check_batched_grad), which has no batching rule for the ops: the derivatives scale unbatched calls."""
    output, target, alpha, sigma = make_batch(device, shape=(4, 3), seed=12)
    o, t = output.clone().requires_grad_(True), target.clone().requires_grad_(True)
    w = ref.erd_weight(alpha.cpu(), sigma.cpu(), "eps")
    cotangents = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, device=device)
    got = torch.autograd.grad(erd_loss(o, t, alpha, sigma, "eps")[0], (o, t), cotangents, is_grads_batched=True)
    o64, t64 = output.cpu().requires_grad_(True), target.cpu().requires_grad_(True)
    expected = torch.autograd.grad(ref.loss(o64, t64, w), (o64, t64), cotangents.cpu(), is_grads_batched=True)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-12, atol=1e-15)
    got = torch.autograd.functional.hessian(lambda o, t: erd_loss(o, t, alpha, sigma, "eps")[0], (output, target),
                                            vectorize=True)
    expected = torch.autograd.functional.hessian(lambda o, t: ref.loss(o, t, w), (output.cpu(), target.cpu()),
                                                 vectorize=True)
    for g, e in zip((h for row in got for h in row), (h for row in expected for h in row)):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-12, atol=1e-15)
    assert torch.autograd.gradcheck(lambda o, t: erd_loss(o, t, alpha, sigma, "eps")[0], (o, t),
                                    check_batched_grad=True)


@pytest.mark.parametrize("schedule,timesteps", [
    (schedules.DiscreteVP.linear(), lambda g: torch.randint(0, 1000, (5,), generator=g)),
    (schedules.ContinuousCosine(), lambda g: torch.rand(5, generator=g)),
    (schedules.LinearFlow(), lambda g: torch.rand(5, generator=g)),
    (schedules.DiscreteVP.linear(), lambda g: torch.randint(0, 256, (5,), generator=g).to(torch.uint8)),
    (schedules.FlowMatchTimesteps(1000), lambda g: torch.rand(5, generator=g) * 1000),
], ids=["discrete_vp", "cosine", "flow", "discrete_vp_uint8", "flow_match"])
def test_torch_compile_fullgraph_with_timesteps(device, schedule, timesteps):
    """ERDLoss(schedule=...) called with timesteps= compiles into one graph: the schedules' range checks on the
    host are eager-only (checked_on_host)."""
    torch._dynamo.reset()  # each case compiles a new module: keep clear of the recompile limit (fullgraph fails on it)
    output, target, _, _ = make_batch(device, seed=13, dtype=torch.float32)
    t = timesteps(torch.Generator().manual_seed(0)).to(device)
    prediction = "flow" if isinstance(schedule, schedules.LinearFlow) else "eps"
    eager, compiled = ERDLoss(prediction, schedule=schedule), ERDLoss(prediction, schedule=schedule)
    got = torch.compile(compiled, backend="aot_eager", fullgraph=True)(output, target, timesteps=t)
    torch.testing.assert_close(got, eager(output, target, timesteps=t), rtol=1e-6, atol=1e-9)


def test_evaluation_without_grad_calls_the_op_directly_and_matches(device):
    """Under torch.no_grad / inference_mode the loss is the op's (no autograd node); forward-mode AD still gets its
    tangent there (it is not grad mode)."""
    import torch.autograd.forward_ad as fwAD
    output, target, alpha, sigma = make_batch(device, seed=14)
    o = output.clone().requires_grad_(True)
    expected = erd_loss(o, target, alpha, sigma, "v")[0]
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            got = erd_loss(o, target, alpha, sigma, "v")[0]
        assert got.grad_fn is None and torch.equal(got, expected.detach())
    tangent = torch.randn_like(output)
    w = ref.erd_weight(alpha.cpu(), sigma.cpu(), "v")
    _, want = jvp(lambda o: ref.loss(o, target.cpu(), w), (output.cpu(),), (tangent.cpu(),))
    with torch.no_grad(), fwAD.dual_level():
        got = fwAD.unpack_dual(erd_loss(fwAD.make_dual(output, tangent), target, alpha, sigma, "v")[0]).tangent
    torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("schedule,timesteps,prediction", [
    (schedules.DiscreteVP.cosine(1000), torch.tensor([0, 17, 999, 500]), "v"),
    (schedules.DiscreteVP.linear(1000), torch.tensor([3, 250, 998, 10], dtype=torch.int32), "eps"),
    (schedules.FlowMatchTimesteps(1000), torch.tensor([0.0, 333.5, 1000.0, 42.0]), "flow"),
    (schedules.ContinuousCosine(), torch.tensor([0.0, 0.3, 1.0, 0.7], dtype=F64), "x0"),
], ids=["discrete_vp", "discrete_vp_int32", "flow_match", "cosine"])
def test_per_sample_gradients_with_timesteps(device, schedule, timesteps, prediction):
    """vmap(grad) with loss_fn(out, target, timesteps=t): the schedule's lookup runs under vmap (no value to read
    on the host) and equals the per-sample loss with the schedule's alpha and sigma passed in."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 6).to(device, F64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, target, _, _ = make_batch(device, shape=(4, 6), seed=6)
    t = timesteps.to(device)
    loss_fn = ERDLoss(prediction, schedule=schedule)

    def sample_loss(p, xi, yi, ti):
        return loss_fn(functional_call(model, p, (xi[None],)), yi[None], timesteps=ti[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0))(params, x, target, t)
    values = schedule(t)
    derivatives = dict(alpha_prime=values.alpha_prime, sigma_prime=values.sigma_prime) if prediction == "flow" else {}
    for i in range(4):
        expected = grad(lambda p: ERDLoss(prediction)(
            functional_call(model, p, (x[i:i + 1],)), target[i:i + 1], values.alpha[i:i + 1], values.sigma[i:i + 1],
            **{k: v[i:i + 1] for k, v in derivatives.items()}))(params)
        for name in params:
            torch.testing.assert_close(per_sample[name][i], expected[name], rtol=1e-12, atol=1e-15)
