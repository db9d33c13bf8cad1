"""Adversarial probe of SGDF / AdaSGDF step() after the check_only change (6be630d, 5959f47).

Each case is forked in its own process (timeout: HANG, signal: CRASH). A case builds an optimizer of 1-3 param
groups on one of the paths (default, fused, foreach, single, or mixed: per group foreach / fused / single), steps it
`pre` times (0: the edit hits the first step), draws new grads, applies an edit, then steps (or runs the case's
action). Outcome: RAISE_CLEAN / RAISE_DIRTY (something changed before the raise) / OK_MATCH / OK_MISMATCH (against
the same optimizer on clean copies of the data: contiguous, neg bits resolved, no shared memory) / OK_NOREF.
Extra per raise: whether the message came from the kernel and whether the Python checks alone (_check_groups over
every group) accept the same state (KERNEL_REFUSES_PY_ACCEPTS when they do); then a second step() must raise again
and change nothing.

PROBE_TREE=old runs the code of 10145ee (exported to /tmp/probe3_old/python, same _C.abi3.so) for a comparison.
Usage: python scripts/probe_step/harness.py [name-filter] [out.jsonl]
"""
import copy, json, os, sys, time, traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TREE = '/tmp/probe3_old/python' if os.environ.get('PROBE_TREE') == 'old' else os.path.join(HERE, '..', '..', 'python')
sys.path[:0] = [TREE, HERE, os.path.dirname(HERE)]
import forked  # noqa: E402  (scripts/forked.py)
import torch
from torch import Tensor
import sgdf_erd
from sgdf_erd import SGDF, AdaSGDF

PATH_KW = {'default': {}, 'fused': {'fused': True}, 'foreach': {'foreach': True}, 'single': {'foreach': False}}
MIXED = ['foreach', 'fused', 'single']  # per group for path 'mixed' (group 0 is the edited one by default)
MIXED2 = ['single', 'default', 'foreach']
PATHS = ['default', 'fused', 'foreach', 'single', 'mixed', 'mixed2']
SHAPES = [(4, 3), (5,), (2, 3, 2, 2)]
SCALE = 1024.0
CONFIGS = {
    'plain': dict(cls=SGDF, dtype=torch.float32, opts={}),
    'wd': dict(cls=SGDF, dtype=torch.float32, opts={'weight_decay': 0.1, 'maximize': True, 'sign': False}),
    'dwd': dict(cls=SGDF, dtype=torch.float32, opts={'weight_decay': 0.1, 'decoupled_weight_decay': True,
                                                     'sign': True}),
    'tlr': dict(cls=SGDF, dtype=torch.float32, opts={}, tensor_lr=True),
    'f64': dict(cls=SGDF, dtype=torch.float64, opts={}),
    'master': dict(cls=SGDF, dtype=torch.bfloat16, opts={'master_weights': True}),
    'sr': dict(cls=SGDF, dtype=torch.bfloat16, opts={'stochastic_rounding': True}),
    'sdt_bf16': dict(cls=SGDF, dtype=torch.float32, opts={'state_dtype': torch.bfloat16}),
    'f16': dict(cls=SGDF, dtype=torch.float16, opts={}),
    'ada_sm': dict(cls=AdaSGDF, dtype=torch.float32, opts={'preconditioner': 'second_moment'}),
    'ada_var': dict(cls=AdaSGDF, dtype=torch.float32, opts={'preconditioner': 'variance'}),
    'ada_mixpre': dict(cls=AdaSGDF, dtype=torch.float32, opts={}, per_group_pre=True),
    'scale': dict(cls=SGDF, dtype=torch.float32, opts={}, manual_scale=True),
    'scaler': dict(cls=SGDF, dtype=torch.float32, opts={}, scaler=True),
    'cl': dict(cls=SGDF, dtype=torch.float32, opts={}, channels_last=True),
}
KERNEL_MARKERS = ('fused_sgdf', 'FUSED_SGDF_REFUSED', 'sgdf_erd::')


class Ctx:
    def __init__(self, path, config, ngroups, pre, target=0):
        self.path, self.config, self.ngroups, self.pre = path, config, ngroups, pre
        c = CONFIGS[config]
        self.c = c
        self.cls, self.dtype, self.opts = c['cls'], c['dtype'], dict(c['opts'])
        self.target = target  # group edited
        self.scaler = None
        self.extra = {}
        self.action = None  # callable(opt) replacing the step
        self.ref_action = None
        self.no_ref = None
        self.expect_skip = False

    def group_paths(self):
        if self.path == 'mixed':
            return MIXED[:self.ngroups]
        if self.path == 'mixed2':
            return MIXED2[:self.ngroups]
        return [self.path] * self.ngroups


