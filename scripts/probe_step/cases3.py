"""Heterogeneous groups in one optimizer: dtypes, storage and update options differ per group, on the paths of
the harness (mixed: foreach, fused, single per group). Each steps `pre` times, then once more with an edit."""
import torch
from harness import P, case, new_grads, build, SGDF, AdaSGDF, PATH_KW, MIXED, MIXED2

GROUP_OPTS = [
    dict(dtype=torch.float64, opts=dict(maximize=True)),
    dict(dtype=torch.bfloat16, opts=dict(master_weights=True, weight_decay=0.1)),
    dict(dtype=torch.float32, opts=dict(state_dtype=torch.bfloat16, sign=True, lr=torch.tensor(0.02))),
    dict(dtype=torch.bfloat16, opts=dict(stochastic_rounding=True, decoupled_weight_decay=True, weight_decay=0.1)),
    dict(dtype=torch.float16, opts=dict(gamma=1.0)),
]


def _hetero(order, edit=None, cls=SGDF):
    def mut(ctx):
        torch.manual_seed(0)
        groups = []
        for gi, gp in enumerate(ctx.group_paths()):
            spec = GROUP_OPTS[order[gi % len(order)]]
            ps = [torch.randn(s, dtype=torch.float64).to(spec['dtype']).requires_grad_() for s in ((4, 3), (5,))]
            opts = dict(spec['opts'])
            if cls is AdaSGDF:
                for k in ('sign', 'gamma'):
                    opts.pop(k, None)
                opts['preconditioner'] = ('second_moment', 'variance')[gi % 2] if ctx.config == 'ada_mixpre' else \
                    'second_moment'
            groups.append({'params': ps, **opts, **PATH_KW[gp]})
        opt = cls(groups, lr=0.01, betas=(0.9, 0.99))
        for _ in range(ctx.pre):
            new_grads(opt)
            opt.step()
        new_grads(opt)
        if edit:
            edit(opt, ctx)
        return opt
    return mut


ORDERS = {'a': (0, 1, 2), 'b': (2, 3, 4), 'c': (4, 0, 3), 'd': (1, 2, 0)}


def _neg_grad_last(opt, ctx):
    p = P(opt, ctx.ngroups - 1, 1)
    p.grad = torch._neg_view(-p.grad)


def _shared_grad_first_last(opt, ctx):
    a, b = P(opt, 0, 1), P(opt, ctx.ngroups - 1, 1)
    if a.dtype == b.dtype:
        b.grad = a.grad


def _state_edit_last(opt, ctx):
    s = opt.state.get(P(opt, ctx.ngroups - 1, 0))
    if s:
        s['exp_var'] = s['exp_var'].to(torch.float64) if s['exp_var'].dtype != torch.float64 else \
            s['exp_var'].float()


EDITS = {'none': None, 'neg_grad_last': _neg_grad_last, 'shared_grad': _shared_grad_first_last,
         'state_dtype_last': _state_edit_last}
for oname, order in ORDERS.items():
    for ename, edit in EDITS.items():
        f = _hetero(order, edit)
        f.__name__ = f'hetero_{oname}_{ename}'
        case(configs=('plain',), ngroups=(2, 3), pres=(0, 2), builds=True)(f)
        if oname in 'ab':
            g = _hetero(order, edit, cls=AdaSGDF)
            g.__name__ = f'hetero_ada_{oname}_{ename}'
            case(configs=('plain', 'ada_mixpre'), ngroups=(2, 3), pres=(0, 2), builds=True)(g)
