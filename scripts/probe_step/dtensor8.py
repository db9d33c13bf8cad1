"""Eighth probe: SGDF.step on DTensor parameters (the one-call path of 54a8a99: DTensor groups go to the step's one
kernel call as their local shards), world size 1 and 2, gloo on the CPU.

Each case forks `world` processes from this one (torch imported once), which join a gloo group through a FileStore
(timeout 20 s), build DTensor params (distribute_tensor on 1-D / 2-D meshes, or FSDP2's fully_shard), step `pre`
times, set new grads, apply an edit, then step. Per rank: a snapshot of every local shard / plain tensor / state
entry (bytes, placements, mesh id, object ids) before and after the step; where the step raised, a second step must
raise again and change nothing. Before the step every rank gathers the full values of params, grads and state, and
rank 0 runs a plain-tensor optimizer (one process, same class and options) on them: the reference.

Outcomes (whole case, over the ranks): RAISE_CLEAN (every rank raised, nothing changed anywhere), RAISE_DIRTY (some
rank raised and something changed on some rank: includes one rank stepping while another raised, RANK_SPLIT in
the detail), OK_MATCH / OK_MISMATCH (every rank stepped; the gathered result against the reference), OK_NOREF
(stepped; no reference for that edit), SETUP_ERROR (torch refused the edit itself), PRE_RAISED (a step before the
edit raised: the setup itself is refused), CTOR_RAISED (the optimizer's constructor refused the setup), HANG
(> timeout), CRASH.

Run (probe 8, scripts/probe_step/REPORT.md): 447 cases, 201 of them at world 1 as well, 20 min on 2 shared cores;
results in dtensor8_results.jsonl (the rerun after the fixes, main at d34fa82: dtensor8_rerun_results.jsonl),
standalone reproducers of the findings in dtensor8_repro/. Compile cases run with inductor's FX graph / AOTAutograd
caches off: with them on, a second run hits rank 0's compiled graph on rank 1 (pytorch#188390;
dtensor8_repro/r7_compile_cache.py, torch.optim.AdamW alike).

Usage: python scripts/probe_step/dtensor8.py [name-filter] [out.jsonl]   (DT8_WORLDS=1,2 by default; DT8_NAMES=file
of 'world case-name' lines reruns exactly those)
"""
import json, os, select, signal, sys, tempfile, time, traceback
from datetime import timedelta

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, '..', '..', 'python')]
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor, init_device_mesh
from torch.distributed.device_mesh import DeviceMesh
import sgdf_erd
from sgdf_erd import SGDF, AdaSGDF

