"""SGDF in two CPU processes (gloo): under DDP and under FSDP2 (DTensor parameters, sharded unevenly) every path gives
what one process gets from the union of the ranks' batches, and a torch.distributed.checkpoint of an FSDP2 model
and its optimizer, loaded into fresh ones, resumes bit for bit. The processes are spawned once for the module."""

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import Replicate

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

WORLD_SIZE, STEPS = 2, 3
PATHS = {
    "default": dict(),
    "fused": dict(fused=True),
    "foreach": dict(foreach=True),
    "single": dict(foreach=False),
    "orthogonalize": dict(orthogonalize=True),  # the default (fused) path
    "orthogonalize-foreach": dict(foreach=True, orthogonalize=True),
    # the bf16 storage options; master copies are DTensors sharded like their params
    "bf16-state": dict(state_dtype=torch.bfloat16),
    "bf16-state-foreach": dict(state_dtype=torch.bfloat16, foreach=True),
    "bf16-params-master": dict(master_weights=True),
    "bf16-params-master-foreach": dict(master_weights=True, foreach=True),
    "bf16-params-master-orthogonalize": dict(master_weights=True, orthogonalize=True),
    # stochastic rounding: DDP takes the fused path, FSDP2 the foreach path, which numbers each shard's elements
    # as in the whole tensor, so the ranks draw the numbers one process draws
    "bf16-params-stochastic-rounding": dict(stochastic_rounding=True),
    "bf16-params-stochastic-rounding-state": dict(stochastic_rounding=True, state_dtype=torch.bfloat16,
                                                  foreach=True),
    "bf16-params-stochastic-rounding-orthogonalize": dict(stochastic_rounding=True, orthogonalize=True),
    # AdaSGDF (make_optimizer): exp_avg_sq sharded like its param
    "adasgdf": dict(optimizer="AdaSGDF"),
    "adasgdf-foreach": dict(optimizer="AdaSGDF", foreach=True),
    "adasgdf-variance": dict(optimizer="AdaSGDF", preconditioner="variance"),
    "bf16-params-adasgdf-master": dict(optimizer="AdaSGDF", master_weights=True),
}
# paths also stepped by torch.compile(opt.step) under FSDP2 (fused groups of DTensor parameters take the foreach path
# there: torch fails to compile the kernel's op on FSDP2 shards)
COMPILED_PATHS = ("default", "fused", "bf16-params-master", "adasgdf")
# the parameters' dtype of a path (float32 unless named here)
PARAM_DTYPES = {name: torch.bfloat16 for name in PATHS if name.startswith("bf16-params")}
OPTIONS = dict(lr=0.05, weight_decay=1e-2)


def make_optimizer(params, path):
    """SGDF, or AdaSGDF where the path names it, with OPTIONS and the path's options."""
    import sgdf_erd

    options = dict(path)
    return getattr(sgdf_erd, options.pop("optimizer", "SGDF"))(params, **OPTIONS, **options)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(dtype=torch.float32):
    torch.manual_seed(0)  # Linear(4, 5): a 5x4 weight sharded 3 + 2 rows over two ranks
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(dtype)


def rounding_input():
    return torch.randn(5, 7, generator=torch.Generator().manual_seed(7))


ROUNDING_SEED = 1234
# a bf16 parameter sharded along a dimension, stepped with stochastic rounding and these options: row shards are
# consecutive in the whole tensor, so the default path is the fused kernel; column shards take the foreach path
SHARDED_ROUNDING = {
    "rows": (0, {}),
    "rows-orthogonalize": (0, dict(orthogonalize=True)),
    "rows-master": (0, dict(master_weights=True)),
    "columns": (1, {}),
}


def sharded_rounding_steps(as_param, options):
    """Three steps on as_param(a bf16 5x7 tensor) with bf16 state and stochastic rounding (seeds from
    torch.manual_seed(5)); the whole parameter and exp_avg, and whether the fused path took the steps."""
    from sgdf_erd import SGDF

    param = as_param(rounding_input().bfloat16())
    opt = SGDF([param], lr=1e-3, stochastic_rounding=True, state_dtype=torch.bfloat16, **options)
    torch.manual_seed(5)
    for step in range(3):
        grad = torch.randn(5, 7, generator=torch.Generator().manual_seed(50 + step)).bfloat16()
        param.grad = as_param(grad).detach() if hasattr(param, "placements") else grad
        opt.step()
    whole = [t.full_tensor() if hasattr(t, "full_tensor") else t.detach() for t in (param, opt.state[param]["exp_avg"])]
    return whole, opt._path(opt.param_groups[0]) == "fused"


