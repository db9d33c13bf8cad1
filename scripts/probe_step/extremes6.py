"""Numerical extremes compared ACROSS paths (seventh probe, branch wt-probe7).

Each scenario (a dtype / storage config x hyperparameters x gradient / parameter kind x steps, some with a step count
loaded from a checkpoint) is stepped on every path (default, fused, foreach, single), each in its own forked process
(scripts/forked.py: a crash or a hang is that case's outcome), and compared with
- the other paths (PATH_DISAGREE where they differ beyond float tolerance or in their NaN / inf pattern), and
- a float64 evaluation of the update written here from the method's spec (SGDF and AdaSGDF's update, one tensor at a
  time), whose params and state are rounded to the optimizer's storage dtypes after every step (SPEC_MISMATCH; or
  SPEC_NONFINITE where the spec is finite and the path is not, NONFINITE_AS_SPEC where both are).
A path that raises while another steps is RAISE_SOME (RAISE_ALL where all paths raise: a consistent refusal).

Usage: PYTHONPATH=python:. python scripts/probe_step/extremes6.py [name-filter] [out.jsonl]
"""
import itertools, json, math, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import forked  # noqa: E402
import torch
from sgdf_erd import SGDF, AdaSGDF

f32, f64, bf16, f16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
PATHS = {'default': {}, 'fused': {'fused': True}, 'foreach': {'foreach': True}, 'single': {'foreach': False}}
# capturable=True (on the CPU too): the foreach path then computes the bias corrections from the step tensors
CAPTURABLE = {'foreach_cap': {'foreach': True, 'capturable': True}, 'fused_cap': {'fused': True, 'capturable': True}}
# torch.compile(opt.step, backend="eager") (a few scenarios: compiling is slow here)
COMPILED = {'foreach_compiled': {'foreach': True}, 'default_compiled': {}}
ALL_PATHS = {**PATHS, **CAPTURABLE, **COMPILED}
N = 64  # elements per tensor (two tensors: a (8, 8) matrix and a (64,) vector)

# storage configs: param dtype, state dtype the reference rounds m / s to, options
STORES = {
    'f32': dict(dtype=f32, sdt=f32, opts={}),
    'f64': dict(dtype=f64, sdt=f64, opts={}),
    'bf16': dict(dtype=bf16, sdt=bf16, opts={}),
    'f16': dict(dtype=f16, sdt=f16, opts={}),
    'bf16_master': dict(dtype=bf16, sdt=bf16, opts={'master_weights': True}, master=True),
    'f16_master': dict(dtype=f16, sdt=f16, opts={'master_weights': True}, master=True),
    'f32_sbf16': dict(dtype=f32, sdt=bf16, opts={'state_dtype': bf16}),
    'bf16_s32': dict(dtype=bf16, sdt=f32, opts={'state_dtype': f32}),
    'bf16_sr': dict(dtype=bf16, sdt=bf16, opts={'stochastic_rounding': True}, sr=True),
}

HYPERS = {
    'base': {},
    'lr0': dict(lr=0.0),
    'betas00': dict(betas=(0.0, 0.0)),
    'b1_0': dict(betas=(0.0, 0.999)),
    'b2_0': dict(betas=(0.9, 0.0)),
    'betas_near1': dict(betas=(0.99999994, 0.99999994)),
    'gamma_tiny': dict(gamma=1e-30),
    'gamma_huge': dict(gamma=1e30),
    'gamma1': dict(gamma=1.0),
    'eps0': dict(eps=0.0),
    'eps_max': dict(eps=3.0e38),
    'eps_sub': dict(eps=1e-45),
    'wd_coupled': dict(weight_decay=0.5),
    'wd_decoupled': dict(weight_decay=0.5, decoupled_weight_decay=True),
    'wd_decoupled_over1': dict(lr=2.0, weight_decay=3.0, decoupled_weight_decay=True),
    'wd_coupled_huge': dict(weight_decay=3.0e38),
    'maximize': dict(maximize=True),
    'maximize_wd': dict(maximize=True, weight_decay=0.5),
    'sign': dict(sign=True),
    'lr_max': dict(lr=3.0e38),
    'lr_sub': dict(lr=1e-45),
    'b2_close1': dict(betas=(0.9, 0.99999)),
    'b1_close1': dict(betas=(0.9999, 0.999)),
    'orth': dict(orthogonalize=True),
    'orth_wd': dict(orthogonalize=True, weight_decay=0.5, decoupled_weight_decay=True),
}