def new_grads(opt, scale=1.0):
    for g in opt.param_groups:
        for p in g['params']:
            if isinstance(p, Tensor) and p.requires_grad:
                gr = (torch.randn(p.shape, dtype=torch.float64) * scale).to(p.dtype)
                if p.dim() == 4 and not p.is_contiguous():
                    gr = gr.contiguous(memory_format=torch.channels_last)
                p.grad = gr


def build(ctx, shapes=SHAPES, **over):
    torch.manual_seed(0)
    groups = []
    pres = ['second_moment', 'variance', 'second_moment']
    for gi, gp in enumerate(ctx.group_paths()):
        ps = []
        for s in shapes:
            t = torch.randn(s, dtype=torch.float64).to(ctx.dtype)
            if ctx.c.get('channels_last') and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            ps.append(t.requires_grad_())
        lr = 0.01 * (gi + 1)
        g = {'params': ps, 'lr': torch.tensor(lr) if ctx.c.get('tensor_lr') else lr, **PATH_KW[gp]}
        if ctx.c.get('per_group_pre'):
            g['preconditioner'] = pres[gi]
        groups.append(g)
    kw = dict(ctx.opts)
    kw.update(over)
    opt = ctx.cls(groups, betas=(0.9, 0.99), **kw)
    for _ in range(ctx.pre):
        new_grads(opt)
        opt.step()
    scaled = ctx.c.get('manual_scale') or ctx.c.get('scaler')
    new_grads(opt, SCALE if scaled else 1.0)
    if ctx.c.get('scaler'):
        ctx.scaler = torch.amp.GradScaler('cpu', init_scale=SCALE)
        ctx.scaler.scale(torch.ones(()))
    if ctx.c.get('manual_scale'):
        opt.grad_scale = torch.tensor(SCALE)
        opt.found_inf = torch.tensor(0.0)
    return opt


def P(opt, gi, i):
    return opt.param_groups[gi]['params'][i]


def st(opt, gi, i):
    return opt.state[P(opt, gi, i)]


# ------------------------------------------------------------------ snapshots
def tsnap(t):
    if not isinstance(t, Tensor):
        try:
            r = repr(copy.deepcopy(t))
            if ' at 0x' in r:  # (an object without a repr of its own: the copy's address differs)
                r = repr(t)
            return ('obj', r + '|' + type(t).__name__)
        except Exception:
            return ('obj', repr(t))
    if t.is_nested:  # (cases5: no shape to read)
        return ('obj', f'nested {id(t)}')
    meta = (str(t.dtype), tuple(t.shape), str(t.device), str(t.layout), bool(t.requires_grad), type(t).__name__)
    if t.layout is not torch.strided:
        return ('sparse', meta, t.detach().to_dense().clone())
    meta = meta + (tuple(t.stride()), t.storage_offset(), bool(t.is_conj()), bool(t.is_neg()), id(t))
    if t.device.type == 'meta':
        return ('t', meta, None)
    if t.is_quantized:  # (cases5: its integer values)
        return ('t', meta, t.int_repr().reshape(-1).clone().view(torch.uint8))
    if t.untyped_storage().nbytes() == 0 and t.numel():  # (cases5: storage freed by hand, nothing to read)
        return ('t', meta + ('freed',), None)
    with torch.inference_mode(False):
        d = t.detach().resolve_conj().resolve_neg()
        if d.is_complex():
            d = torch.view_as_real(d)
        return ('t', meta, d.reshape(-1).clone(memory_format=torch.contiguous_format).view(torch.uint8))


def same(a, b):
    if a[0] != b[0] or a[1] != b[1]:
        return False
    if a[0] == 'obj':
        return True
    if a[2] is None or b[2] is None:
        return a[2] is None and b[2] is None
    return torch.equal(a[2], b[2])


