"""SGDF on CUDA: fused kernel against the float64 reference, graph capture, AMP, checkpoints across devices.

Skipped with a reason where no GPU is present or the build has no CUDA kernels; a CPU-only build used with CUDA
tensors must raise the clear error instead.
"""

import io
import os

import pytest
import torch

import sgdf_erd
from sgdf_erd import SGDF
from tests.reference.sgdf_reference import ReferenceSGDF
from tests.test_sgdf import OPTION_SETS, PATHS, TOL, _assert_close, _grads, _make_params, _run_against_reference

HAS_GPU = torch.cuda.is_available()
CUDA_BUILD = sgdf_erd.build_info()["cuda"]
needs_cuda = pytest.mark.skipif(not (HAS_GPU and CUDA_BUILD), reason="needs a CUDA GPU and a CUDA build of sgdf_erd")


def _to_cuda(params):
    return [torch.nn.Parameter(p.detach().cuda()) for p in params]


@pytest.mark.skipif(not HAS_GPU or CUDA_BUILD, reason="needs a GPU with a CPU-only build of sgdf_erd")
def test_cpu_only_build_names_the_fix_for_cuda_tensors():
    p = torch.nn.Parameter(torch.zeros(4, device="cuda"))
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        SGDF([p], fused=True)
    assert SGDF([p]).param_groups[0]["fused"] is False  # the default falls back to foreach


@needs_cuda
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_cuda_matches_reference(path, dtype, options):
    cpu_params = _make_params(dtype)
    params = _to_cuda(cpu_params)
    opt = SGDF(params, lr=0.05, **options, **PATHS[path])
    reduced = dtype in (torch.float16, torch.bfloat16)
    ref = ReferenceSGDF(cpu_params, lr=0.05, **options, round_to=dtype if reduced else None)
    _run_against_reference(params, opt, ref, steps=30)
    _assert_close([p.cpu() for p in params], ref, dtype, sign=options.get("sign", False))


@needs_cuda
def test_many_tensors_span_several_launches():
    """More tensors than one launch's table holds, and tensors larger than one launch's blocks."""
    shapes = [(i * 37 + 1,) for i in range(100)] + [(65536 * 330 + 17,), (3,)]
    cpu_params = _make_params(torch.float32, shapes=shapes)
    params = _to_cuda(cpu_params)
    opt = SGDF(params, lr=0.05, fused=True)
    ref = ReferenceSGDF(cpu_params, lr=0.05)
    _run_against_reference(params, opt, ref, steps=3)
    _assert_close([p.cpu() for p in params], ref, torch.float32)


@needs_cuda
@pytest.mark.parametrize("path", ["fused", "foreach"])
def test_cuda_graph_capture(path):
    cpu_params = _make_params(torch.float32, shapes=[(64, 33), (17,)])
    params = _to_cuda(cpu_params)
    lr = torch.tensor(0.05, device="cuda")
    opt = SGDF(params, lr=lr, capturable=True, **PATHS[path])
    ref = ReferenceSGDF(cpu_params, lr=0.05)
    static_grads = [torch.zeros_like(p) for p in params]
    for p, g in zip(params, static_grads):
        p.grad = g
    gen = torch.Generator().manual_seed(4)
    # warm up on a side stream (state creation), as CUDA graph capture requires
    grads = _grads(cpu_params, gen)
    for g, s in zip(grads, static_grads):
        s.copy_(g)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    ref.step(grads)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for _ in range(10):
        grads = _grads(cpu_params, gen)
        for g, s in zip(grads, static_grads):
            s.copy_(g)
        graph.replay()
        ref.step(grads)
    torch.cuda.synchronize()
    _assert_close([p.cpu() for p in params], ref, torch.float32)
    assert float(opt.state[params[0]]["step"]) == 11


@needs_cuda
def test_capture_without_capturable_is_refused():
    params = _to_cuda(_make_params(torch.float32, shapes=[(8,)]))
    opt = SGDF(params, foreach=True)
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturable"):
        with torch.cuda.graph(graph):
            opt.step()


@needs_cuda
def test_grad_scaler_on_cuda_has_no_host_sync_and_skips_inf():
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 8).cuda()
    opt = SGDF(model.parameters(), lr=0.05)
    assert opt.param_groups[0]["fused"] and opt._step_supports_amp_scaling
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    x = torch.randn(64, 32, device="cuda")
    for step in range(6):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        before = model.weight.detach().clone()
        if step == 2:
            model.weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        if step == 2:
            assert torch.equal(before, model.weight)
    assert float(opt.state[model.weight]["step"]) == 5


@needs_cuda
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
            on_device = resumed.param_groups[0]["fused"] or resumed.param_groups[0]["capturable"]
            assert resumed.state[p]["step"].is_cuda == on_device
        for p in params:
            p.grad = torch.ones_like(p)
        resumed.step()


@needs_cuda
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
