"""SGDF on CUDA: what only a GPU can show (AMP with GradScaler, no hidden host synchronisation, CUDA graphs, launches
over many tensors, two devices, CPU parameters with CUDA scalars).

The float64-reference comparisons of every path, dtype and option, hypothesis shapes, zero-size, complex, misaligned
and channels_last parameters run on CUDA too, through the `device` fixture in tests/test_sgdf.py; the raw op's
checks and opcheck through it in tests/test_sgdf_op.py.
"""

import io
import os

import pytest
import torch

from sgdf_erd import SGDF
from sgdf_erd.optim.sgdf_functional import fused_sgdf
from tests.devices import CUDA_BUILD, HAS_GPU, requires_cuda, requires_two_gpus
from tests.reference.sgdf_reference import ReferenceSGDF
from tests.test_sgdf import PATHS, TOL, _assert_close, _grads, _make_params, _run_against_reference


def _to_cuda(params, index=0):
    return [torch.nn.Parameter(p.detach().to(f"cuda:{index}")) for p in params]


def _bits(tensors):
    return [t.detach().cpu().clone() for t in tensors]


def _assert_bit_identical(tensors, before, what):
    for i, (t, b) in enumerate(zip(tensors, before)):
        assert torch.equal(t.detach().cpu().reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), \
            f"{what}[{i}] changed"


@pytest.mark.skipif(not HAS_GPU or CUDA_BUILD, reason="needs a GPU with a CPU-only build of sgdf_erd")
def test_cpu_only_build_names_the_fix_for_cuda_tensors():
    p = torch.nn.Parameter(torch.zeros(4, device="cuda"))
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        SGDF([p], fused=True)
    default = SGDF([p])
    assert default._path(default.param_groups[0]) == "foreach"  # the default falls back to foreach


@requires_cuda
def test_many_tensors_span_several_launches():
    """More tensors than one launch's table holds (for the update and for the step counts), and tensors larger
    than one launch's blocks."""
    shapes = [(i * 37 + 1,) for i in range(100)] + [(65536 * 330 + 17,), (3,)]
    cpu_params = _make_params(torch.float32, shapes=shapes)
    params = _to_cuda(cpu_params)
    opt = SGDF(params, lr=0.05, fused=True)
    ref = ReferenceSGDF(cpu_params, lr=0.05)
    _run_against_reference(params, opt, ref, steps=3)
    _assert_close(params, ref, torch.float32)
    assert all(float(opt.state[p]["step"]) == 3 for p in params)


# ----------------------------------------------------------------------------------------- AMP
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_grad_scaler_step_matches_reference_on_unscaled_grads(dtype):
    """GradScaler hands grad_scale / found_inf to the fused step; the kernel unscales the gradients in place and
    the result follows the reference fed the unscaled gradients. Planted inf/NaN steps change nothing at all."""
    cpu_params = _make_params(dtype, shapes=[(12, 8), (8,), (3, 4, 5)], seed=21)
    params = _to_cuda(cpu_params)
    opt = SGDF(params, lr=0.05, weight_decay=1e-3, fused=True)
    assert opt._path(opt.param_groups[0]) == "fused" and opt._step_supports_amp_scaling
    ref = ReferenceSGDF(cpu_params, lr=0.05, weight_decay=1e-3, round_to=None if dtype == torch.float32 else dtype)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, growth_interval=1000)
    gen = torch.Generator().manual_seed(22)
    skipped = {3: float("inf"), 6: float("nan")}
    for step in range(10):
        opt.zero_grad()
        coeffs = [c.cuda() for c in _grads(params, gen, scale=1e-2)]
        loss = sum((p.float() * c.float()).sum() for p, c in zip(params, coeffs))
        scaler.scale(loss).backward()
        if step in skipped:
            params[0].grad.view(-1)[0] = skipped[step]
        scale = scaler.get_scale()
        unscaled = [p.grad.cpu().double() / scale for p in params]
        state = {k: _bits([opt.state[p][k] for p in params]) for k in ("exp_avg", "exp_var", "step")} if step else {}
        before_p, before_g = _bits(params), _bits([p.grad for p in params])
        scaler.step(opt)
        scaler.update()
        if step in skipped:
            _assert_bit_identical(params, before_p, "params")
            _assert_bit_identical([p.grad for p in params], before_g, "grads")
            for k, b in state.items():
                _assert_bit_identical([opt.state[p][k] for p in params], b, k)
        else:
            ref.step(unscaled)
            for p, u in zip(params, unscaled):  # unscaled in place (scale is a power of two: exact)
                torch.testing.assert_close(p.grad.cpu().double(), u, rtol=0, atol=0)
    _assert_close(params, ref, dtype)
    assert all(float(opt.state[p]["step"]) == 10 - len(skipped) for p in params)