def snapshot(opt, ctx):
    s = {'n_groups': ('obj', repr(len(opt.param_groups)))}
    for gi, g in enumerate(opt.param_groups):
        if not isinstance(g, dict):  # (a group replaced by hand: cases4)
            s[f'g{gi}'] = ('obj', type(g).__name__ + ':' + repr(id(g)))
            continue
        s[f'g{gi}.keys'] = ('obj', repr(sorted(g)))
        for k, v in g.items():
            if k == 'params':
                s[f'g{gi}.params.type'] = ('obj', type(v).__name__ + ':' + repr(id(v)))
                v = _param_list(g, gi, ctx)
                s[f'g{gi}.params.ids'] = ('obj', repr([id(p) for p in v]))
                for i, p in enumerate(v):
                    s[f'g{gi}.p{i}'] = tsnap(p)
                    if isinstance(p, Tensor):
                        s[f'g{gi}.p{i}.grad'] = tsnap(p.grad) if p.grad is not None else ('obj', 'None')
            else:
                s[f'g{gi}.{k}'] = tsnap(v)
    names = {}
    for gi, g in enumerate(opt.param_groups):
        for i, p in enumerate(_param_list(g, gi, ctx) if isinstance(g, dict) else []):
            names.setdefault(id(p), f'g{gi}.p{i}')
    s['state.keys'] = ('obj', repr(sorted(names.get(id(k), '?') for k in opt.state)))
    for k, stt in list(opt.state.items()):
        nm = names.get(id(k), f'unlisted{id(k)}')
        s[f'state[{nm}].keys'] = ('obj', repr(sorted(stt.keys())) if isinstance(stt, dict) else repr(stt))
        if isinstance(stt, dict):
            for kk, v in stt.items():
                s[f'state[{nm}].{kk}'] = tsnap(v)
    for attr in ('grad_scale', 'found_inf'):
        if hasattr(opt, attr):
            s[attr] = tsnap(getattr(opt, attr))
    for k, v in ctx.extra.items():
        s[f'extra.{k}'] = tsnap(v)
    return s


def _param_list(g, gi, ctx):
    """A group's params without consuming them: a list or tuple as it is, anything else (a generator, a set, a single
    tensor put there by hand) by the list the case kept in ctx.param_lists (else nothing)."""
    v = g.get('params', [])
    if isinstance(v, (list, tuple)):
        return v
    return getattr(ctx, 'param_lists', {}).get(gi, [])


def diff(a, b):
    return [k for k in sorted(set(a) | set(b)) if k not in a or k not in b or not same(a[k], b[k])]


# ------------------------------------------------------------------ clean reference
class NoRef(Exception):
    pass


def _clean(t):
    with torch.inference_mode(False):
        return t.detach().resolve_conj().resolve_neg().clone(memory_format=torch.contiguous_format)


def make_ref(opt, ctx):
    groups, pairs = [], []
    for gi, g in enumerate(opt.param_groups):
        if not isinstance(g, dict):
            raise NoRef('group not a dict')
        ng = {k: (float(v) if k == 'lr' and isinstance(v, Tensor) else v) for k, v in g.items() if k != 'params'}
        ng.update(getattr(ctx, 'ref_over', {}).get(gi, {}))  # the canonical value of an odd-typed option
        ps = []
        plist = g['params'] if isinstance(g['params'], (list, tuple)) else getattr(ctx, 'param_lists', {}).get(gi)
        if plist is None:
            raise NoRef('params not a list')
        for i, p in enumerate(plist):
            if not isinstance(p, Tensor) or not (p.is_floating_point() or p.is_complex()) or p.device.type == 'meta':
                raise NoRef('odd param')
            q = _clean(p).requires_grad_(True)
            if p.grad is not None:
                gr = p.grad
                if gr.layout is not torch.strided or gr.dtype != p.dtype or gr.shape != p.shape:
                    raise NoRef('odd grad')
                q.grad = _clean(gr)
            ps.append(q)
            pairs.append(((gi, i), p, q))
        ng['params'] = ps
        groups.append(ng)
    try:
        ref = type(opt)(groups)
    except Exception as e:
        raise NoRef(f'ref ctor: {type(e).__name__}: {e}'[:200])
    for _, p, q in pairs:
        s = opt.state.get(p)
        if s:
            if not isinstance(s, dict):
                raise NoRef('state not a dict')
            ns = {}
            for k, v in s.items():
                if k == 'step':
                    try:
                        v = torch.tensor(float(v), dtype=torch.float32)
                    except Exception:
                        raise NoRef('step not a number')
                elif isinstance(v, Tensor):
                    if v.layout is not torch.strided or v.device.type == 'meta':
                        raise NoRef('odd state')
                    v = _clean(v)
                ns[k] = v
            ref.state[q] = ns
    for attr in ('grad_scale', 'found_inf'):
        v = getattr(opt, attr, None)
        if v is not None:
            setattr(ref, attr, _clean(v) if isinstance(v, Tensor) else v)
    for attr, v in getattr(ctx, 'ref_attrs', {}).items():
        setattr(ref, attr, v)
    rscaler = None
    if ctx.scaler is not None:
        rscaler = torch.amp.GradScaler('cpu', init_scale=SCALE)
        rscaler.scale(torch.ones(()))
    return ref, pairs, rscaler