# gradient kinds: a function (shape, dtype, step index) -> gradient
def _g_randn(s, dt, k):
    g = torch.Generator().manual_seed(10 + k)
    return torch.randn(s, generator=g, dtype=f64).to(dt)


def _put(v, where=3):
    def f(s, dt, k):
        g = _g_randn(s, dt, k)
        g.view(-1)[where] = v
        return g
    return f


def _scaled(c):
    return lambda s, dt, k: (_g_randn(s, f64, k) * c).to(dt)


GRADS = {
    'randn': _g_randn,
    'zeros': lambda s, dt, k: torch.zeros(s, dtype=dt),
    'zeros_after_one': lambda s, dt, k: _g_randn(s, dt, k) if k == 0 else torch.zeros(s, dtype=dt),
    'constant': lambda s, dt, k: torch.full(s, 0.3, dtype=dt),
    'inf1': _put(math.inf), 'ninf1': _put(-math.inf), 'nan1': _put(math.nan),
    'subnormal': lambda s, dt, k: torch.full(s, torch.finfo(dt).tiny / 4, dtype=dt) * torch.sign(_g_randn(s, dt, k)),
    'tiny': _scaled(1e-20),
    'huge': lambda s, dt, k: (_g_randn(s, f64, k).sign() * torch.finfo(dt).max / 2).to(dt),
    'big_1e19': _scaled(1e19),
    'mixed_scale': lambda s, dt, k: (_g_randn(s, f64, k) * torch.logspace(-30, 30, math.prod(s), dtype=f64)
                                     .reshape(s)).clamp(-torch.finfo(dt).max, torch.finfo(dt).max).to(dt),
    'negzero': lambda s, dt, k: -torch.zeros(s, dtype=dt),
}
# parameter kinds: (shape, dtype) -> initial parameter
PARAMS = {
    'randn': lambda s, dt: torch.randn(s, generator=torch.Generator().manual_seed(1), dtype=f64).to(dt),
    'zeros': lambda s, dt: torch.zeros(s, dtype=dt),
    'huge': lambda s, dt: torch.full(s, torch.finfo(dt).max / 2, dtype=dt),
    'subnormal': lambda s, dt: torch.full(s, torch.finfo(dt).tiny / 8, dtype=dt),
    'nan1': lambda s, dt: PARAMS['randn'](s, dt).view(-1).index_fill(0, torch.tensor([5]), math.nan).view(s),
}
SHAPES = [(8, 8), (N,)]


# ------------------------------------------------------------------ float64 spec reference
def _rnd(x, dt):
    return x.to(dt).to(f64)