def rank_batch(rank, step):
    return torch.randn(4, 4, generator=torch.Generator().manual_seed(100 * step + rank))


def train(model, opt, rank, steps, dtype=torch.float32, compiled=False):
    step_fn = torch.compile(opt.step) if compiled else opt.step
    for step in steps:
        opt.zero_grad()
        model(rank_batch(rank, step).to(dtype)).float().square().mean().backward()
        step_fn()


def full_params(model):
    return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone() for p in model.parameters()]


def _local_snapshot(opt):
    """Every rank's own values of a one-group optimizer's params, grads and state (DTensors by their shards)."""
    local = lambda t: (t.to_local() if hasattr(t, "to_local") else t).detach().clone()  # noqa: E731
    params = opt.param_groups[0]["params"]
    return [[local(p), None if p.grad is None else local(p.grad)] +
            [(k, local(v) if isinstance(v, torch.Tensor) else v) for k, v in sorted(opt.state.get(p, {}).items())]
            for p in params]


def _same(a, b):
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, tuple):
        return isinstance(b, tuple) and a[0] == b[0] and _same(a[1], b[1])
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def _other_mesh(t):
    """t on a mesh of the same ranks in reverse order (its values as placed there)."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(t.full_tensor(), DeviceMesh("cpu", list(range(WORLD_SIZE))[::-1]), t.placements)


def _replaced_state(key, make):
    def edit(opt, p):
        opt.state[p][key] = make(opt.state[p][key])
    return edit


def _wrong_global_shape(t):
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(torch.zeros(t.shape[0] + 1, *t.shape[1:]), t.device_mesh, t.placements)


# Bad DTensor inputs, each (edit after one step, words its message must hold): every rank must refuse the step
# before anything changes (probe 8 D1-D6: a state entry placed otherwise lost its updates; a plain tensor for a
# DTensor raised AttributeError or torch's error after the state was written; a state entry of another global shape
# stepped on the ranks where its shard fit and raised on the others; other meshes raised midway)
DTENSOR_EDITS = {
    "exp_avg-replicated": (_replaced_state("exp_avg", lambda t: t.redistribute(t.device_mesh, [Replicate()])),
                           "placed as"),
    "exp_var-replicated": (_replaced_state("exp_var", lambda t: t.redistribute(t.device_mesh, [Replicate()])),
                           "placed as"),
    "exp_avg-plain": (_replaced_state("exp_avg", lambda t: t.full_tensor()), "plain tensor"),
    "exp_avg-other-mesh": (_replaced_state("exp_avg", _other_mesh), "device mesh"),
    "exp_avg-other-global-shape": (_replaced_state("exp_avg", _wrong_global_shape), "shape"),
    "grad-plain": (lambda opt, p: setattr(p, "grad", p.grad.full_tensor()), "plain tensor"),
    "grad-other-mesh": (lambda opt, p: setattr(p, "grad", _other_mesh(p.grad)), "device mesh"),
}
DTENSOR_EDIT_PATHS = ("default", "fused", "foreach", "single")


def bad_dtensor_inputs(mesh, rank):
    """{(edit, path): (exception type name or "stepped", message, whether anything changed)} on this rank, and the
    refusals of a foreach group mixing DTensor and plain params and of two params sharing one shard."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from sgdf_erd import SGDF

    out = {}
    for name, (edit, _) in DTENSOR_EDITS.items():
        for path in DTENSOR_EDIT_PATHS:
            param = torch.nn.Parameter(distribute_tensor(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)),
                                                         mesh, [Shard(0)]))
            opt = make_optimizer([param], PATHS[path])
            for step in range(2):
                param.grad = distribute_tensor(torch.randn(5, 4, generator=torch.Generator().manual_seed(step + 1)),
                                               mesh, [Shard(0)])
                if step:
                    edit(opt, param)
                    before = _local_snapshot(opt)
                try:
                    opt.step()
                    result = ("stepped", "")
                except Exception as exc:  # noqa: BLE001 (the test names what it expects)
                    result = (type(exc).__name__, str(exc))
            out[name, path] = (*result, not _same(before, _local_snapshot(opt)))
    plain = torch.nn.Parameter(torch.randn(3))
    sharded = torch.nn.Parameter(distribute_tensor(torch.randn(5, 4), mesh, [Shard(0)]))
    plain.grad, sharded.grad = torch.randn(3), distribute_tensor(torch.randn(5, 4), mesh, [Shard(0)])
    opt = SGDF([sharded, plain], foreach=True)
    try:
        opt.step()
        out["mixed-foreach"] = ("stepped", "", bool(opt.state))
    except Exception as exc:  # noqa: BLE001
        out["mixed-foreach"] = (type(exc).__name__, str(exc), bool(opt.state))
    twin = torch.nn.Parameter(DTensor.from_local(sharded.to_local(), mesh, sharded.placements, run_check=False))
    try:
        SGDF([sharded, twin])
        out["shared-shard"] = ("accepted", "")
    except Exception as exc:  # noqa: BLE001
        out["shared-shard"] = (type(exc).__name__, str(exc))
    return out


