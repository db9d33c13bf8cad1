"""Cases for scripts/probe_step/harness.py: edits made after `pre` steps (0: before the first step), in the edited group
(ctx.target, group 0: foreach in 'mixed', single in 'mixed2', the path's own elsewhere)."""
import torch
from torch import Tensor
from harness import REG, P, st, case, new_grads, build, snapshot, make_ref, SGDF, AdaSGDF, CONFIGS

CL = torch.channels_last
ALLC = ('plain',)


def _inf(t):
    with torch.inference_mode():
        return t.clone()


def _negv(t):
    return torch._neg_view(-t)


def _gaps(t):
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    v = big[..., ::2]
    v.copy_(t)
    return v


def _other_dense(t):
    if t.dim() < 2:
        return t.clone()
    perm = list(range(t.dim()))[::-1]
    return t.permute(perm).contiguous().permute(perm)


def _expanded(t):
    return t.reshape(-1)[:1].clone().expand(t.shape)


def add(name, fn, **kw):
    fn.__name__ = name
    case(**kw)(fn)


# ------------------------------------------------------------------ baseline (every config)
def baseline(opt, ctx):
    pass


add('baseline', baseline, configs=tuple(CONFIGS))


# ------------------------------------------------------------------ state entries edited by hand
STATE_WAYS = {
    'requires_grad': lambda t: t.clone().requires_grad_(),
    'parameter': lambda t: torch.nn.Parameter(t.clone(), requires_grad=False),
    'inference': _inf,
    'neg': _negv,
    'other_dense': _other_dense,
    'gaps': _gaps,
    'expanded': _expanded,
    'f64': lambda t: t.to(torch.float64),
    'bf16': lambda t: t.to(torch.bfloat16),
    'flat': lambda t: t.reshape(-1).clone(),
    'meta': lambda t: t.to('meta'),
    'nonleaf': lambda t: t.clone().requires_grad_().view(t.shape),
}
STEP_WAYS = {
    'shape1': lambda t: t.reshape(1).clone(),
    'shape11': lambda t: t.reshape(1, 1).clone(),
    'f64': lambda t: t.to(torch.float64),
    'int64': lambda t: t.to(torch.int64),
    'meta': lambda t: t.to('meta'),
    'requires_grad': lambda t: t.clone().requires_grad_(),
    'parameter': lambda t: torch.nn.Parameter(t.clone(), requires_grad=False),
    'inference': _inf,
    'neg': lambda t: torch._neg_view(-t.reshape(())),
    'pyfloat': lambda t: float(t),
    'pyint': lambda t: int(t),
    'nonint': lambda t: t + 0.5,
    'expanded': lambda t: t.reshape(1).expand(1),
    'view_of_bigger': lambda t: torch.stack([t, t])[1],
    'nonleaf': lambda t: t.clone().requires_grad_().view(()),
}


def _mk_state_edit(key, way, fn):
    def mut(opt, ctx):
        s = st(opt, ctx.target, 0)
        if key not in s:
            raise RuntimeError('no such key')
        s[key] = fn(s[key])
    return mut


for key in ('exp_avg', 'exp_var'):
    for way, fn in STATE_WAYS.items():
        add(f'state_{key}_{way}', _mk_state_edit(key, way, fn), pres=(2,))
for way, fn in STEP_WAYS.items():
    add(f'state_step_{way}', _mk_state_edit('step', way, fn), pres=(2,))
for way in ('requires_grad', 'inference', 'neg', 'other_dense', 'f64', 'parameter'):
    add(f'state_exp_avg_sq_{way}', _mk_state_edit('exp_avg_sq', way, STATE_WAYS[way]), configs=('ada_sm',), pres=(2,))
for way in ('requires_grad', 'inference', 'neg', 'other_dense', 'bf16', 'gaps'):
    add(f'state_master_{way}', _mk_state_edit('master_param', way, STATE_WAYS[way]), configs=('master',), pres=(2,))
SEED_WAYS = {'bool': lambda s: True, 'big': lambda s: 2 ** 40, 'neg': lambda s: -1, 'np': lambda s: __import__('numpy').int64(s),
             'float': lambda s: float(s), 'tensor': lambda s: torch.tensor(s), 'max': lambda s: 2 ** 32 - 1,
             'over': lambda s: 2 ** 32}
for way, fn in SEED_WAYS.items():
    add(f'state_seed_{way}', _mk_state_edit('rounding_seed', way, fn), configs=('sr',), pres=(2,))