def spec_run(sc):
    """The update of docs/sgdf.md (and docs/adasgdf.md), float64, rounded to storage after each step."""
    store, h = STORES[sc['store']], dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, gamma=0.5, weight_decay=0.0,
                                         decoupled_weight_decay=False, maximize=False, sign=False)
    pre = sc.get('pre')
    if pre:
        h.update(eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False)
    h.update(HYPERS[sc['hyper']])
    dt, sdt = store['dtype'], store['sdt']
    b1, b2 = h['betas']
    out = []
    for j, s in enumerate(SHAPES):
        p0 = PARAMS[sc['param']](s, dt)
        p = p0.to(f64)
        master = p0.to(f32).to(f64) if store.get('master') else None
        m, v, q = torch.zeros(s, dtype=f64), torch.zeros(s, dtype=f64), torch.zeros(s, dtype=f64)
        # the magnitudes the rounding of each output scales with (for the tolerance)
        sp, sm, sv = p.abs().nan_to_num(0, 0, 0), torch.zeros(s, dtype=f64), torch.zeros(s, dtype=f64)
        t0 = sc.get('t0', 0)
        if t0:
            m, v, q = (_rnd(torch.full(s, c, dtype=f64), sdt) for c in (0.05, 0.01, 0.02))
        for k in range(sc['steps']):
            t = t0 + k + 1
            g = GRADS[sc['grad']](s, dt, k + 7 * j).to(f64)
            x = master if master is not None else p
            if h['maximize']:
                g = -g
            if h['weight_decay']:
                if h['decoupled_weight_decay']:
                    x = x * (1 - h['lr'] * h['weight_decay'])
                else:
                    g = g + h['weight_decay'] * x
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * (g - m) ** 2
            bc1 = 1 - b1 ** t
            bc2 = (1 + b1) * (1 - b2 ** t) / ((1 - b1) * (1 - b1 ** (2 * t)))
            mh = m / bc1
            r = g - mh
            K = (v / (bc2 * r * r + v + h['eps'])) ** h['gamma']
            u = mh + K * r
            if pre:
                if pre == 'second_moment':
                    q = b2 * q + (1 - b2) * u * u
                    d = torch.sqrt(q / (1 - b2 ** t))
                else:
                    d = torch.sqrt(v / (1 - b2 ** t))
                u = u / (d + h['eps'])
            elif h['sign']:
                u = torch.sign(u)
            x = x - h['lr'] * u
            fin = lambda z: z.abs().nan_to_num(0, 0, 0)  # noqa: E731
            sp = sp + fin(h['lr'] * u) + fin(x) + fin(h['lr'] * h['weight_decay'] * x)
            sm = torch.maximum(sm, fin(g) + fin(m))
            sv = torch.maximum(sv, fin((g - m) ** 2) + fin(v))
            if master is not None:
                master = _rnd(x, f32)
                p = _rnd(master, dt)
            else:
                p = _rnd(x, dt)
            m, v = _rnd(m, sdt), _rnd(v, sdt)
            if pre == 'second_moment':
                q = _rnd(q, sdt)
        out.append(dict(p=p, exp_avg=m, exp_var=v, scale_p=sp, scale_exp_avg=sm, scale_exp_var=sv))
    return out


# ------------------------------------------------------------------ one path
def path_run(sc, path):
    store = STORES[sc['store']]
    dt = store['dtype']
    torch.manual_seed(0)
    ps = [PARAMS[sc['param']](s, dt).requires_grad_() for s in SHAPES]
    kw = dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, gamma=0.5)
    kw.update(store['opts'])
    kw.update(HYPERS[sc['hyper']])
    kw.update(ALL_PATHS[path])
    if sc.get('pre'):
        kw.pop('sign', None)
        kw.setdefault('weight_decay', 0.0)
        kw.setdefault('decoupled_weight_decay', False)
        opt = AdaSGDF(ps, preconditioner=sc['pre'], **kw)
    else:
        opt = SGDF(ps, **kw)
    t0 = sc.get('t0', 0)
    if t0:  # a checkpoint at step t0 with state of a known value, loaded
        sd = opt.state_dict()
        sdt = store['sdt']
        for i, p in enumerate(ps):
            st = {'step': torch.tensor(float(t0)), 'exp_avg': torch.full(p.shape, 0.05, dtype=sdt),
                  'exp_var': torch.full(p.shape, 0.01, dtype=sdt)}
            if sc.get('pre') == 'second_moment':
                st['exp_avg_sq'] = torch.full(p.shape, 0.02, dtype=sdt)
            if store.get('master'):
                st['master_param'] = p.detach().float().clone()
            sd['state'][i] = st
        opt.load_state_dict(sd)
    step = torch.compile(opt.step, backend='eager') if path.endswith('_compiled') else opt.step
    for k in range(sc['steps']):
        for j, p in enumerate(ps):
            p.grad = GRADS[sc['grad']](p.shape, dt, k + 7 * j)
        step()
    res = []
    for p in ps:
        s = opt.state[p]
        res.append({'p': p.detach().double().tolist(), 'exp_avg': s['exp_avg'].double().tolist(),
                    'exp_var': s['exp_var'].double().tolist(), 'step': float(s['step'])})
    return {'status': 'OK', 'res': res}


# ------------------------------------------------------------------ comparison
def _tol(dt):
    return {f32: 2e-6, f64: 1e-12, bf16: 2 ** -7, f16: 2 ** -10}[dt]