def close(a, b):
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        return 0.0 if a == b else float('inf')
    if a.shape != b.shape:
        return float('inf')
    a, b = (torch.view_as_real(x) if x.is_complex() else x for x in (_clean(a), _clean(b)))
    a, b = a.double(), b.double()
    if (torch.isnan(a) != torch.isnan(b)).any():
        return float('inf')
    m = ~torch.isnan(a)
    if not m.any():
        return 0.0
    return float((a[m] - b[m]).abs().max())


def _amax(t):
    return float(t.detach().abs().max()) if t.numel() else 0.0


def compare_ref(opt, pairs, ref):
    bad = []
    for (gi, i), p, q in pairs:
        tol = (1e-5 if q.dtype in (torch.float32, torch.float64) else 2e-2) * (1 + _amax(q))
        d = close(p, q)
        if d > tol:
            bad.append(f'g{gi}.p{i}: |diff|={d:.3g}')
        if (p.grad is None) != (q.grad is None):
            bad.append(f'g{gi}.p{i}.grad None-ness differs')
        elif p.grad is not None and close(p.grad, q.grad) > 1e-5 * (1 + _amax(q.grad)):
            bad.append(f'g{gi}.p{i}.grad differs')
        s, rs = opt.state.get(p, {}), ref.state.get(q, {})
        for k in set(s) | set(rs):
            if k not in s or k not in rs:
                bad.append(f'state g{gi}.p{i} key {k} only in {"target" if k in s else "ref"}')
                continue
            a, b = s[k], rs[k]
            if k == 'step':
                if float(a) != float(b):
                    bad.append(f'state g{gi}.p{i}.step {float(a)} vs ref {float(b)}')
                continue
            if isinstance(b, Tensor):
                tol = (2e-2 if b.dtype in (torch.bfloat16, torch.float16) else 1e-5) * (1 + _amax(b))
                if close(a, b) > tol:
                    bad.append(f'state g{gi}.p{i}.{k}: |diff|={close(a, b):.3g}')
            elif a != b and k != 'rounding_seed':
                bad.append(f'state g{gi}.p{i}.{k}: {a!r} vs {b!r}')
    return bad


def do_step(opt, ctx, scaler=None):
    if ctx.scaler is not None:
        return (scaler or ctx.scaler).step(opt)
    return opt.step()


def from_kernel(msg):
    return any(m in msg for m in KERNEL_MARKERS)


def python_checks_accept(opt):
    """Whether the Python checks alone (hyperparameters, then _check_groups over every group) accept the step."""
    try:
        from sgdf_erd.optim import sgdf_checks as checks
        checks.check_amp_scalars(getattr(opt, 'grad_scale', None), getattr(opt, 'found_inf', None))
        for gi, g in enumerate(opt.param_groups):
            checks.check_hyperparameters(g, f'param group {gi}', opt.defaults, read_device_lr=False)
        opt._check_groups(list(range(len(opt.param_groups))), {})
        return True, ''
    except Exception as e:
        return False, f'{type(e).__name__}: {e}'[:200]