def state_extra_key(opt, ctx):
    st(opt, ctx.target, 0)['foo'] = torch.zeros(3)


def state_extra_key_alias_param(opt, ctx):
    st(opt, ctx.target, 0)['foo'] = P(opt, ctx.target, 0).detach()


def state_missing_exp_var(opt, ctx):
    del st(opt, ctx.target, 0)['exp_var']


def state_step_shared_two_params(opt, ctx):
    st(opt, ctx.target, 1)['step'] = st(opt, ctx.target, 0)['step']


def state_step_shared_other_group(opt, ctx):
    st(opt, ctx.ngroups - 1, 0)['step'] = st(opt, 0, 0)['step']


def state_exp_avg_is_own_grad(opt, ctx):
    st(opt, ctx.target, 0)['exp_avg'] = P(opt, ctx.target, 0).grad


def state_exp_avg_is_other_group_grad(opt, ctx):
    p = P(opt, ctx.ngroups - 1, 0)
    st(opt, 0, 0)['exp_avg'] = p.grad if p.grad.shape == P(opt, 0, 0).shape else None


def state_exp_avg_view_param(opt, ctx):
    st(opt, ctx.target, 0)['exp_avg'] = P(opt, ctx.target, 0).detach()


def state_exp_avg_shared_exp_var(opt, ctx):
    s = st(opt, ctx.target, 0)
    s['exp_avg'] = s['exp_var']


def state_exp_avg_shared_other_param(opt, ctx):
    st(opt, ctx.target, 0)['exp_avg'] = st(opt, ctx.ngroups - 1, 0)['exp_avg'] if ctx.ngroups > 1 else \
        st(opt, 0, 0)['exp_var']


def state_not_dict(opt, ctx):
    opt.state[P(opt, ctx.target, 0)] = [1, 2]


def state_deleted(opt, ctx):
    del opt.state[P(opt, ctx.target, 0)]


def state_emptied(opt, ctx):
    opt.state[P(opt, ctx.target, 0)] = {}


for f in (state_extra_key, state_extra_key_alias_param, state_missing_exp_var, state_step_shared_two_params,
          state_exp_avg_is_own_grad, state_exp_avg_view_param, state_exp_avg_shared_exp_var,
          state_exp_avg_shared_other_param, state_not_dict, state_deleted, state_emptied):
    case(pres=(2,))(f)
case(pres=(2,), ngroups=(2, 3))(state_step_shared_other_group)
case(pres=(2,), ngroups=(2, 3))(state_exp_avg_is_other_group_grad)


# ------------------------------------------------------------------ grads
def _grad_edit(fn):
    def mut(opt, ctx):
        p = P(opt, ctx.target, 0)
        p.grad = fn(p.grad, p, opt, ctx)
    return mut


GRAD_WAYS = {
    'neg': lambda g, p, o, c: _negv(g),
    'inference': lambda g, p, o, c: _inf(g),
    'requires_grad': lambda g, p, o, c: g.clone().requires_grad_(),
    'other_dense': lambda g, p, o, c: _other_dense(g),
    'gaps': lambda g, p, o, c: _gaps(g),
    'expanded': lambda g, p, o, c: _expanded(g),
    'f64': lambda g, p, o, c: g.to(torch.float64),
    'meta': lambda g, p, o, c: g.to('meta'),
    'sparse': lambda g, p, o, c: g.to_sparse(),
    'parameter': lambda g, p, o, c: torch.nn.Parameter(g.clone(), requires_grad=False),
    'alias_param': lambda g, p, o, c: p.detach(),
    'alias_own_exp_avg': lambda g, p, o, c: o.state[p]['exp_avg'] if p in o.state and o.state[p].get('exp_avg') is not None and o.state[p]['exp_avg'].dtype == p.dtype else g,
    'nan': lambda g, p, o, c: torch.full_like(g, float('nan')),
    'inf': lambda g, p, o, c: torch.full_like(g, float('inf')),
    'zero_stride_scalar': lambda g, p, o, c: torch.tensor(0.5, dtype=g.dtype).expand(g.shape),
    'nonleaf': lambda g, p, o, c: g.clone().requires_grad_().view(g.shape),
}
for way, fn in GRAD_WAYS.items():
    add(f'grad_{way}', _grad_edit(fn), configs=('plain',), pres=(0, 2))