SCALE = 1024.0
CONFIGS = {
    'plain': (SGDF, torch.float32, {}),
    'dwd': (SGDF, torch.float32, dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    'tlr': (SGDF, torch.float32, dict(lr=torch.tensor(0.05))),
    'f64': (SGDF, torch.float64, {}),
    'master': (SGDF, torch.bfloat16, dict(master_weights=True)),
    'sdt_bf16': (SGDF, torch.float32, dict(state_dtype=torch.bfloat16)),
    'ada_sm': (AdaSGDF, torch.float32, dict(preconditioner='second_moment')),
    'ada_var': (AdaSGDF, torch.float32, dict(preconditioner='variance')),
    'sr': (SGDF, torch.bfloat16, dict(stochastic_rounding=True)),
    'orth': (SGDF, torch.float32, dict(orthogonalize=True)),
}
PATHS = {'default': {}, 'fused': dict(fused=True), 'foreach': dict(foreach=True), 'single': dict(foreach=False)}


class SetupError(Exception):
    pass


# ------------------------------------------------------------------ building
def mesh_for(setup, world):
    if setup == 'mesh12':
        return init_device_mesh('cpu', (1, world)), [Replicate(), Shard(0)]
    if setup == 'mesh21':
        return init_device_mesh('cpu', (world, 1)), [Shard(0), Replicate()]
    mesh = init_device_mesh('cpu', (world,))
    return mesh, [{'shard1': Shard(1), 'repl': Replicate()}.get(setup, Shard(0))]


def full_value(i, shape, step, dtype, salt=0):
    g = torch.Generator().manual_seed(1000 * i + 17 * step + salt)
    return torch.randn(shape, generator=g).to(dtype)


SHAPES = {'empty': [(1, 4), (5, 4)], 'shard1': [(3, 5), (4, 5)], 'even': [(4, 4), (4, 4), (4,)]}


def build(case, world):
    cls, dtype, opts = CONFIGS[case['config']]
    setup = case['setup']
    if setup.startswith('fsdp'):
        from torch.distributed.fsdp import fully_shard
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(dtype)
        fully_shard(model)
        params = list(model.parameters())
        mesh = params[0].device_mesh
    else:
        mesh, placements = mesh_for(setup, world)
        shapes = SHAPES.get(setup, [(5, 4), (5, 4), (4,)])
        params = []
        for i, shape in enumerate(shapes):
            pl = placements if len(shape) > 1 or not isinstance(placements[-1], Shard) or placements[-1].dim == 0 \
                else [Shard(0)] * len(placements)
            params.append(torch.nn.Parameter(distribute_tensor(full_value(i, shape, -1, dtype), mesh, pl)))
        if setup == 'mixed':
            params.append(torch.nn.Parameter(full_value(9, (3, 2), -1, dtype)))
        if setup == 'sharedlocal':  # two params sharing one local storage
            p0 = params[0]
            params.append(torch.nn.Parameter(DTensor.from_local(p0.to_local(), mesh, p0.placements, shape=p0.shape,
                                                                stride=p0.stride(), run_check=False)))
    kw = dict(lr=0.05)
    kw.update(opts)
    kw.update(PATHS[case['path']])
    if case.get('scaler'):
        kw['fused'] = True
    opt = cls(params, **kw)
    return opt, params, mesh


def set_grads(opt, params, step, scale=1.0):
    for i, p in enumerate(params):
        g = full_value(i, p.shape, step, p.dtype, salt=5) * scale
        p.grad = distribute_tensor(g, p.device_mesh, p.placements) if isinstance(p, DTensor) else g


def redist(t, placements):
    return t.redistribute(t.device_mesh, placements)


def other_mesh(t):
    m = t.device_mesh
    new = DeviceMesh('cpu', m.mesh.clone(), mesh_dim_names=m.mesh_dim_names)
    assert new == m and new is not m
    return DTensor.from_local(t.to_local(), new, t.placements, shape=t.shape, stride=t.stride(), run_check=False)


def like_dt(local, ref):
    return DTensor.from_local(local, ref.device_mesh, ref.placements, shape=ref.shape, stride=ref.stride(),
                              run_check=False)


# ------------------------------------------------------------------ edits: f(opt, params, rank, world)
def _st(opt, p):
    return opt.state[p]


def e_none(opt, ps, rank, world):
    pass


def e_grad_repl(opt, ps, rank, world):
    ps[0].grad = redist(ps[0].grad, [Replicate()] * ps[0].device_mesh.ndim)


def e_grad_shard1(opt, ps, rank, world):
    ps[0].grad = redist(ps[0].grad, [Shard(1)] * ps[0].device_mesh.ndim)


def e_grad_other_mesh(opt, ps, rank, world):
    ps[0].grad = other_mesh(ps[0].grad)


def e_grad_plain(opt, ps, rank, world):
    ps[0].grad = ps[0].grad.full_tensor()


def e_grad_view_grad(opt, ps, rank, world):  # grad of p1 shares p0's grad's local memory
    ps[1].grad = like_dt(ps[0].grad.to_local(), ps[1].grad)


def e_grad_view_state(opt, ps, rank, world):
    ps[0].grad = like_dt(_st(opt, ps[0])['exp_avg'].to_local(), ps[0].grad)


def e_grad_view_param(opt, ps, rank, world):
    ps[0].grad = like_dt(ps[0].to_local(), ps[0].grad)


def e_grad_noncontig(opt, ps, rank, world):
    loc = ps[0].grad.to_local()
    nc = torch.empty(loc.shape[::-1], dtype=loc.dtype).t().copy_(loc) if loc.dim() == 2 else loc
    ps[0].grad = like_dt(nc, ps[0].grad)


def _set_state(key, fn):
    def edit(opt, ps, rank, world):
        s = _st(opt, ps[0])
        if key not in s:
            raise SetupError(f'no {key}')
        s[key] = fn(s[key], opt, ps)
    edit.__name__ = f'e_{key}_{fn.__name__}'
    return edit


def s_plain(t, opt, ps):
    return t.full_tensor()


def s_plain_local(t, opt, ps):
    return t.to_local().clone()


def s_repl(t, opt, ps):
    return redist(t, [Replicate()] * t.device_mesh.ndim)


def s_shard1(t, opt, ps):
    return redist(t, [Shard(1)] * t.device_mesh.ndim)


def s_other_mesh(t, opt, ps):
    return other_mesh(t)


def s_view_other_param(t, opt, ps):  # ps[1] has the same shape and layout
    return like_dt(ps[1].to_local(), t)


def s_other_param_state(t, opt, ps):
    return like_dt(_st(opt, ps[1])['exp_avg'].to_local(), t)


def s_is_param(t, opt, ps):
    return ps[0] if t.dtype == ps[0].dtype else like_dt(ps[0].to_local(), t)


def s_param_local(t, opt, ps):
    return like_dt(ps[0].to_local(), t)


def s_noncontig(t, opt, ps):
    loc = t.to_local()
    if loc.dim() != 2:
        raise SetupError('1-D')
    return like_dt(torch.empty(loc.shape[::-1], dtype=loc.dtype).t().copy_(loc), t)


def s_bf16(t, opt, ps):
    return t.to(torch.bfloat16) if t.dtype != torch.bfloat16 else t.float()


def s_wrong_global(t, opt, ps):  # a DTensor of 6 rows (3 + 3) for a 5-row param (3 + 2): rank 0's shard fits
    full = torch.cat([t.full_tensor(), t.full_tensor()[:1]])
    return distribute_tensor(full, t.device_mesh, t.placements)


def s_wrong_local(t, opt, ps):  # the right global shape, an inconsistent local shard (run_check=False)
    loc = t.to_local()
    return DTensor.from_local(torch.cat([loc, loc[:1]]), t.device_mesh, t.placements, shape=t.shape,
                              stride=t.stride(), run_check=False)


def s_flat(t, opt, ps):  # same local numel, other shape
    loc = t.to_local()
    return DTensor.from_local(loc.reshape(-1), t.device_mesh, [Shard(0)] * t.device_mesh.ndim, run_check=False)


def e_step_dtensor(opt, ps, rank, world):
    s = _st(opt, ps[0])
    s['step'] = distribute_tensor(s['step'].clone(), ps[0].device_mesh, [Replicate()] * ps[0].device_mesh.ndim)


def e_step_view_param(opt, ps, rank, world):
    _st(opt, ps[0])['step'] = ps[0].to_local().view(-1)[0].float() if ps[0].dtype != torch.float32 else \
        ps[0].to_local().view(-1)[:1].view(())


def e_state_shared_between(opt, ps, rank, world):  # p1's exp_avg is p0's exp_avg
    _st(opt, ps[1])['exp_avg'] = _st(opt, ps[0])['exp_avg']


def e_master_plain(opt, ps, rank, world):
    s = _st(opt, ps[0])
    if 'master_param' not in s:
        raise SetupError('no master')
    s['master_param'] = s['master_param'].to_local().clone()


def e_lr_view_local(opt, ps, rank, world):
    loc = _st(opt, ps[0])['exp_avg'].to_local()
    loc.view(-1)[0] = 0.05
    opt.param_groups[0]['lr'] = loc.view(-1)[0]


def e_rank1_grad_repl(opt, ps, rank, world):  # a per-rank program difference: only rank 1 (the last) edits
    if rank == world - 1:
        e_grad_other_mesh(opt, ps, rank, world)


def e_rank1_state_other_mesh(opt, ps, rank, world):
    if rank == world - 1:
        _st(opt, ps[0])['exp_avg'] = other_mesh(_st(opt, ps[0])['exp_avg'])


def e_zero_grad_none_p0(opt, ps, rank, world):
    ps[0].grad = None


def e_inf_rank_last(opt, ps, rank, world):  # with the scaler: an inf in the last rank's shard only
    if rank == world - 1:
        loc = ps[0].grad.to_local()
        if loc.numel():
            loc.view(-1)[0] = float('inf')


def e_hook_redist(opt, ps, rank, world):
    def hook(o, args, kwargs):
        ps[0].grad = redist(ps[0].grad, [Replicate()] * ps[0].device_mesh.ndim)
    opt.register_step_pre_hook(hook)


def e_hook_post(opt, ps, rank, world):
    def hook(o, args, kwargs):
        for p in ps:
            if p.grad is not None:
                p.grad.zero_()
    opt.register_step_post_hook(hook)


def e_param_data_plain(opt, ps, rank, world):  # the param's .data replaced after steps
    with torch.no_grad():
        ps[0].data = ps[0].data.full_tensor() if False else redist(ps[0].data, [Replicate()] * ps[0].device_mesh.ndim)


def rev_mesh(t):  # the same ranks in the reverse order: rank r holds what rank world-1-r would
    m = t.device_mesh
    return DeviceMesh('cpu', m.mesh.flip(-1).clone())


def e_grad_rev_mesh(opt, ps, rank, world):  # same global values and placements, shards on the other ranks
    g = ps[0].grad
    ps[0].grad = distribute_tensor(g.full_tensor(), rev_mesh(g), g.placements)


def s_rev_mesh(t, opt, ps):
    return distribute_tensor(t.full_tensor(), rev_mesh(t), t.placements)


def e_grad_mesh2d(opt, ps, rank, world):  # a 2-D mesh (1, world) for a param on a 1-D mesh
    g = ps[0].grad
    if g.device_mesh.ndim != 1:
        raise SetupError('param mesh not 1-D')
    ps[0].grad = distribute_tensor(g.full_tensor(), init_device_mesh('cpu', (1, world)), [Replicate(), *g.placements])


def _plain_index(ps):
    idx = [i for i, p in enumerate(ps) if not isinstance(p, DTensor)]
    if not idx:
        raise SetupError('no plain param')
    return idx[0]


def e_plain_grad_dtensor(opt, ps, rank, world):  # a plain param's grad as a Replicate DTensor
    i = _plain_index(ps)
    ps[i].grad = distribute_tensor(ps[i].grad, ps[0].device_mesh, [Replicate()] * ps[0].device_mesh.ndim)


def e_plain_exp_avg_dtensor(opt, ps, rank, world):  # a plain param's exp_avg as a Replicate DTensor
    i = _plain_index(ps)
    s = _st(opt, ps[i])
    s['exp_avg'] = distribute_tensor(s['exp_avg'], ps[0].device_mesh, [Replicate()] * ps[0].device_mesh.ndim)


def e_rank1_exp_avg_plain(opt, ps, rank, world):  # only the last rank: exp_avg a plain tensor (its local shard)
    if rank == world - 1:
        _st(opt, ps[0])['exp_avg'] = _st(opt, ps[0])['exp_avg'].to_local().clone()


def e_rank1_grad_noncontig(opt, ps, rank, world):  # only the last rank: a legal grad in another memory layout
    if rank == world - 1:
        e_grad_noncontig(opt, ps, rank, world)


STATE_EDITS = {f'{k}_{fn.__name__[2:]}': _set_state(k, fn) for k in ('exp_avg', 'exp_var')
               for fn in (s_plain, s_plain_local, s_repl, s_other_mesh, s_view_other_param, s_is_param,
                          s_param_local, s_noncontig, s_bf16, s_wrong_global, s_wrong_local, s_flat)}
STATE_EDITS['exp_avg_rev_mesh'] = _set_state('exp_avg', s_rev_mesh)
STATE_EDITS['exp_var_other_param_state'] = _set_state('exp_var', s_other_param_state)
STATE_EDITS['exp_avg_sq_repl'] = _set_state('exp_avg_sq', s_repl)
STATE_EDITS['exp_avg_sq_is_param'] = _set_state('exp_avg_sq', s_param_local)
STATE_EDITS['master_repl'] = _set_state('master_param', s_repl)
STATE_EDITS['master_other_mesh'] = _set_state('master_param', s_other_mesh)
STATE_EDITS['master_param_local'] = _set_state('master_param', s_param_local)
GRAD_EDITS = {'none': e_none, 'grad_repl': e_grad_repl, 'grad_shard1': e_grad_shard1,
              'grad_other_mesh': e_grad_other_mesh, 'grad_plain': e_grad_plain, 'grad_view_grad': e_grad_view_grad,
              'grad_view_param': e_grad_view_param, 'grad_noncontig': e_grad_noncontig,
              'grad_none_p0': e_zero_grad_none_p0, 'rank1_grad_other_mesh': e_rank1_grad_repl,
              'hook_pre_redist': e_hook_redist, 'hook_post_zero': e_hook_post}
EXTRA_EDITS = {'grad_rev_mesh': e_grad_rev_mesh, 'grad_mesh2d': e_grad_mesh2d, 'plain_grad_dtensor': e_plain_grad_dtensor,
               'plain_exp_avg_dtensor': e_plain_exp_avg_dtensor, 'rank1_exp_avg_plain': e_rank1_exp_avg_plain,
               'rank1_grad_noncontig': e_rank1_grad_noncontig}
PRE_EDITS = {'grad_view_state': e_grad_view_state, 'step_dtensor': e_step_dtensor,
             'step_view_param': e_step_view_param, 'state_shared_between': e_state_shared_between,
             'master_plain': e_master_plain, 'lr_view_local': e_lr_view_local,
             'rank1_state_other_mesh': e_rank1_state_other_mesh, 'param_data_repl': e_param_data_plain,
             **STATE_EDITS}
EDITS = {**GRAD_EDITS, **PRE_EDITS, **EXTRA_EDITS, 'inf_rank_last': e_inf_rank_last}
ASYMMETRIC = {'rank1_grad_other_mesh', 'rank1_state_other_mesh', 'rank1_exp_avg_plain', 'rank1_grad_noncontig'}
# DTensors whose local shards do not add up to their global shape: full_tensor() on them is a collective with sizes
# that differ between ranks, which aborts gloo (a probe artefact, not the step's): no reference for these
INCONSISTENT = {f'{k}_{fn}' for k in ('exp_avg', 'exp_var') for fn in ('flat', 'wrong_local')}
# edits after which gathering the full values is not the same collective on every rank (a plain tensor on one rank)
NOREF = INCONSISTENT | {'rank1_exp_avg_plain'}


# ------------------------------------------------------------------ snapshots and full values
def tsnap(t):
    if isinstance(t, DTensor):
        loc = t.to_local()
        return ('D', str(t.placements), id(t.device_mesh), tuple(t.shape), id(t), _bytes(loc))
    if isinstance(t, torch.Tensor):
        return ('T', tuple(t.shape), str(t.dtype), id(t), _bytes(t))
    return ('O', repr(t))


def _bytes(t):
    t = t.detach().clone().contiguous().reshape(-1)
    return t.view(torch.uint8).clone() if t.numel() else t


def snapshot(opt):
    """{(group, param, what): snapshot}: compared by key, so that state made (or dropped) by a step shows as the
    keys it adds, and the other entries are still compared."""
    out = {}
    for gi, g in enumerate(opt.param_groups):
        out[(gi, None, 'lr')] = tsnap(g['lr'])
        for pi, p in enumerate(g['params']):
            out[(gi, pi, 'p')] = tsnap(p)
            out[(gi, pi, 'g')] = tsnap(p.grad) if p.grad is not None else None
            s = opt.state.get(p, {})
            for k in sorted(s):
                out[(gi, pi, k)] = tsnap(s[k])
    return out


def changes(a, b):
    """The keys of snapshots `a` / `b` that differ, as 'g.p.what' ('+' made by the step, '-' dropped)."""
    out = []
    for key in sorted(set(a) | set(b), key=str):
        name = '.'.join(map(str, key))
        if key not in a:
            out.append('+' + name)
        elif key not in b:
            out.append('-' + name)
        elif not same(a[key], b[key]):
            out.append(name)
    return out


def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def full(t):
    if isinstance(t, DTensor):
        return t.full_tensor().detach().clone()
    if isinstance(t, torch.Tensor):
        return t.detach().clone()
    return t


def fulls(opt):
    out = []
    for g in opt.param_groups:
        for p in g['params']:
            s = opt.state.get(p, {})
            out.append((full(p), full(p.grad) if p.grad is not None else None,
                        {k: full(v) for k, v in s.items()}))
    return out


def reference(case, before, opt_kw):
    cls, dtype, opts = CONFIGS[case['config']]
    ps = [torch.nn.Parameter(p.clone()) for p, _, _ in before]
    for rp, (_, g, _) in zip(ps, before):
        rp.grad = None if g is None else g.clone()
    kw = dict(lr=0.05)
    kw.update(opts)
    kw.update(PATHS[case['path']])
    if case.get('scaler'):
        kw['fused'] = True
    if isinstance(kw.get('lr'), torch.Tensor):
        kw['lr'] = kw['lr'].clone()
    ref = cls(ps, **kw)
    for rp, (_, _, s) in zip(ps, before):
        if s:
            ref.state[rp] = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
    if case.get('scaler'):
        scaler = torch.amp.GradScaler('cpu', init_scale=SCALE)
        scaler.scale(torch.ones(()))
        scaler.step(ref)
        scaler.update()
    else:
        ref.step()
    return [(p.detach(), {k: v for k, v in ref.state.get(p, {}).items()}) for p in ps]


def compare(after, ref, dtype):
    worst, bad = 0.0, []
    tol = dict(rtol=1e-5, atol=1e-6) if dtype in (torch.float32, torch.float64) else dict(rtol=1e-2, atol=1e-2)
    for i, ((p, _, s), (rp, rs)) in enumerate(zip(after, ref)):
        pairs = [('param', p, rp)] + [(k, s.get(k), rs[k]) for k in rs]
        for name, a, b in pairs:
            if isinstance(b, torch.Tensor):
                if not isinstance(a, torch.Tensor) or a.shape != b.shape:
                    bad.append(f'{i}.{name}: {type(a).__name__} {getattr(a, "shape", "")} vs {tuple(b.shape)}')
                    continue
                a64, b64 = a.double(), b.to(a.device).double()
                d = (a64 - b64).abs().nan_to_num(0.0)
                worst = max(worst, float(d.max()) if d.numel() else 0.0)
                if not torch.allclose(a64, b64, equal_nan=True, **tol):
                    bad.append(f'{i}.{name}: max diff {float(d.max()):.3g}')
            elif a != b:
                bad.append(f'{i}.{name}: {a!r} vs {b!r}')
    return worst, bad


# ------------------------------------------------------------------ one rank's case
def run_rank(case, rank, world):
    cls, dtype, _ = CONFIGS[case['config']]
    try:
        opt, params, mesh = build(case, world)
    except Exception as e:  # noqa: BLE001  (the optimizer's constructor refused the setup: e.g. shared local memory)
        return dict(status='CTOR_RAISED', msg=f'{type(e).__name__}: {e}'[:400])
    scaler = torch.amp.GradScaler('cpu', init_scale=SCALE) if case.get('scaler') else None
    if scaler:
        scaler.scale(torch.ones(()))  # (makes its scale: step() asserts scale() was called once)
    for step in range(case['pre']):
        set_grads(opt, params, step, SCALE if scaler else 1.0)
        try:
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        except Exception as e:  # noqa: BLE001  (the setup itself is refused: e.g. shared local memory)
            return dict(status='PRE_RAISED', msg=f'pre-step {step}: {type(e).__name__}: {e}'[:400])
    set_grads(opt, params, 99, SCALE if scaler else 1.0)
    try:
        EDITS[case['edit']](opt, params, rank, world)
        setup_err = None
    except Exception as e:  # noqa: BLE001
        setup_err = f'{type(e).__name__}: {e}'[:300]
    errs = [None] * world
    dist.all_gather_object(errs, setup_err)
    if any(errs):
        return dict(status='SETUP_ERROR', msg=next(e for e in errs if e))
    symmetric = case['edit'] not in NOREF  # (the other per-rank edits keep the global values: a reference)
    try:
        before = fulls(opt) if symmetric else None
    except Exception as e:  # noqa: BLE001
        before, fulls_err = None, f'{type(e).__name__}: {e}'[:200]
    else:
        fulls_err = None
    try:
        one_call = [opt._one_call_lists(g) is not None for g in opt.param_groups]
    except Exception as e:  # noqa: BLE001
        one_call = repr(e)[:100]
    snap0 = snapshot(opt)

    def act():
        if scaler:
            scaler.step(opt)
            scaler.update()
        elif case['compile']:
            torch.compile(opt.step)()
        else:
            opt.step()
    raised = None
    try:
        act()
    except Exception as e:  # noqa: BLE001
        raised = f'{type(e).__name__}: {e}'[:600]
    snap1 = snapshot(opt)
    changed = changes(snap0, snap1)
    second = None
    if raised:
        snap2 = snapshot(opt)
        try:
            act()
            second = 'STEPPED'
        except Exception as e:  # noqa: BLE001
            second = 'RAISED' if not changes(snap2, snapshot(opt)) else 'RAISED_DIRTY'
    info = dict(raised=raised, changed=changed, second=second, one_call=one_call)
    infos = [None] * world
    dist.all_gather_object(infos, info)
    out = dict(ranks=infos, fulls_err=fulls_err)
    if all(i['raised'] is None for i in infos) and before is not None and case['edit'] not in NOREF:
        try:
            after = fulls(opt)
        except Exception as e:  # noqa: BLE001
            out['after_err'] = repr(e)[:200]
            return out
        if rank == 0:
            try:
                ref = reference(case, before, None)
                out['worst'], out['bad'] = compare(after, ref, dtype)
            except Exception as e:  # noqa: BLE001
                out['ref_err'] = f'{type(e).__name__}: {e}'[:300]
    return out


def child(case, rank, world, store_path, w):
    try:
        torch.set_num_threads(1)
        if case['compile']:  # inductor's on-disk caches are shared by the ranks and hit across them for DTensors
            import torch._inductor.config as inductor_config  # (pytorch#188390: rank 1 loads rank 0's graph;
            import torch._functorch.config as functorch_config  # scripts/probe_step/REPORT.md, probe 8)
            inductor_config.fx_graph_cache = False
            functorch_config.enable_autograd_cache = False
        store = dist.FileStore(store_path, world)
        dist.init_process_group('gloo', store=store, rank=rank, world_size=world, timeout=timedelta(seconds=25))
        try:
            result = run_rank(case, rank, world)
        finally:
            dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001
        result = dict(status='HARNESS_ERROR', msg=f'{type(e).__name__}: {e}'[:400],
                      tb=traceback.format_exc()[-600:])
    os.write(w, json.dumps(result, default=str).encode())
    os.close(w)
    os._exit(0)


def run_case(case, world, timeout):
    store_path = tempfile.mktemp(prefix='dt8store')
    pids, pipes = [], []
    for rank in range(world):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            child(case, rank, world, store_path, w)
        os.close(w)
        pids.append(pid)
        pipes.append(r)
    bufs, open_, start = {r: b'' for r in pipes}, set(pipes), time.time()
    while open_:
        left = timeout - (time.time() - start)
        if left <= 0:
            break
        readable, _, _ = select.select(list(open_), [], [], left)
        for r in readable:
            chunk = os.read(r, 1 << 20)
            if chunk:
                bufs[r] += chunk
            else:
                open_.discard(r)
    hung = bool(open_)
    results = []
    for pid, r in zip(pids, pipes):
        if hung:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
        os.close(r)
        if bufs[r]:
            try:
                results.append(json.loads(bufs[r]))
                continue
            except ValueError:
                pass
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        results.append(dict(status='HANG' if hung else 'CRASH', msg=f'signal {sig}'))
    try:
        os.unlink(store_path)
    except OSError:
        pass
    return classify(results)


def classify(results):
    for r in results:
        if r.get('status') in ('HANG', 'CRASH', 'HARNESS_ERROR', 'SETUP_ERROR', 'PRE_RAISED', 'CTOR_RAISED'):
            return dict(status=r['status'], msg=r.get('msg'), tb=r.get('tb'))
    infos = results[0]['ranks']
    raised = [i['raised'] is not None for i in infos]
    changed = [bool(i['changed']) for i in infos]
    detail = dict(msgs=sorted({i['raised'] for i in infos if i['raised']}),
                  changed=[i['changed'] for i in infos], one_call=[i['one_call'] for i in infos],
                  second=[i['second'] for i in infos])
    if any(raised):
        status = 'RAISE_CLEAN' if not any(changed) and all(raised) else 'RAISE_DIRTY'
        if not all(raised):
            detail['rank_split'] = raised
        if all(raised) and any(i['second'] != 'RAISED' for i in infos):
            detail['second_bad'] = True
        own = all(m.startswith(('ValueError: SGDF', 'TypeError: SGDF', 'RuntimeError: SGDF', 'ValueError: AdaSGDF',
                                'NotImplementedError: SGDF', 'RuntimeError: sgdf_erd::', 'TypeError: AdaSGDF',
                                'RuntimeError: AdaSGDF', 'NotImplementedError: AdaSGDF'))
                  for m in detail['msgs'])
        detail['own_msg'] = own
        return dict(status=status, **detail)
    r0 = results[0]
    if 'bad' in r0:
        return dict(status='OK_MATCH' if not r0['bad'] else 'OK_MISMATCH', worst=r0['worst'], bad=r0['bad'][:6],
                    **detail)
    return dict(status='OK_NOREF', why=r0.get('fulls_err') or r0.get('ref_err') or r0.get('after_err'), **detail)


# ------------------------------------------------------------------ the cases
def cases():
    out = []

    def add(edit, setup='dist', config='plain', path='default', pre=2, scaler=False, compile=False, timeout=60):
        out.append(dict(edit=edit, setup=setup, config=config, path=path, pre=pre, scaler=scaler, compile=compile,
                        timeout=timeout, name=f'{edit}/{setup}/{config}/{path}/pre{pre}'
                                               f'{"/scaler" if scaler else ""}{"/compile" if compile else ""}'))
    # baselines over setups, configs and paths
    for setup in ('dist', 'fsdp', 'repl', 'shard1', 'mesh12', 'mesh21', 'empty', 'mixed', 'sharedlocal'):
        for path in PATHS:
            for pre in (0, 2):
                add('none', setup, path=path, pre=pre)
    for config in ('dwd', 'tlr', 'f64', 'master', 'sdt_bf16', 'ada_sm', 'ada_var', 'sr', 'orth'):
        for setup in ('dist', 'fsdp', 'empty'):
            for path in ('default', 'foreach'):
                add('none', setup, config, path)
    # grad edits
    for edit in GRAD_EDITS:
        if edit == 'none':
            continue
        for path in ('default', 'fused', 'foreach'):
            for pre in (0, 2):
                add(edit, 'dist', path=path, pre=pre)
        add(edit, 'fsdp')
        add(edit, 'mesh12')
    for edit in ('grad_repl', 'grad_other_mesh', 'grad_view_grad'):
        for config in ('master', 'ada_sm', 'ada_var', 'sdt_bf16'):
            add(edit, 'dist', config)
    # another mesh with the same ranks reversed (even shards: the shapes fit), a 2-D mesh, plain <-> DTensor
    for path in ('default', 'fused', 'foreach'):
        for pre in (0, 2):
            add('grad_rev_mesh', 'even', path=path, pre=pre)
        add('exp_avg_rev_mesh', 'even', path=path)
    for path in ('default', 'foreach'):
        add('grad_mesh2d', 'dist', path=path)
    add('grad_mesh2d', 'fsdp')
    for edit in ('plain_grad_dtensor', 'plain_exp_avg_dtensor'):
        for path in ('default', 'fused', 'single'):
            add(edit, 'mixed', path=path)
    for edit in ('rank1_exp_avg_plain', 'rank1_grad_noncontig'):
        for path in ('default', 'foreach'):
            add(edit, 'dist', path=path)
        add(edit, 'fsdp')
    # state edits (after steps: the one-call path)
    for edit in PRE_EDITS:
        if edit.startswith(('exp_avg_sq', 'master')):  # (no such state with the plain config: below, with theirs)
            continue
        for path in ('default', 'foreach'):
            add(edit, 'dist', path=path)
        add(edit, 'fsdp')
    for edit in ('exp_avg_repl', 'exp_avg_other_mesh', 'exp_avg_view_other_param', 'exp_avg_is_param',
                 'exp_avg_wrong_global', 'exp_avg_plain', 'exp_avg_noncontig', 'grad_view_state'):
        for config in ('master', 'ada_sm', 'f64'):
            add(edit, 'dist', config)
        add(edit, 'mesh21')
        add(edit, 'empty')
    for edit in ('exp_avg_sq_repl', 'exp_avg_sq_is_param'):
        for path in ('default', 'fused', 'foreach'):
            add(edit, 'dist', 'ada_sm', path)
    for edit in ('master_repl', 'master_other_mesh', 'master_param_local', 'master_plain'):
        for path in ('default', 'fused', 'foreach'):
            add(edit, 'dist', 'master', path)
    # GradScaler with fused=True
    for setup in ('dist', 'fsdp', 'empty'):
        for config in ('plain', 'master', 'ada_sm'):
            for edit in ('none', 'inf_rank_last', 'grad_repl', 'exp_avg_repl'):
                add(edit, setup, config, 'fused', scaler=True)
    # torch.compile(opt.step)
    for setup in ('dist', 'fsdp'):
        for path in ('default', 'fused'):
            add('none', setup, path=path, compile=True, timeout=400)
    return out


def main():
    filt = sys.argv[1] if len(sys.argv) > 1 else ''
    out_path = sys.argv[2] if len(sys.argv) > 2 else '/tmp/dtensor8.jsonl'
    worlds = [int(w) for w in os.environ.get('DT8_WORLDS', '1,2').split(',')]
    names = os.environ.get('DT8_NAMES')  # a file of 'world name' lines: rerun exactly those
    only = {tuple(line.split(None, 1)) for line in open(names).read().splitlines() if line.strip()} if names else None
    todo = [c for c in cases() if filt in c['name']]
    print(f'{len(todo)} cases x worlds {worlds}', flush=True)
    counts = {}
    with open(out_path, 'a') as f:
        for world in worlds:
            for c in todo:
                if only is not None:
                    if (str(world), c['name']) not in only:
                        continue
                elif world == 1 and os.environ.get('DT8_W1') != 'all' and (c['path'] != 'default' or c['compile']
                                                                         or c['setup'] in ('mesh12', 'mesh21')):
                    continue  # (world 1: the default path only, to keep the run short; DT8_W1=all for every case)
                t0 = time.time()
                res = run_case(c, world, c['timeout'])
                res.update(case=c['name'], world=world, secs=round(time.time() - t0, 2))
                counts[res['status']] = counts.get(res['status'], 0) + 1
                f.write(json.dumps(res, default=str) + '\n')
                f.flush()
                if res['status'] not in ('OK_MATCH', 'RAISE_CLEAN'):
                    print(world, c['name'], res['status'], json.dumps({k: v for k, v in res.items()
                          if k in ('msg', 'msgs', 'bad', 'rank_split', 'changed', 'why', 'second', 'own_msg')},
                          default=str)[:500], flush=True)
    print(counts)


if __name__ == '__main__':
    main()