def cmp(a, b, dt, scale):
    """Worst difference of a vs b (lists / tensors), in units of the tolerance; inf where the NaN / inf pattern
    differs."""
    a, b = torch.as_tensor(a, dtype=f64), torch.as_tensor(b, dtype=f64)
    na, nb = torch.isnan(a), torch.isnan(b)
    if not torch.equal(na, nb):
        return math.inf, 'nan pattern'
    ia, ib = torch.isinf(a), torch.isinf(b)
    if not torch.equal(ia, ib) or not torch.equal(a[ia], b[ib]):
        return math.inf, 'inf pattern'
    f = ~(na | ia)
    if not f.any():
        return 0.0, ''
    d = (a[f] - b[f]).abs()
    tol = _tol(dt) * (b[f].abs() + scale[f]) + torch.finfo(dt).tiny * 4
    w = float((d / tol).max())
    return w, f'max |diff| {float(d.max()):.3g}'


def analyse(sc, runs, spec):
    store = STORES[sc['store']]
    dt, sdt = store['dtype'], store['sdt']
    oks = {p: r for p, r in runs.items() if r.get('status') == 'OK'}
    out = []
    if not oks:
        st = {r.get('status') for r in runs.values()}
        return [('RAISE_ALL' if st == {'RAISE'} else '/'.join(sorted(st)), {p: r.get('msg', '')[:160]
                                                                            for p, r in runs.items()})]
    if len(oks) < len(runs):
        out.append(('RAISE_SOME', {p: (r.get('status'), r.get('msg', '')[:200]) for p, r in runs.items()}))
    # a path vs the others
    names = sorted(oks)
    for a, b in itertools.combinations(names, 2):
        for j in range(len(SHAPES)):
            for key in ('p', 'exp_avg', 'exp_var'):
                x, y = oks[a]['res'][j][key], oks[b]['res'][j][key]
                d = sdt if key != 'p' else dt
                w, why = cmp(x, y, d, spec[j]['scale_' + key])
                lim = 8 if not store.get('sr') else 1e9  # (stochastic rounding: only the NaN / inf pattern)
                if w > lim:
                    out.append(('PATH_DISAGREE', f'{a} vs {b} tensor{j}.{key}: {why} ({w:.3g} tol)'))
            if oks[a]['res'][j]['step'] != oks[b]['res'][j]['step']:
                out.append(('PATH_DISAGREE', f'{a} vs {b} tensor{j}.step {oks[a]["res"][j]["step"]} vs '
                                             f'{oks[b]["res"][j]["step"]}'))
    # each path vs the spec (not written here for orthogonalize: its Newton-Schulz iterates in float32; cross-path only)
    for pth in (names if 'orthogonalize' not in HYPERS[sc['hyper']] else []):
        for j in range(len(SHAPES)):
            for key in ('p', 'exp_avg', 'exp_var'):
                x, y = oks[pth]['res'][j][key], spec[j][key]
                d = sdt if key != 'p' else dt
                yy = torch.as_tensor(y, dtype=f64)
                xx = torch.as_tensor(x, dtype=f64)
                if torch.isfinite(yy).all() and not torch.isfinite(xx).all():
                    out.append(('SPEC_NONFINITE', f'{pth} tensor{j}.{key}: {int((~torch.isfinite(xx)).sum())} '
                                                  'non-finite where the spec is finite'))
                    continue
                if not torch.isfinite(yy).all() and not torch.isfinite(xx).all():
                    out.append(('NONFINITE_AS_SPEC', f'{pth} tensor{j}.{key}'))
                    continue
                w, why = cmp(x, y, d, spec[j]['scale_' + key])
                lim = 64 if not store.get('sr') else 1e9
                if w > lim:
                    out.append(('SPEC_MISMATCH', f'{pth} tensor{j}.{key}: {why} ({w:.3g} tol)'))
    if not out:
        out.append(('MATCH', ''))
    return out