for way in ('neg', 'inference', 'other_dense', 'alias_param'):
    add(f'grad_{way}', _grad_edit(GRAD_WAYS[way]), configs=('ada_sm', 'master', 'sr', 'scale', 'cl'), pres=(2,))


def grad_shared_same_group(opt, ctx):
    P(opt, ctx.target, 2).grad = None
    p, q = P(opt, ctx.target, 0), P(opt, ctx.target, 1)
    q.grad = p.grad.reshape(-1)[:q.numel()].view(q.shape) if q.numel() <= p.numel() else q.grad


def grad_shared_same_group_exact(opt, ctx):
    # two params of the same shape sharing one grad tensor
    g = opt.param_groups[ctx.target]
    x = torch.randn(4, 3, dtype=g['params'][0].dtype).requires_grad_()
    opt.add_param_group({'params': [x], **{k: v for k, v in g.items() if k != 'params'}})
    x.grad = g['params'][0].grad
    ctx.extra['x'] = x


def grad_shared_across_groups(opt, ctx):
    a, b = P(opt, 0, 0), P(opt, ctx.ngroups - 1, 0)
    b.grad = a.grad


def grad_overlap_across_groups(opt, ctx):
    a, b = P(opt, 0, 0), P(opt, ctx.ngroups - 1, 1)
    b.grad = a.grad.reshape(-1)[1:1 + b.numel()].view(b.shape)


def grad_is_other_group_param(opt, ctx):
    a, b = P(opt, 0, 0), P(opt, ctx.ngroups - 1, 0)
    a.grad = b.detach()


def grad_is_other_group_exp_avg(opt, ctx):
    a, b = P(opt, 0, 0), P(opt, ctx.ngroups - 1, 0)
    s = opt.state.get(b)
    if s:
        a.grad = s['exp_avg']


for f in (grad_shared_same_group, grad_shared_same_group_exact):
    case(configs=('plain', 'scale', 'ada_sm', 'sr'), pres=(0, 2))(f)
for f in (grad_shared_across_groups, grad_overlap_across_groups, grad_is_other_group_param,
          grad_is_other_group_exp_avg):
    case(configs=('plain', 'scale'), ngroups=(2, 3), pres=(0, 2))(f)


def grad_none_some(opt, ctx):
    P(opt, ctx.target, 1).grad = None


def grad_none_all_target(opt, ctx):
    for p in opt.param_groups[ctx.target]['params']:
        p.grad = None


for f in (grad_none_some, grad_none_all_target):
    case(configs=('plain', 'ada_sm'), pres=(0, 2))(f)


# ------------------------------------------------------------------ params
def _param_edit(fn):
    def mut(opt, ctx):
        p = P(opt, ctx.target, 0)
        with torch.no_grad():
            fn(p, opt, ctx)
    return mut


def _set_data(make):
    def f(p, opt, ctx):
        g = p.grad
        p.data = make(p.data)
        if p.grad is not None and g is not None and p.grad.shape != p.shape:
            p.grad = None
    return f


PARAM_WAYS = {
    'data_neg': _set_data(_negv),
    'data_inference': _set_data(_inf),
    'data_other_dense': _set_data(_other_dense),
    'data_gaps': _set_data(_gaps),
    'data_f64': _set_data(lambda t: t.to(torch.float64)),
    'data_bf16': _set_data(lambda t: t.to(torch.bfloat16)),
    'data_expanded': _set_data(_expanded),
    'data_emptied': _set_data(lambda t: torch.empty(0, dtype=t.dtype)),
    'data_resized': _set_data(lambda t: torch.randn(7, dtype=t.dtype)),
    'data_meta': _set_data(lambda t: t.to('meta')),
    'requires_grad_off': lambda p, o, c: p.requires_grad_(False),
    'shared_with_other_param': lambda p, o, c: None,
}
for way, fn in PARAM_WAYS.items():
    add(f'param_{way}', _param_edit(fn), configs=('plain',), pres=(0, 2))
for way in ('data_neg', 'data_inference', 'data_other_dense', 'data_emptied'):
    add(f'param_{way}', _param_edit(PARAM_WAYS[way]), configs=('ada_sm', 'master', 'sr', 'cl', 'scale'), pres=(2,))


def param_data_aliases_other_group(opt, ctx):
    a, b = P(opt, 0, 1), P(opt, ctx.ngroups - 1, 1)
    a.data = b.data


case(ngroups=(2, 3), pres=(0, 2))(param_data_aliases_other_group)