def run_case(case):
    name, path, config, ngroups, pre, mut = case
    ctx = Ctx(path, config, ngroups, pre, target=getattr(mut, 'target', 0))
    out = {'name': name, 'path': path, 'config': config, 'ngroups': ngroups, 'pre': pre}
    try:
        if getattr(mut, 'builds', False):
            opt = mut(ctx)
        else:
            opt = build(ctx)
            mut(opt, ctx)
    except Exception as e:
        out['status'] = 'SETUP_ERROR'
        out['msg'] = f'{type(e).__name__}: {e}'[:300]
        return out
    before = snapshot(opt, ctx)
    ref = refnote = None
    if ctx.no_ref:
        refnote = ctx.no_ref
    else:
        try:
            ref, pairs, rscaler = make_ref(opt, ctx)
        except NoRef as e:
            refnote = str(e)
        except Exception as e:
            refnote = f'ref error {type(e).__name__}: {e}'[:200]
    try:
        (ctx.action or (lambda o: do_step(o, ctx)))(opt)
        exc = None
    except BaseException as e:
        exc = e
        out['msg'] = f'{type(e).__name__}: {e}'[:500]
        tb = traceback.format_exc().strip().splitlines()
        out['tb_last'] = tb[-3][:200] if len(tb) > 3 else ''
    after = snapshot(opt, ctx)
    changed = diff(getattr(ctx, 'mid', None) or before, after)
    if exc is not None:
        out['status'] = 'RAISE_DIRTY' if changed else 'RAISE_CLEAN'
        out['changed'] = changed[:12]
        out['etype'] = type(exc).__name__
        out['kernel_msg'] = from_kernel(str(exc))
        out['py_accepts'], out['py_msg'] = python_checks_accept(opt)
        if out['kernel_msg'] and out['py_accepts']:
            out['kernel_refuses_py_accepts'] = True
        # a second step after the refused one: raises again, changes nothing
        try:
            (getattr(ctx, 'second_action', None) or ctx.action or (lambda o: do_step(o, ctx)))(opt)
            out['second'] = 'stepped'
        except BaseException as e:
            out['second'] = 'raised' + (' same' if type(e) is type(exc) else f' other {type(e).__name__}')
        if diff(after, snapshot(opt, ctx)) and out['second'] != 'stepped':
            out['second'] += ' DIRTY'
        return out
    if getattr(ctx, 'check_ok', None) is not None:  # (cases5: direct op calls) the case's own check of a success
        if getattr(ctx, 'must_raise', False):  # an invalid input the call accepted
            out['status'] = 'ACCEPTED_BAD'
            out['detail'] = changed[:12]
            return out
        out['status'], detail = ctx.check_ok()  # (OK_MATCH / OK_MISMATCH / OK_NONFINITE / OK_NOREF, details)
        out['detail'] = list(detail)[:12]
        return out
    if getattr(ctx, 'late_ref', None) is not None:  # made by the action (after a load_state_dict)
        ref, pairs, rscaler = ctx.late_ref
        ctx.ref_action = lambda o: o.step()
    if ctx.expect_skip:
        bad = [c for c in changed if '.grad' not in c]
        out['status'] = 'OK_MISMATCH' if bad else 'OK_MATCH'
        out['detail'] = bad[:12]
        return out
    if ref is None:
        out['status'] = 'OK_NOREF'
        out['detail'] = refnote
        return out
    try:
        (ctx.ref_action or (lambda o: do_step(o, ctx, rscaler)))(ref)
    except Exception as e:
        out['status'] = 'OK_NOREF'
        out['detail'] = f'ref step raised {type(e).__name__}: {e}'[:300]
        return out
    bad = compare_ref(opt, pairs, ref)
    if getattr(ctx, 'post_check', None) is not None:
        bad += ctx.post_check(opt, ref)
    out['status'] = 'OK_MISMATCH' if bad else 'OK_MATCH'
    out['detail'] = bad[:12]
    return out


def run_forked(case, timeout=60):
    base = {'name': case[0], 'path': case[1], 'config': case[2], 'ngroups': case[3], 'pre': case[4]}
    return {**base, **forked.run_forked(lambda: run_case(case), timeout)}


REG = []


def case(configs=('plain',), paths=PATHS, ngroups=(1, 2, 3), pres=(0, 2), builds=False, target=0):
    def deco(f):
        f.builds, f.target = builds, target
        REG.append((f.__name__, f, configs, paths, ngroups, pres))
        return f
    return deco


def all_cases():
    out = []
    for n, f, configs, paths, ngroups, pres in REG:
        for c in configs:
            for p in paths:
                for ng in ngroups:
                    if p.startswith('mixed') and ng == 1:
                        continue
                    if f.target >= ng:
                        continue
                    for pre in pres:
                        out.append((n, p, c, ng, pre, f))
    return out


if __name__ == '__main__':
    import importlib
    for mod in os.environ.get('PROBE_CASES', 'cases').split(','):  # (they register into harness.REG)
        importlib.import_module(mod)
    from harness import all_cases as _all
    flt = sys.argv[1] if len(sys.argv) > 1 else ''
    outp = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, 'results.jsonl')
    torch.set_num_threads(1)
    todo = [c for c in _all() if flt in c[0]]
    for p in PATHS:  # warm up lazy initialisation so forks are cheap
        run_case(('warm', p, 'plain', 2, 1, lambda opt, ctx: None))
    t0 = time.time()
    with open(outp, 'w') as f:
        for c in todo:
            res = run_forked(c)
            f.write(json.dumps(res, default=str) + '\n')
            f.flush()
            if res['status'] not in ('OK_MATCH', 'RAISE_CLEAN') or res.get('kernel_refuses_py_accepts') or \
                    'DIRTY' in res.get('second', ''):
                print(res['status'], res['name'], res['path'], res['config'], res['ngroups'], res['pre'],
                      res.get('msg', '')[:160], res.get('changed', res.get('detail', '')), flush=True)
    print('ran', len(todo), 'in', round(time.time() - t0), 's', flush=True)