def orthogonalized_steps(as_param, path):
    """Two orthogonalised steps of a 1x4 parameter (a row on one rank, none on the other when sharded)."""
    from sgdf_erd import SGDF

    param = as_param(torch.randn(1, 4, generator=torch.Generator().manual_seed(0)))
    opt = SGDF([param], lr=0.1, orthogonalize=True, **PATHS[path])
    for step in range(2):
        param.grad = as_param(torch.randn(1, 4, generator=torch.Generator().manual_seed(step + 1))).detach()
        opt.step()
    return param.full_tensor() if hasattr(param, "full_tensor") else param.detach()


def worker(rank, port, out_dir, tests_dir):
    sys.path.insert(0, tests_dir)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        from torch.distributed.fsdp import fully_shard
        from torch.nn.parallel import DistributedDataParallel

        from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

        from sgdf_erd import SGDF
        from sgdf_erd.optim.stochastic_rounding import round_all_into_, round_into_

        torch.set_num_threads(1)
        results = {}
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        results["bad-dtensor-inputs"] = bad_dtensor_inputs(mesh, rank)
        for path in DTENSOR_EDIT_PATHS:
            try:
                results["orthogonalized", path] = orthogonalized_steps(
                    lambda t: torch.nn.Parameter(distribute_tensor(t, mesh, [Shard(0)])), path)
            except Exception as exc:  # noqa: BLE001
                results["orthogonalized", path] = f"{type(exc).__name__}: {exc}"
        # a DTensor rounded stochastically, shard by shard, sharded unevenly along either dimension
        for dim in (0, 1):
            rounded = distribute_tensor(torch.zeros(5, 7, dtype=torch.bfloat16), mesh, [Shard(dim)])
            round_into_(rounded, distribute_tensor(rounding_input(), mesh, [Shard(dim)]), ROUNDING_SEED,
                        torch.tensor(3.0), 0)
            results["rounded", dim] = rounded.full_tensor()
        together = [distribute_tensor(torch.zeros(5, 7, dtype=torch.bfloat16), mesh, [Shard(d)]) for d in (0, 1)]
        round_all_into_(together, [distribute_tensor(rounding_input(), mesh, [Shard(d)]) for d in (0, 1)],
                        [ROUNDING_SEED] * 2, [torch.tensor(3.0)] * 2, 0)
        results["rounded-together"] = [t.full_tensor() for t in together]
        for name, (dim, options) in SHARDED_ROUNDING.items():
            results["sharded-steps", name] = sharded_rounding_steps(
                lambda t: torch.nn.Parameter(distribute_tensor(t, mesh, [Shard(dim)])), options)
        try:
            column_sharded = torch.nn.Parameter(distribute_tensor(rounding_input().bfloat16(), mesh, [Shard(1)]))
            SGDF([column_sharded], fused=True, stochastic_rounding=True)
        except NotImplementedError as exc:
            results["fused-refusal"] = str(exc)
        for name, path in PATHS.items():
            dtype = PARAM_DTYPES.get(name, torch.float32)
            ddp = DistributedDataParallel(make_model(dtype))
            train(ddp, make_optimizer(ddp.parameters(), path), rank, range(STEPS), dtype)
            results["ddp", name] = full_params(ddp.module)
            sharded = fully_shard(make_model(dtype))
            opt = make_optimizer(sharded.parameters(), path)
            train(sharded, opt, rank, range(STEPS), dtype)
            results["fsdp", name] = full_params(sharded)
            results["fsdp-one-call", name] = [opt._one_call_lists(g) is not None for g in opt.param_groups]
            if name in COMPILED_PATHS:
                torch._dynamo.reset()
                sharded = fully_shard(make_model(dtype))
                train(sharded, make_optimizer(sharded.parameters(), path), rank, range(STEPS), dtype,
                      compiled=True)
                results["fsdp-compiled", name] = full_params(sharded)

        # DCP: save after STEPS steps, go on for STEPS more; a fresh model and optimizer loaded from the checkpoint
        # must take the same STEPS more steps bit for bit.
        for optimizer in ("SGDF", "AdaSGDF"):
            checkpoint = os.path.join(out_dir, f"checkpoint-{optimizer}")
            model = fully_shard(make_model())
            opt = make_optimizer(model.parameters(), dict(optimizer=optimizer))
            train(model, opt, rank, range(STEPS))
            model_state, optim_state = get_state_dict(model, opt)
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=checkpoint)
            train(model, opt, rank, range(STEPS, 2 * STEPS))
            fresh = fully_shard(make_model())
            fresh_opt = make_optimizer(fresh.parameters(), dict(optimizer=optimizer))
            model_state, optim_state = get_state_dict(fresh, fresh_opt)
            loaded = {"model": model_state, "optim": optim_state}
            dcp.load(loaded, checkpoint_id=checkpoint)
            set_state_dict(fresh, fresh_opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
            train(fresh, fresh_opt, rank, range(STEPS, 2 * STEPS))
            results["resumed", optimizer] = full_params(fresh), full_params(model)
            results["resumed_state", optimizer] = [
                [(s["step"],) + tuple(s[k].full_tensor() for k in ("exp_avg", "exp_var", "exp_avg_sq") if k in s)
                 for s in o.state.values()] for o in (fresh_opt, opt)]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("sgdf_distributed")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    mp.spawn(worker, args=(free_port(), str(out_dir), tests_dir), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


def single_process(path, dtype):
    """One process on the union of the ranks' batches (DDP and FSDP2 average the ranks' gradients)."""
    model = make_model(dtype)
    opt = make_optimizer(model.parameters(), path)
    for step in range(STEPS):
        opt.zero_grad()
        batch = torch.cat([rank_batch(r, step) for r in range(WORLD_SIZE)]).to(dtype)
        model(batch).float().square().mean().backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
@pytest.mark.parametrize("path", PATHS)
def test_matches_single_process(ranks, wrapper, path):
    dtype = PARAM_DTYPES.get(path, torch.float32)
    expected = single_process(PATHS[path], dtype)
    # bfloat16 params: the ranks' gradients are summed in another order than one batch's, a few bf16 spacings apart
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=3e-2, atol=2e-2)
    for rank in ranks:
        for got, want in zip(rank[wrapper, path], expected):
            torch.testing.assert_close(got, want, **tol)
    for got0, got1 in zip(ranks[0][wrapper, path], ranks[1][wrapper, path]):
        assert torch.equal(got0, got1)  # both ranks hold the same model


@pytest.mark.parametrize("path", PATHS)
def test_fsdp2_shards_are_checked_and_stepped_by_one_kernel_call(ranks, path):
    """Once their state exists, FSDP2's DTensor groups go to the one kernel call of a step as their shards, which
    checks them (and steps those on the kernel's path): the Python checks of every tensor cost ~50 us per parameter
    (6.5x the step's host time for 600 DTensors: benchmarks/results/fsdp2_step_cpu*.md). Not with orthogonalisation
    or stochastic rounding, which the call does not do (the functional path orthogonalises whole matrices and numbers
    shards' elements in the whole tensor)."""
    options = PATHS[path]
    expected = not (options.get("orthogonalize") or options.get("stochastic_rounding"))
    for rank in ranks:
        assert rank["fsdp-one-call", path] == [expected]


@pytest.mark.parametrize("path", COMPILED_PATHS)
def test_compiled_step_under_fsdp2_matches_eager(ranks, path):
    """torch.compile(opt.step) on FSDP2 parameters compiles (it raised on the fused default) and trains as the eager
    step does (up to float32 rounding: the compiled step takes the foreach path)."""
    dtype = PARAM_DTYPES.get(path, torch.float32)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    if path.startswith("adasgdf"):  # the division by sqrt(v) + eps scales float32 differences up
        tol = dict(rtol=1e-3, atol=1e-5)
    for rank in ranks:
        for got, want in zip(rank["fsdp-compiled", path], rank["fsdp", path]):
            torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("path", DTENSOR_EDIT_PATHS)
@pytest.mark.parametrize("edit", DTENSOR_EDITS)
def test_bad_dtensor_inputs_are_refused_on_every_rank_before_any_write(ranks, edit, path):
    words = DTENSOR_EDITS[edit][1]
    for rank in ranks:
        kind, message, changed = rank["bad-dtensor-inputs"][edit, path]
        assert kind == "ValueError" and words in message and message.startswith("SGDF"), (kind, message)
        assert not changed


@pytest.mark.parametrize("path", DTENSOR_EDIT_PATHS)
def test_orthogonalized_steps_of_a_matrix_with_an_empty_shard_match_one_process(ranks, path):
    """DTensor's matmuls left the orthogonalised update of a 1x4 matrix sharded on rows replicated, and the foreach
    and single-tensor paths' in-place update of the sharded parameter raised at every step (probe 8 D7)."""
    want = orthogonalized_steps(torch.nn.Parameter, path)
    for rank in ranks:
        got = rank["orthogonalized", path]
        assert isinstance(got, torch.Tensor), got
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_foreach_group_mixing_dtensor_and_plain_params_is_refused_before_any_write(ranks):
    """torch's foreach ops take no list mixing DTensors and plain tensors (AdamW(foreach=True) raises midway as
    well); the default path and foreach=False step such a group."""
    for rank in ranks:
        kind, message, made_state = rank["bad-dtensor-inputs"]["mixed-foreach"]
        assert kind == "ValueError" and "mixes DTensor and plain" in message and not made_state


def test_dtensor_params_sharing_a_shard_are_refused_as_plain_ones(ranks):
    """Two DTensor params whose shards are one tensor: the foreach and single-tensor paths stepped both (the
    memory check skipped DTensors), as plain tensors are refused when the optimizer is built."""
    for rank in ranks:
        kind, message = rank["bad-dtensor-inputs"]["shared-shard"]
        assert kind == "ValueError" and "share memory" in message


@pytest.mark.parametrize("optimizer", ["SGDF", "AdaSGDF"])
def test_dcp_checkpoint_resumes_bit_identically(ranks, optimizer):
    for rank in ranks:
        resumed, continued = rank["resumed", optimizer]
        for got, want in zip(resumed, continued):
            assert torch.equal(got, want)
        resumed_state, continued_state = rank["resumed_state", optimizer]
        assert len(resumed_state) == len(continued_state) == 4
        assert all(len(s) == (4 if optimizer == "AdaSGDF" else 3) for s in resumed_state)
        for got, want in zip(resumed_state, continued_state):
            for a, b in zip(got, want):
                assert torch.equal(a, b)


@pytest.mark.parametrize("dim", [0, 1])
def test_sharded_stochastic_rounding_draws_what_one_process_draws(ranks, dim):
    from sgdf_erd.optim.stochastic_rounding import round_into_

    expected = torch.zeros(5, 7, dtype=torch.bfloat16)
    round_into_(expected, rounding_input(), ROUNDING_SEED, torch.tensor(3.0), 0)
    nearest = rounding_input().bfloat16()
    assert not torch.equal(expected, nearest)  # the rounding is stochastic here, not a plain cast
    for rank in ranks:
        assert torch.equal(rank["rounded", dim], expected)
        assert torch.equal(rank["rounded-together"][dim], expected)  # the list form, shards of both kinds at once


@pytest.mark.parametrize("name", SHARDED_ROUNDING)
def test_sharded_stochastic_rounding_steps_equal_one_process_bit_for_bit(ranks, name):
    """A DTensor parameter's steps with stochastic rounding, fused (row shards, numbered from their offsets) or
    foreach (column shards), store exactly what one process stores on the same path."""
    dim, options = SHARDED_ROUNDING[name]
    fused = dim == 0
    expected, expected_fused = sharded_rounding_steps(lambda t: torch.nn.Parameter(t),
                                                      dict(options, fused=fused, foreach=not fused))
    assert expected_fused == fused
    for rank in ranks:
        got, got_fused = rank["sharded-steps", name]
        assert got_fused == fused
        for a, b in zip(got, expected):  # param, exp_avg
            assert torch.equal(a.view(torch.int16), b.view(torch.int16))


def test_fused_stochastic_rounding_of_column_shards_is_refused(ranks):
    for rank in ranks:
        assert "foreach=True" in rank["fused-refusal"] and "DTensor" in rank["fused-refusal"]