def param_replaced_in_group(opt, ctx):
    g = opt.param_groups[ctx.target]
    x = torch.randn(4, 3, dtype=g['params'][0].dtype).requires_grad_()
    x.grad = torch.randn(4, 3, dtype=x.dtype)
    g['params'][0] = x


def param_appended_in_group(opt, ctx):
    g = opt.param_groups[ctx.target]
    x = torch.randn(6, dtype=g['params'][0].dtype).requires_grad_()
    x.grad = torch.randn(6, dtype=x.dtype)
    g['params'].append(x)


def params_emptied(opt, ctx):
    opt.param_groups[ctx.target]['params'] = []


def params_list_of_one(opt, ctx):
    opt.param_groups[ctx.target]['params'] = opt.param_groups[ctx.target]['params'][:1]


def add_group_after_step(opt, ctx):
    dt = P(opt, 0, 0).dtype
    x = torch.randn(3, 3, dtype=dt).requires_grad_()
    x.grad = torch.randn(3, 3, dtype=dt)
    opt.add_param_group({'params': [x], 'lr': 0.03})


def add_group_after_step_foreach(opt, ctx):
    dt = P(opt, 0, 0).dtype
    x = torch.randn(3, 3, dtype=dt).requires_grad_()
    x.grad = torch.randn(3, 3, dtype=dt)
    opt.add_param_group({'params': [x], 'lr': 0.03, 'foreach': True, 'fused': None})


def add_group_after_step_single_sharedgrad(opt, ctx):
    p = P(opt, 0, 0)
    x = torch.randn(p.shape, dtype=p.dtype).requires_grad_()
    x.grad = p.grad
    opt.add_param_group({'params': [x], 'lr': 0.03, 'foreach': False, 'fused': None})


def add_group_then_step_twice(opt, ctx):
    add_group_after_step_foreach(opt, ctx)
    def action(o):
        o.step()
        torch.manual_seed(5)
        new_grads(o)
        o.step()
    ctx.action = ctx.ref_action = action


for f in (param_replaced_in_group, param_appended_in_group, params_emptied, params_list_of_one, add_group_after_step,
          add_group_after_step_foreach, add_group_after_step_single_sharedgrad, add_group_then_step_twice):
    case(configs=('plain', 'ada_sm', 'sr', 'master'), pres=(0, 2))(f)


# ------------------------------------------------------------------ group options edited between steps
def _group_edit(key, value):
    def mut(opt, ctx):
        v = value(opt, ctx) if callable(value) else value
        opt.param_groups[ctx.target][key] = v
    return mut


GROUP_EDITS = {
    'lr_tensor0d': ('lr', lambda o, c: torch.tensor(0.05)),
    'lr_tensor1': ('lr', lambda o, c: torch.tensor([0.05])),
    'lr_tensor_f64': ('lr', lambda o, c: torch.tensor(0.05, dtype=torch.float64)),
    'lr_tensor_bf16': ('lr', lambda o, c: torch.tensor(0.05, dtype=torch.bfloat16)),
    'lr_tensor_rg': ('lr', lambda o, c: torch.tensor(0.05, requires_grad=True)),
    'lr_tensor_inference': ('lr', lambda o, c: _inf(torch.tensor(0.05))),
    'lr_tensor_neg': ('lr', lambda o, c: torch._neg_view(torch.tensor(-0.05))),
    'lr_tensor_expanded': ('lr', lambda o, c: torch.tensor([0.05]).expand(1)),
    'lr_zero': ('lr', 0.0),
    'lr_np': ('lr', lambda o, c: __import__('numpy').float32(0.05)),
    'maximize': ('maximize', True),
    'weight_decay': ('weight_decay', 0.2),
    'decoupled': ('decoupled_weight_decay', True),
    'sign': ('sign', True),
    'betas_np': ('betas', lambda o, c: tuple(__import__('numpy').float64(b) for b in (0.8, 0.95))),
    'betas_tensor': ('betas', lambda o, c: (torch.tensor(0.8), torch.tensor(0.95))),
    'eps_int': ('eps', 0),
    'gamma_one': ('gamma', 1),
    'to_foreach': ('foreach', True),
    'to_single': ('foreach', False),
    'fused_false': ('fused', False),
    'fused_true': ('fused', True),
    'fused_none': ('fused', None),
    'capturable': ('capturable', True),
    'state_dtype_bf16': ('state_dtype', torch.bfloat16),
    'state_dtype_f64': ('state_dtype', torch.float64),
    'master_on': ('master_weights', True),
    'sr_on': ('stochastic_rounding', True),
    'orthogonalize': ('orthogonalize', True),
}