# ----------------------------------------------------------------------------------------- no host sync
@requires_cuda
@pytest.mark.parametrize("setup", ["fused", "fused+amp", "fused+lr_tensor", "capturable foreach"])
def test_steps_have_no_host_sync(setup):
    params = _to_cuda(_make_params(torch.float32, shapes=[(64, 33), (17,)], seed=23))
    lr = torch.tensor(0.05, device="cuda") if setup in ("fused+lr_tensor", "capturable foreach") else 0.05
    kwargs = dict(foreach=True, capturable=True) if setup == "capturable foreach" else dict(fused=True)
    opt = SGDF(params, lr=lr, weight_decay=1e-3, **kwargs)
    if setup == "fused+amp":  # as GradScaler passes them
        opt.grad_scale = torch.full((), 4.0, device="cuda")
        opt.found_inf = torch.zeros((), device="cuda")
    assert_steps_without_host_sync(opt, params)


def captured_step(step) -> "torch.cuda.CUDAGraph":
    """`step` run once on a side stream (the first step creates the state, which capture cannot), then captured in a
    CUDA graph (capture records, it does not run the step)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def assert_steps_without_host_sync(opt, params) -> None:
    """Three steps of `opt` on random gradients of `params`, any host synchronisation an error (the first step
    creates the state)."""
    for p in params:
        p.grad = torch.randn_like(p)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):  # the first step creates the state
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert float(opt.state[params[0]]["step"]) == 3


# ----------------------------------------------------------------------------------------- CUDA graphs
@requires_cuda
@pytest.mark.parametrize("groups", [1, 2])  # 2: fused, the groups step in one call (fused_sgdf_grouped_)
@pytest.mark.parametrize("path", ["fused", "foreach"])
def test_cuda_graph_replays_with_found_inf_changing(path, groups):
    """A captured step reads lr, grad_scale and found_inf from device memory at each replay: a replay with
    found_inf set (1, or a sum over devices like 2) changes nothing, the others follow the reference."""
    cpu_params = _make_params(torch.float32, shapes=[(64, 33), (17,)])
    params = _to_cuda(cpu_params)
    lr = torch.tensor(0.05, device="cuda")
    opt = SGDF(params if groups == 1 else [{"params": params[:1]}, {"params": params[1:]}], lr=lr, capturable=True,
               **PATHS[path])
    amp = path == "fused"  # GradScaler's protocol is for fused optimizers
    scale = 8.0 if amp else 1.0
    if amp:
        opt.grad_scale = torch.full((), scale, device="cuda")
        opt.found_inf = torch.zeros((), device="cuda")
    ref = ReferenceSGDF(cpu_params, lr=0.05)
    static_grads = [torch.zeros_like(p) for p in params]
    for p, g in zip(params, static_grads):
        p.grad = g
    gen = torch.Generator().manual_seed(4)

    def load(grads):
        for g, s in zip(grads, static_grads):
            s.copy_(g * scale)

    grads = _grads(cpu_params, gen)
    load(grads)
    graph = captured_step(opt.step)
    ref.step(grads)
    found_infs = [0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0] if amp else [0.0] * 8
    for found_inf in found_infs:
        grads = _grads(cpu_params, gen)
        load(grads)
        if amp:
            opt.found_inf.fill_(found_inf)
        before = _bits(params)
        graph.replay()
        if found_inf:
            _assert_bit_identical(params, before, "params")
        else:
            ref.step(grads)
    torch.cuda.synchronize()
    _assert_close(params, ref, torch.float32)
    assert float(opt.state[params[0]]["step"]) == 1 + found_infs.count(0.0)


@requires_cuda
def test_capture_without_capturable_is_refused():
    params = _to_cuda(_make_params(torch.float32, shapes=[(8,)]))
    opt = SGDF(params, foreach=True)
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturable"):
        with torch.cuda.graph(graph):
            opt.step()


# ----------------------------------------------------------------------------------------- devices
@requires_cuda
def test_cpu_params_read_cuda_scalars_only_once_they_are_ready():
    """lr / grad_scale / found_inf on CUDA for CPU parameters: the values are written by kernels still queued behind
    a long one, so the CPU kernel must wait for the copies (a non-blocking copy to the CPU would read early)."""
    def run(found_inf_value):
        params = _make_params(torch.float32, shapes=[(6, 5)], seed=24)
        ref = ReferenceSGDF(params, lr=0.05)
        raw = _grads(params, torch.Generator().manual_seed(25))
        grads = [g * 4.0 for g in raw]  # unscaled in place by the kernel
        exp_avgs, exp_vars = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        steps = [torch.zeros(())]
        lr, grad_scale, found_inf = (torch.zeros((), device="cuda") for _ in range(3))
        torch.cuda._sleep(200_000_000)  # ~0.1 s on the stream before the values below are written
        lr.fill_(0.05)
        grad_scale.fill_(4.0)
        found_inf.fill_(found_inf_value)
        with torch.no_grad():
            fused_sgdf(params, grads, exp_avgs, exp_vars, steps, lr=lr, beta1=0.9, beta2=0.999, eps=1e-8,
                       gamma=0.5, weight_decay=0.0, decoupled_weight_decay=False, sign=False,
                       orthogonalize_matrices=False, ns_steps=5, maximize=False, capturable=False,
                       grad_scale=grad_scale, found_inf=found_inf)
        return params, ref, raw, steps

    params, ref, raw, steps = run(0.0)
    ref.step(raw)
    _assert_close(params, ref, torch.float32)
    assert float(steps[0]) == 1
    params, ref, _, steps = run(1.0)
    assert torch.equal(params[0].double(), ref.p[0]) and float(steps[0]) == 0


@requires_two_gpus
def test_params_on_two_devices_in_one_optimizer():
    """One optimizer, parameters on cuda:0 and cuda:1: one fused launch per device; AMP scalars living on cuda:0
    reach cuda:1 without a host synchronisation."""
    cpu_params = _make_params(torch.float32, shapes=[(16, 9), (9,), (5, 5), (7,)], seed=26)
    params = _to_cuda(cpu_params[:2], 0) + _to_cuda(cpu_params[2:], 1)
    opt = SGDF(params, lr=0.05, weight_decay=1e-3, fused=True)
    opt.grad_scale = torch.full((), 2.0, device="cuda:0")
    opt.found_inf = torch.zeros((), device="cuda:0")
    ref = ReferenceSGDF(cpu_params, lr=0.05, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(27)
    for _ in range(8):
        grads = _grads(cpu_params, gen)
        for p, g in zip(params, grads):
            p.grad = (2.0 * g).to(p.device)
        opt.step()
        ref.step(grads)
    _assert_close(params, ref, torch.float32)
    assert [opt.state[p]["step"].device for p in params] == [p.device for p in params]


@requires_cuda
def test_checkpoint_loaded_with_map_location_cpu_keeps_working():
    params = _to_cuda(_make_params(torch.float32, seed=2))
    opt = SGDF(params, lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, g in zip(params, _grads(params, gen)):
            p.grad = g.cuda()
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    for path in PATHS:
        resumed = SGDF(params, lr=0.05, **PATHS[path])
        buffer.seek(0)
        resumed.load_state_dict(torch.load(buffer, map_location="cpu"))
        for p in params:
            assert resumed.state[p]["exp_avg"].is_cuda
            on_device = resumed._path(resumed.param_groups[0]) == "fused" or resumed.param_groups[0]["capturable"]
            assert resumed.state[p]["step"].is_cuda == on_device
        for p in params:
            p.grad = torch.ones_like(p)
        resumed.step()


@requires_cuda
@pytest.mark.skipif(os.environ.get("SGDF_ERD_BIGMEM") != "1", reason="set SGDF_ERD_BIGMEM=1 (needs ~20 GB GPU memory)")
def test_tensor_over_2_pow_31_elements():
    n = 2**31 + 4099
    p = torch.nn.Parameter(torch.zeros(n, dtype=torch.float16, device="cuda"))
    p.grad = torch.ones_like(p)
    p.grad[-5:] = torch.arange(1, 6, device="cuda", dtype=torch.float16)
    SGDF([p], lr=0.5, fused=True).step()
    # at step 1 the update is the raw gradient
    expected = -0.5 * torch.arange(1, 6, dtype=torch.float32)
    torch.testing.assert_close(p[-5:].float().cpu(), expected, rtol=TOL[torch.float16], atol=TOL[torch.float16])
    assert float(p[0]) == -0.5
