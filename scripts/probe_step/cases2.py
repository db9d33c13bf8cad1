"""More cases: tensor subclasses, lr / amp tensors sharing memory with a step's tensors, params repeated by hand,
edits of a param other than the first, zero tensors."""
import torch
from torch import Tensor
from harness import P, st, case, new_grads

ALLCFG = ('plain', 'ada_sm', 'sr', 'master')


class TFSub(Tensor):
    """A __torch_function__ subclass (as torch.Tensor subclasses made with as_subclass are)."""


def lr_view_of_own_exp_avg(opt, ctx):
    s = opt.state.get(P(opt, ctx.target, 0))
    if s and s['exp_avg'].dtype == torch.float32:
        opt.param_groups[ctx.target]['lr'] = s['exp_avg'].view(-1)[0]
        s['exp_avg'].view(-1)[0] = 0.01
    else:
        raise RuntimeError('n/a')


def lr_view_of_own_param(opt, ctx):
    p = P(opt, ctx.target, 0)
    if p.dtype != torch.float32:
        raise RuntimeError('n/a')
    with torch.no_grad():
        p.view(-1)[0] = 0.01
    opt.param_groups[ctx.target]['lr'] = p.detach().view(-1)[0]


def lr_view_of_own_grad(opt, ctx):
    p = P(opt, ctx.target, 0)
    if p.dtype != torch.float32:
        raise RuntimeError('n/a')
    p.grad.view(-1)[0] = 0.01
    opt.param_groups[ctx.target]['lr'] = p.grad.view(-1)[0]


def lr_shared_between_groups(opt, ctx):
    lr = torch.tensor(0.03)
    for g in opt.param_groups:
        g['lr'] = lr


def lr_view_of_other_group_step(opt, ctx):
    s = opt.state.get(P(opt, ctx.ngroups - 1, 0))
    if not s:
        raise RuntimeError('n/a')
    opt.param_groups[ctx.target]['lr'] = s['step']


def grad_scale_view_of_own_exp_avg(opt, ctx):
    s = opt.state.get(P(opt, ctx.target, 0))
    if not s or s['exp_avg'].dtype != torch.float32:
        raise RuntimeError('n/a')
    s['exp_avg'].view(-1)[0] = 2.0
    opt.grad_scale = s['exp_avg'].view(-1)[0]
    opt.found_inf = torch.tensor(0.0)


def found_inf_view_of_own_grad(opt, ctx):
    p = P(opt, ctx.target, 0)
    if p.dtype != torch.float32:
        raise RuntimeError('n/a')
    p.grad.view(-1)[0] = 0.0
    opt.grad_scale = torch.tensor(1.0)
    opt.found_inf = p.grad.view(-1)[0]


for f in (lr_view_of_own_exp_avg, lr_view_of_own_param, lr_view_of_own_grad, lr_shared_between_groups,
          grad_scale_view_of_own_exp_avg, found_inf_view_of_own_grad):
    case(configs=('plain', 'ada_sm'), pres=(0, 2))(f)
case(configs=('plain',), ngroups=(2, 3), pres=(2,))(lr_view_of_other_group_step)


def param_tf_subclass(opt, ctx):
    g = opt.param_groups[ctx.target]
    old = g['params'][0]
    new = old.detach().clone().as_subclass(TFSub).requires_grad_()
    new.grad = old.grad
    g['params'][0] = new
    if old in opt.state:
        opt.state[new] = opt.state.pop(old)


def state_tf_subclass(opt, ctx):
    s = opt.state.get(P(opt, ctx.target, 0))
    if not s:
        raise RuntimeError('n/a')
    s['exp_avg'] = s['exp_avg'].as_subclass(TFSub)


def grad_tf_subclass(opt, ctx):
    p = P(opt, ctx.target, 0)
    p.grad = p.grad.as_subclass(TFSub)


def _two(t):
    from torch.testing._internal.two_tensor import TwoTensor
    return TwoTensor(t.clone(), t.clone())


def state_two_tensor(opt, ctx):
    s = opt.state.get(P(opt, ctx.target, 0))
    if not s:
        raise RuntimeError('n/a')
    s['exp_avg'] = _two(s['exp_avg'])


def grad_two_tensor(opt, ctx):
    p = P(opt, ctx.target, 0)
    p.grad = _two(p.grad)