def _group_edit_foreach_off_fused(key, value):
    def mut(opt, ctx):
        g = opt.param_groups[ctx.target]
        if key == 'fused' and value is True:
            g['foreach'] = None
        if key == 'foreach' and value is not None:
            g['fused'] = None if g['fused'] else g['fused']
        g[key] = value(opt, ctx) if callable(value) else value
    return mut


for name, (key, value) in GROUP_EDITS.items():
    add(f'group_{name}', _group_edit_foreach_off_fused(key, value), configs=('plain',), pres=(0, 2))
for name in ('lr_tensor0d', 'lr_tensor1', 'maximize', 'to_foreach', 'fused_true', 'state_dtype_bf16', 'sr_on'):
    key, value = GROUP_EDITS[name]
    add(f'group_{name}', _group_edit_foreach_off_fused(key, value), configs=('master', 'sr', 'ada_sm', 'f16', 'tlr'),
        pres=(2,))


def group_preconditioner_changed(opt, ctx):
    opt.param_groups[ctx.target]['preconditioner'] = 'variance' if opt.param_groups[ctx.target][
        'preconditioner'] != 'variance' else 'second_moment'


case(configs=('ada_sm', 'ada_var', 'ada_mixpre'), pres=(0, 2))(group_preconditioner_changed)


# ------------------------------------------------------------------ amp scalars
def _amp(grad_scale, found_inf):
    def mut(opt, ctx):
        opt.grad_scale = grad_scale() if callable(grad_scale) else grad_scale
        opt.found_inf = found_inf() if callable(found_inf) else found_inf
        if opt.found_inf is not None and isinstance(opt.found_inf, Tensor) and opt.found_inf.device.type != 'meta' \
                and float(opt.found_inf) != 0:
            pass
    return mut


AMP = {
    'scale_f64': (lambda: torch.tensor(2.0, dtype=torch.float64), lambda: torch.tensor(0.0)),
    'scale_shape1': (lambda: torch.tensor([2.0]), lambda: torch.tensor([0.0])),
    'found_inf_one': (lambda: torch.tensor(2.0), lambda: torch.tensor(1.0)),
    'scale_only': (lambda: torch.tensor(2.0), None),
    'found_only': (None, lambda: torch.tensor(0.0)),
    'scale_rg': (lambda: torch.tensor(2.0, requires_grad=True), lambda: torch.tensor(0.0)),
    'scale_inference': (lambda: _inf(torch.tensor(2.0)), lambda: _inf(torch.tensor(0.0))),
    'scale_neg': (lambda: torch._neg_view(torch.tensor(-2.0)), lambda: torch.tensor(0.0)),
    'scale_meta': (lambda: torch.tensor(2.0, device='meta'), lambda: torch.tensor(0.0)),
    'scale_float': (2.0, 0.0),
    'scale_zero': (lambda: torch.tensor(0.0), lambda: torch.tensor(0.0)),
    'scale_is_grad': ('grad', lambda: torch.tensor(0.0)),
}


def _amp_case(gs, fi):
    def mut(opt, ctx):
        if gs == 'grad':
            p = P(opt, ctx.target, 1)
            opt.grad_scale = p.grad.reshape(-1)[:1].view(())
        else:
            opt.grad_scale = gs() if callable(gs) else gs
        opt.found_inf = fi() if callable(fi) else fi
        if ctx.path in ('foreach', 'single'):
            pass
    return mut


for name, (gs, fi) in AMP.items():
    add(f'amp_{name}', _amp_case(gs, fi), configs=('plain', 'ada_sm'), pres=(0, 2))


def scaler_step(opt, ctx):
    ctx.scaler = torch.amp.GradScaler('cpu', init_scale=1024.0)
    ctx.scaler.scale(torch.ones(()))
    for g in opt.param_groups:
        for p in g['params']:
            if p.grad is not None:
                p.grad.mul_(1024.0)


def scaler_step_inf(opt, ctx):
    scaler_step(opt, ctx)
    P(opt, ctx.target, 0).grad.view(-1)[0] = float('inf')
    ctx.expect_skip = True


case(configs=('plain', 'ada_sm', 'sr'), pres=(0, 2))(scaler_step)
case(configs=('plain',), pres=(0, 2))(scaler_step_inf)