def scenarios():
    out = []
    base_steps = 3
    # 1. every hyper x every grad, f32
    for h in HYPERS:
        for g in GRADS:
            out.append(dict(store='f32', hyper=h, grad=g, param='randn', steps=base_steps))
    # 2. f64 / bf16 / f16 / master / state dtype over a hyper subset x grad subset
    hs = ['base', 'eps0', 'betas00', 'gamma_tiny', 'gamma_huge', 'wd_decoupled_over1', 'maximize_wd', 'sign', 'lr0',
          'b2_close1', 'orth']
    gs = ['randn', 'zeros', 'inf1', 'nan1', 'subnormal', 'huge', 'constant', 'mixed_scale']
    for st in ('f64', 'bf16', 'f16', 'bf16_master', 'f16_master', 'f32_sbf16', 'bf16_s32', 'bf16_sr'):
        for h in hs:
            for g in gs:
                out.append(dict(store=st, hyper=h, grad=g, param='randn', steps=base_steps))
    # 3. param kinds
    for st in ('f32', 'f64', 'bf16', 'bf16_master'):
        for pk in PARAMS:
            for h in ('base', 'wd_coupled', 'wd_decoupled', 'wd_decoupled_over1'):
                out.append(dict(store=st, hyper=h, grad='randn', param=pk, steps=2))
    # 4. large loaded step counts
    for st in ('f32', 'f64', 'bf16', 'bf16_master', 'f32_sbf16'):
        for t0 in (1e7, 2 ** 24, 2 ** 24 + 1, 1e9, 1e30, 3.0e38):
            for h in ('base', 'betas_near1', 'b2_0'):
                out.append(dict(store=st, hyper=h, grad='randn', param='randn', steps=2, t0=t0))
    # 5. AdaSGDF
    for pre in ('second_moment', 'variance'):
        for st in ('f32', 'f64', 'bf16'):
            for h in ('base', 'eps0', 'betas00', 'gamma_huge', 'wd_decoupled_over1', 'maximize', 'lr0', 'eps_max'):
                for g in ('randn', 'zeros', 'constant', 'inf1', 'subnormal', 'huge'):
                    out.append(dict(store=st, hyper=h, grad=g, param='randn', steps=3, pre=pre))
        for t0 in (1e7, 1e30):
            out.append(dict(store='f32', hyper='base', grad='randn', param='randn', steps=2, t0=t0, pre=pre))
    # 6. a few with torch.compile'd steps too
    for st in ('f32', 'f64'):
        for h in ('base', 'b2_close1', 'b1_close1', 'wd_decoupled'):
            out.append(dict(store=st, hyper=h, grad='randn', param='randn', steps=3, compiled=True))
    for sc in out:
        sc['name'] = '/'.join(str(sc[k]) for k in ('store', 'hyper', 'grad', 'param', 'steps')) + \
            (f'/t0={sc["t0"]:g}' if sc.get('t0') else '') + (f'/ada_{sc["pre"]}' if sc.get('pre') else '') + \
            ('/compiled' if sc.get('compiled') else '')
    return out


def one(sc, path):
    try:
        return path_run(sc, path)
    except Exception as e:
        return {'status': 'RAISE', 'msg': f'{type(e).__name__}: {e}'[:300]}


if __name__ == '__main__':
    flt = sys.argv[1] if len(sys.argv) > 1 else ''
    outp = sys.argv[2] if len(sys.argv) > 2 else '/tmp/extremes6.jsonl'
    torch.set_num_threads(1)
    one(dict(store='f32', hyper='base', grad='randn', param='randn', steps=1), 'fused')  # warm up before forks
    todo = [s for s in scenarios() if flt in s['name']]
    t0 = time.time()
    counts, ncases = {}, 0
    with open(outp, 'w') as f:
        for sc in todo:
            paths = list(PATHS) + (list(CAPTURABLE) if sc['store'] in ('f32', 'f64', 'bf16') else []) + \
                (list(COMPILED) if sc.get('compiled') else [])
            runs = {p: forked.run_forked(lambda p=p: one(sc, p), 60) for p in paths}
            try:
                spec = spec_run(sc)
            except Exception as e:
                spec = None
                res = [('SPEC_ERROR', repr(e)[:200])]
            if spec is not None:
                res = analyse(sc, runs, spec)
            ncases += len(paths)
            kinds = sorted({r[0] for r in res})
            for k in kinds:
                counts[k] = counts.get(k, 0) + 1
            f.write(json.dumps({'name': sc['name'], 'kinds': kinds, 'detail': res[:8]}, default=str) + '\n')
            if kinds != ['MATCH'] and kinds != ['RAISE_ALL']:
                print(sc['name'], res[:3], flush=True)
    print('scenarios', len(todo), 'cases (scenario x path)', ncases, 'in', round(time.time() - t0), 's',
          counts, flush=True)