def grad_zero_tensor(opt, ctx):
    p = P(opt, ctx.target, 0)
    p.grad = torch._efficientzerotensor(p.shape, dtype=p.dtype)


for f in (param_tf_subclass, state_tf_subclass, grad_tf_subclass, state_two_tensor, grad_two_tensor,
          grad_zero_tensor):
    case(configs=ALLCFG, pres=(0, 2))(f)


def param_repeated_in_group(opt, ctx):
    g = opt.param_groups[ctx.target]
    g['params'].append(g['params'][0])


def param_repeated_across_groups(opt, ctx):
    opt.param_groups[ctx.target]['params'].append(P(opt, ctx.ngroups - 1, 1))


def param_view_of_other_in_group(opt, ctx):
    g = opt.param_groups[ctx.target]
    p = g['params'][1]
    x = p.detach().view(p.shape).requires_grad_()
    x.grad = torch.randn_like(p)
    g['params'].append(x)


case(configs=('plain', 'ada_sm'), pres=(0, 2))(param_repeated_in_group)
case(configs=('plain', 'ada_sm'), ngroups=(2, 3), pres=(0, 2))(param_repeated_across_groups)
case(configs=('plain', 'ada_sm'), pres=(0, 2))(param_view_of_other_in_group)


# edits of param 1 and 2 (the eligibility looks at the first tensor of some lists only)
def _edit_other(i, key, fn):
    def mut(opt, ctx):
        p = P(opt, ctx.target, i)
        s = opt.state.get(p)
        if key == 'grad':
            p.grad = fn(p.grad)
        elif key == 'param':
            with torch.no_grad():
                p.data = fn(p.data)
        else:
            if not s or key not in s:
                raise RuntimeError('n/a')
            s[key] = fn(s[key])
    return mut


def _negv(t):
    return torch._neg_view(-t)


def _inf(t):
    with torch.inference_mode():
        return t.clone()


OTHER = {
    'step_meta': ('step', lambda t: t.to('meta')),
    'step_f64': ('step', lambda t: t.double()),
    'step_shape1': ('step', lambda t: t.reshape(1).clone()),
    'step_nan': ('step', lambda t: torch.tensor(float('nan'))),
    'step_neg': ('step', lambda t: torch.tensor(-1.0)),
    'step_inference': ('step', _inf),
    'exp_avg_bf16': ('exp_avg', lambda t: t.bfloat16()),
    'exp_var_f64': ('exp_var', lambda t: t.double()),
    'exp_var_inference': ('exp_var', _inf),
    'exp_var_neg': ('exp_var', _negv),
    'exp_var_rg': ('exp_var', lambda t: t.clone().requires_grad_()),
    'exp_var_meta': ('exp_var', lambda t: t.to('meta')),
    'exp_avg_sq_neg': ('exp_avg_sq', _negv),
    'exp_avg_sq_inference': ('exp_avg_sq', _inf),
    'master_neg': ('master_param', _negv),
    'master_inference': ('master_param', _inf),
    'seed_bool': ('rounding_seed', lambda s: False),
    'grad_neg': ('grad', _negv),
    'grad_inference': ('grad', _inf),
    'grad_f64': ('grad', lambda t: t.double()),
    'param_neg': ('param', _negv),
    'param_inference': ('param', _inf),
}
for i in (1, 2):
    for name, (key, fn) in OTHER.items():
        cfg = ('ada_sm',) if 'exp_avg_sq' in name else ('master',) if 'master' in name else (
            ('sr',) if 'seed' in name else ('plain', 'sdt_bf16'))
        mut = _edit_other(i, key, fn)
        mut.__name__ = f'p{i}_{name}'
        case(configs=cfg, pres=(0, 2) if key in ('grad', 'param') else (2,))(mut)


# the same edits in the last group (the Python-checked groups step in order: a refusal in a later group's own
# kernel call comes after earlier groups stepped)
def _in_last_group(f):
    def mut(opt, ctx):
        ctx.target = ctx.ngroups - 1
        f(opt, ctx)
    mut.__name__ = f.__name__ + '_last'
    return mut


for f in (lr_view_of_own_exp_avg, lr_view_of_own_param, lr_view_of_own_grad, grad_scale_view_of_own_exp_avg,
          found_inf_view_of_own_grad):
    case(configs=('plain', 'ada_sm', 'ada_mixpre'), ngroups=(2, 3), pres=(0, 2))(_in_last_group(f))