# ------------------------------------------------------------------ contexts around step
def ctx_inference_mode(opt, ctx):
    def action(o):
        with torch.inference_mode():
            o.step()
    ctx.action = action


def ctx_no_grad(opt, ctx):
    def action(o):
        with torch.no_grad():
            o.step()
    ctx.action = action


def ctx_inference_all_tensors(opt, ctx):
    # model and state made in inference mode: every path's in-place ops work inside it
    def action(o):
        with torch.inference_mode():
            o.step()
    for g in opt.param_groups:
        for p in g['params']:
            with torch.no_grad():
                p.data = _inf(p.data)
                if p.grad is not None:
                    p.grad = _inf(p.grad)
            s = opt.state.get(p)
            if s:
                for k, v in list(s.items()):
                    if isinstance(v, Tensor):
                        s[k] = _inf(v)
    ctx.action = action
    ctx.ref_action = lambda o: o.step()


def ctx_closure(opt, ctx):
    def action(o):
        o.step(lambda: torch.tensor(1.0))
    ctx.action = action


for f in (ctx_inference_mode, ctx_no_grad, ctx_inference_all_tensors, ctx_closure):
    case(configs=('plain', 'ada_sm', 'sr', 'master'), pres=(0, 2))(f)


# ------------------------------------------------------------------ load_state_dict between steps
def _load_case(edit_sd=None, from_path=None, then_edit=None):
    def mut(opt, ctx):
        sd = opt.state_dict()
        if from_path is not None:  # a checkpoint of the same model stepped on another path
            c2 = type(ctx)(from_path, ctx.config, ctx.ngroups, max(ctx.pre, 1))
            o2 = build(c2)
            sd = o2.state_dict()
        sd = __import__('copy').deepcopy(sd)
        if edit_sd:
            edit_sd(sd)

        def action(o):
            o.load_state_dict(sd)
            ctx.mid = snapshot(o, ctx)
            if then_edit:
                then_edit(o, ctx)
                ctx.mid = snapshot(o, ctx)
            ctx.late_ref = make_ref(o, ctx)  # the same optimizer on clean copies of the loaded state
            o.step()
        ctx.action = action
        ctx.second_action = lambda o: o.step()
        ctx.no_ref = 'load'
    return mut


def _sd_step_int(sd):
    for s in sd['state'].values():
        s['step'] = int(s['step'])


def _sd_drop_one(sd):
    k = next(iter(sd['state']), None)
    if k is not None:
        del sd['state'][k]


def _then_grad_neg(o, ctx):
    p = P(o, ctx.target, 0)
    p.grad = _negv(p.grad)


def _then_exp_avg_rg(o, ctx):
    s = o.state.get(P(o, ctx.target, 0))
    if s:
        s['exp_avg'] = s['exp_avg'].clone().requires_grad_()


LOADS = {
    'self': _load_case(),
    'from_fused': _load_case(from_path='fused'),
    'from_foreach': _load_case(from_path='foreach'),
    'from_single': _load_case(from_path='single'),
    'step_int': _load_case(_sd_step_int),
    'drop_one': _load_case(_sd_drop_one),
    'then_grad_neg': _load_case(then_edit=_then_grad_neg),
    'then_exp_avg_rg': _load_case(then_edit=_then_exp_avg_rg),
}
for name, fn in LOADS.items():
    add(f'load_{name}', fn, configs=('plain', 'ada_sm', 'sr', 'master'), pres=(0, 2))


# ------------------------------------------------------------------ two steps: refused, fixed, stepped
def refused_then_fixed(opt, ctx):
    """The edit is refused; undone, the next step must equal the reference (one step from the same state)."""
    p = P(opt, ctx.target, 0)
    good = p.grad

    def action(o):
        p.grad = _negv(good)
        try:
            o.step()
        except Exception:
            pass
        p.grad = good
        o.step()
    ctx.action = action
    ctx.ref_action = lambda o: o.step()


def refused_state_then_fixed(opt, ctx):
    s = st(opt, ctx.target, 0)
    good = s['exp_avg']

    def action(o):
        s['exp_avg'] = _negv(good)
        try:
            o.step()
        except Exception:
            pass
        s['exp_avg'] = good
        o.step()
    ctx.action = action
    ctx.ref_action = lambda o: o.step()


case(configs=('plain', 'ada_sm', 'sr', 'master'), pres=(0, 2))(refused_then_fixed)
case(configs=('plain', 'ada_sm', 'sr', 'master'), pres=(2,))(refused_state_then_fixed)
