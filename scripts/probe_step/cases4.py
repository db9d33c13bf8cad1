"""Fourth case set for scripts/probe_step/harness.py: unusual but plausible user behaviour not in cases 1-3.

- the param_groups list and its dicts edited after construction (groups reordered, deleted, replaced, repeated;
  'params' as a tuple / generator / set / single tensor / dict / nested list; odd entries);
- group options of odd types (numpy scalars, 0-dim and one-element tensors, ints, bools, strings, None, Fraction,
  Decimal), deleted or unknown keys; the reference then gets the canonical value (ctx.ref_over);
- gradients changed through `.grad.data` (another dtype, device, shape, size 0), CSR, views into one flat bucket
  (DDP's gradient_as_bucket_view), misaligned views;
- params built as views of one flat buffer (FSDP1 style), misaligned, 0-dim, odd strides on size-1 dims,
  requires_grad=False with a grad, complex (complex64 / complex128 / complex32, conjugate gradients);
- step / load_state_dict / state_dict hooks; LR schedulers; closures; contexts around step (default dtype float64,
  deterministic algorithms, anomaly detection, enable_grad, inference mode then normal);
- state_dict round trips with edits, checkpoints of torch.optim.Adam / AdamW / SGD, AdaSGDF preconditioners loaded
  into each other and into SGDF, torch.save / torch.load(weights_only=True), deepcopy and pickle;
- GradScaler: several optimizers on one scaler, unscale_ then step, grad_scale / found_inf of odd dtypes;
- zero_grad(set_to_none=False) then step, on bucket-view and expanded gradients; opt.state replaced by a plain dict.
"""
import copy, decimal, fractions, io, math, pickle
from collections import defaultdict

import numpy as np
import torch
from torch import Tensor
from harness import (P, st, case, new_grads, build, snapshot, make_ref, SGDF, AdaSGDF, CONFIGS, PATH_KW, PATHS,
                     SHAPES, close, diff)

# grids (paths x groups x pre); cases with an edit in group 1 use target=1
FULL = dict(paths=PATHS, ngroups=(1, 2, 3), pres=(0, 2))
MID = dict(paths=('default', 'fused', 'foreach', 'single', 'mixed'), ngroups=(1, 3), pres=(0, 2))
LITE = dict(paths=('default', 'foreach', 'mixed'), ngroups=(2,), pres=(0, 2), target=1)
TINY = dict(paths=('default', 'fused', 'foreach', 'single'), ngroups=(1,), pres=(0, 2))


def add(name, fn, **kw):
    fn.__name__ = name
    case(**kw)(fn)


def _grads_like(opt, seed=5, scale=1.0):
    """Deterministic new grads (the same for the optimizer and its reference, whose params come in the same order)."""
    torch.manual_seed(seed)
    new_grads(opt, scale)


# ================================================================== A. the param_groups list and its dicts
def _keep(ctx, gi, params):
    ctx.param_lists = getattr(ctx, 'param_lists', {})
    ctx.param_lists[gi] = list(params)


def groups_reversed(opt, ctx):
    opt.param_groups.reverse()


def groups_rotated(opt, ctx):
    opt.param_groups.append(opt.param_groups.pop(0))


def group_deleted_first(opt, ctx):
    del opt.param_groups[0]


def group_deleted_last(opt, ctx):
    opt.param_groups.pop()


def group_deleted_all(opt, ctx):
    opt.param_groups.clear()


def group_copied_dict(opt, ctx):
    opt.param_groups[ctx.target] = dict(opt.param_groups[ctx.target])


def group_deepcopied_dict(opt, ctx):  # new param tensors: the old ones' state is stale, the new ones have none
    opt.param_groups[ctx.target] = copy.deepcopy(opt.param_groups[ctx.target])


def group_replaced_minimal(opt, ctx):
    g = opt.param_groups[ctx.target]
    opt.param_groups[ctx.target] = {'params': g['params'], 'lr': g['lr']}


def group_replaced_by_list(opt, ctx):
    opt.param_groups[ctx.target] = list(opt.param_groups[ctx.target]['params'])


def group_replaced_by_none(opt, ctx):
    opt.param_groups[ctx.target] = None


def group_replaced_by_tensor(opt, ctx):
    opt.param_groups[ctx.target] = opt.param_groups[ctx.target]['params'][0]


def group_appended_twice(opt, ctx):
    opt.param_groups.append(opt.param_groups[ctx.target])


def group_params_list_shared(opt, ctx):  # two groups hold the same list object
    opt.param_groups[-1]['params'] = opt.param_groups[0]['params']


def group_appended_copy_new_params(opt, ctx):  # a group of fresh tensors appended by hand (not add_param_group)
    g = dict(opt.param_groups[ctx.target])
    ps = [torch.randn(3, 2, dtype=P(opt, 0, 0).dtype).requires_grad_() for _ in range(2)]
    for p in ps:
        p.grad = torch.randn_like(p)
    g['params'] = ps
    opt.param_groups.append(g)


def params_tuple(opt, ctx):
    g = opt.param_groups[ctx.target]
    g['params'] = tuple(g['params'])


def params_generator(opt, ctx):
    g = opt.param_groups[ctx.target]
    _keep(ctx, ctx.target, g['params'])
    g['params'] = (p for p in list(g['params']))


def params_set(opt, ctx):
    g = opt.param_groups[ctx.target]
    _keep(ctx, ctx.target, g['params'])
    g['params'] = set(g['params'])


def params_single_tensor(opt, ctx):
    g = opt.param_groups[ctx.target]
    _keep(ctx, ctx.target, g['params'][:1])
    g['params'] = g['params'][0]


def params_dict_named(opt, ctx):
    g = opt.param_groups[ctx.target]
    _keep(ctx, ctx.target, g['params'])
    g['params'] = {f'w{i}': p for i, p in enumerate(g['params'])}


def params_named_pairs(opt, ctx):
    g = opt.param_groups[ctx.target]
    g['params'] = [(f'w{i}', p) for i, p in enumerate(g['params'])]


def params_nested_list(opt, ctx):
    g = opt.param_groups[ctx.target]
    g['params'] = [g['params']]


def params_none(opt, ctx):
    opt.param_groups[ctx.target]['params'] = None


def params_key_deleted(opt, ctx):
    del opt.param_groups[ctx.target]['params']


def _append(make):
    def mut(opt, ctx):
        opt.param_groups[ctx.target]['params'].append(make(opt, ctx))
    return mut


APPENDED = {
    'none': lambda o, c: None,
    'str': lambda o, c: 'weight',
    'int': lambda o, c: 3,
    'ndarray': lambda o, c: np.zeros(3, dtype=np.float32),
    'module': lambda o, c: torch.nn.Linear(2, 2),
    'int_tensor': lambda o, c: torch.zeros(3, dtype=torch.int64),
    'nonleaf': lambda o, c: (torch.randn(3, requires_grad=True) * 2),
    'no_grad_tensor': lambda o, c: torch.randn(3, dtype=P(o, 0, 0).dtype),
}

for f in (groups_reversed, groups_rotated, group_deleted_first, group_deleted_last, group_params_list_shared):
    case(configs=('plain', 'ada_mixpre'), paths=PATHS, ngroups=(2, 3), pres=(0, 2))(f)
case(configs=('plain',), paths=('default', 'fused', 'foreach', 'single'), ngroups=(1, 2), pres=(0, 2))(
    group_deleted_all)
for f in (group_copied_dict, group_deepcopied_dict, group_replaced_minimal, group_replaced_by_list,
          group_replaced_by_none, group_replaced_by_tensor, group_appended_twice, group_appended_copy_new_params,
          params_tuple, params_generator, params_set, params_single_tensor, params_dict_named, params_named_pairs,
          params_nested_list, params_none, params_key_deleted):
    case(configs=('plain',), **MID)(f)
for name, make in APPENDED.items():
    add(f'param_appended_{name}', _append(make), configs=('plain',), **LITE)


# ================================================================== B. group options of odd types
class _Float:  # a float-like object (__float__ only)
    def __float__(self):
        return 0.02


GROUP_VALUES = {  # name: (key, value or callable, the canonical value for the reference or None: must refuse)
    'lr_np64': ('lr', lambda: np.float64(0.02), 0.02),
    'lr_np16': ('lr', lambda: np.float16(0.0625), 0.0625),
    'lr_np_longdouble': ('lr', lambda: np.longdouble(0.02), 0.02),
    'lr_np_int': ('lr', lambda: np.int64(0), 0.0),
    'lr_int1': ('lr', 1, 1.0),
    'lr_int0': ('lr', 0, 0.0),
    'lr_neg_zero': ('lr', -0.0, 0.0),
    'lr_fraction': ('lr', lambda: fractions.Fraction(1, 50), 0.02),
    'lr_bool': ('lr', True, None),
    'lr_str': ('lr', '0.01', None),
    'lr_none': ('lr', None, None),
    'lr_decimal': ('lr', lambda: decimal.Decimal('0.02'), None),
    'lr_float_like': ('lr', lambda: _Float(), None),
    'lr_np_array0d': ('lr', lambda: np.array(0.02), None),
    'lr_nan': ('lr', math.nan, None),
    'lr_inf': ('lr', math.inf, None),
    'lr_huge_int': ('lr', 2 ** 200, None),
    'lr_int_tensor': ('lr', lambda: torch.tensor([1]), None),
    'lr_bool_tensor': ('lr', lambda: torch.tensor(True), None),
    'lr_complex_tensor': ('lr', lambda: torch.tensor(0.02 + 0j), None),
    'lr_f16_tensor': ('lr', lambda: torch.tensor(0.0625, dtype=torch.float16), 0.0625),
    'lr_tensor_111': ('lr', lambda: torch.tensor([[[0.02]]]), 0.02),
    'lr_tensor_2': ('lr', lambda: torch.tensor([0.01, 0.02]), None),
    'lr_tensor_empty': ('lr', lambda: torch.tensor([]), None),
    'lr_tensor_sparse': ('lr', lambda: torch.tensor([0.02]).to_sparse(), None),
    'lr_tensor_nan': ('lr', lambda: torch.tensor(math.nan), None),
    'lr_tensor_neg': ('lr', lambda: torch.tensor(-0.01), None),
    'lr_parameter': ('lr', lambda: torch.nn.Parameter(torch.tensor(0.02)), 0.02),
    'lr_tensor_strided': ('lr', lambda: torch.tensor([0.5, 0.02, 0.7])[1:2], 0.02),
    'betas_tensor2': ('betas', lambda: torch.tensor([0.8, 0.95]), None),
    'betas_list': ('betas', lambda: [0.8, 0.95], (0.8, 0.95)),
    'betas_np_array': ('betas', lambda: np.array([0.8, 0.95]), None),
    'betas_np32': ('betas', lambda: (np.float32(0.8), np.float32(0.95)), (float(np.float32(0.8)),
                                                                          float(np.float32(0.95)))),
    'betas_triple': ('betas', (0.9, 0.99, 0.999), None),
    'betas_one': ('betas', (0.9,), None),
    'betas_none': ('betas', None, None),
    'betas_str': ('betas', '0.9,0.99', None),
    'betas_b1_one': ('betas', (1.0, 0.99), None),
    'betas_b2_neg': ('betas', (0.9, -0.1), None),
    'betas_bool': ('betas', (0.9, True), None),
    'betas_zero': ('betas', (0.0, 0.0), (0.0, 0.0)),
    'betas_int0': ('betas', (0, 0), (0.0, 0.0)),
    'eps_np32': ('eps', lambda: np.float32(1e-6), float(np.float32(1e-6))),
    'eps_tensor': ('eps', lambda: torch.tensor(1e-6), None),
    'eps_none': ('eps', None, None),
    'eps_neg': ('eps', -1e-8, None),
    'eps_str': ('eps', '1e-8', None),
    'eps_zero': ('eps', 0.0, 0.0),
    'eps_huge': ('eps', 1e300, 1e300),
    'gamma_np': ('gamma', lambda: np.float64(0.75), 0.75),
    'gamma_int2': ('gamma', 2, 2.0),
    'gamma_zero': ('gamma', 0, None),
    'gamma_tensor': ('gamma', lambda: torch.tensor(0.5), None),
    'gamma_inf': ('gamma', math.inf, None),
    'wd_np32': ('weight_decay', lambda: np.float32(0.25), 0.25),
    'wd_tensor': ('weight_decay', lambda: torch.tensor(0.01), None),
    'wd_neg': ('weight_decay', -0.1, None),
    'wd_none': ('weight_decay', None, None),
    'wd_int1': ('weight_decay', 1, 1.0),
    'maximize_npbool': ('maximize', lambda: np.bool_(True), None),
    'maximize_int1': ('maximize', 1, None),
    'maximize_none': ('maximize', None, None),
    'maximize_tensor': ('maximize', lambda: torch.tensor(True), None),
    'sign_str': ('sign', 'yes', None),
    'decoupled_int0': ('decoupled_weight_decay', 0, None),
    'foreach_int1': ('foreach', 1, None),
    'foreach_str': ('foreach', 'True', None),
    'fused_npbool': ('fused', lambda: np.bool_(True), None),
    'capturable_none': ('capturable', None, None),
    'state_dtype_str': ('state_dtype', 'bfloat16', None),
    'state_dtype_int8': ('state_dtype', torch.int8, None),
    'state_dtype_c64': ('state_dtype', torch.complex64, None),
    'state_dtype_f8': ('state_dtype', torch.float8_e4m3fn, None),
    'ns_steps_np': ('ns_steps', lambda: np.int64(5), None),
    'ns_steps_float': ('ns_steps', 5.0, None),
    'ns_steps_none': ('ns_steps', None, None),
    'ns_steps_neg_off': ('ns_steps', -3, -3),  # (orthogonalize off: unused)
    'differentiable_none': ('differentiable', None, None),
    'differentiable_true': ('differentiable', True, None),
    'sr_int': ('stochastic_rounding', 1, None),
    'master_str': ('master_weights', 'no', None),
}


def _group_value(key, value, canon, xpath=False):
    """`xpath`: the reference steps every group on the single-tensor path (a value one path misreads shows)."""
    def mut(opt, ctx):
        v = value() if callable(value) else value
        opt.param_groups[ctx.target][key] = v
        ctx.ref_over = {gi: {'foreach': False, 'fused': None} for gi in range(ctx.ngroups)} if xpath else {}
        if canon is not None:
            ctx.ref_over.setdefault(ctx.target, {})[key] = canon
    return mut


for name, (key, value, canon) in GROUP_VALUES.items():
    add(f'gv_{name}', _group_value(key, value, canon), configs=('plain',), **LITE)
for name in ('lr_np64', 'lr_f16_tensor', 'lr_tensor_111', 'betas_np32', 'eps_np32', 'wd_np32', 'lr_fraction'):
    key, value, canon = GROUP_VALUES[name]
    add(f'gv_{name}', _group_value(key, value, canon), configs=('ada_sm', 'sr', 'master'), paths=('default', 'foreach'),
        ngroups=(2,), pres=(2,), target=1)

EDGE_VALUES = {  # valid values at the edges of float32, stepped on every path against the single-tensor path
    'eps_f32_overflow': ('eps', 1e39, 1e39),
    'eps_huge': ('eps', 1e300, 1e300),
    'eps_denormal': ('eps', 1e-45, 1e-45),
    'gamma_huge': ('gamma', 1e39, 1e39),
    'gamma_tiny': ('gamma', 1e-30, 1e-30),
    'beta1_near_one': ('betas', (1 - 1e-9, 0.999), (1 - 1e-9, 0.999)),
    'beta2_near_one': ('betas', (0.9, 1 - 1e-10), (0.9, 1 - 1e-10)),
    'betas_near_one_f32': ('betas', (0.99999994, 0.99999994), (0.99999994, 0.99999994)),
    'lr_f32_max': ('lr', 3.4e38, 3.4e38),
    'wd_f32_max_decoupled': ('weight_decay', 3.4e38, 3.4e38),
    'lr_f32_tiny': ('lr', 1e-45, 1e-45),
    'lr_np16': ('lr', lambda: np.float16(0.0625), 0.0625),
    'lr_f16_tensor': ('lr', lambda: torch.tensor(0.0625, dtype=torch.float16), 0.0625),
    'lr_tensor_strided': ('lr', lambda: torch.tensor([0.5, 0.02, 0.7])[1:2], 0.02),
    'lr_fraction': ('lr', lambda: fractions.Fraction(1, 50), 0.02),
    'betas_np32': GROUP_VALUES['betas_np32'],
    'gamma_int2': ('gamma', 2, 2.0),
    'betas_int0': ('betas', (0, 0), (0.0, 0.0)),
}
for name, (key, value, canon) in EDGE_VALUES.items():
    add(f'gx_{name}', _group_value(key, value, canon, xpath=True), configs=('plain', 'ada_var'),
        paths=('default', 'fused', 'foreach', 'mixed'), ngroups=(2,), pres=(0, 2), target=1)

ADA_VALUES = {'pre_capital': ('preconditioner', 'Variance', None), 'pre_none': ('preconditioner', None, None),
              'pre_none_str': ('preconditioner', 'none', None), 'pre_int': ('preconditioner', 0, None),
              'ada_sign': ('sign', True, None), 'ada_orth': ('orthogonalize', True, None)}
for name, (key, value, canon) in ADA_VALUES.items():
    add(f'gv_{name}', _group_value(key, value, canon), configs=('ada_sm', 'ada_var'), **LITE)


def _group_key_deleted(key):
    def mut(opt, ctx):
        del opt.param_groups[ctx.target][key]
    return mut


for key in ('lr', 'betas', 'eps', 'gamma', 'weight_decay', 'maximize', 'foreach', 'fused', 'differentiable',
            'state_dtype', 'ns_steps', 'capturable', 'master_weights'):
    add(f'gk_del_{key}', _group_key_deleted(key), configs=('plain',), **LITE)
add('gk_del_preconditioner', _group_key_deleted('preconditioner'), configs=('ada_sm',), **LITE)


def _group_extra_key(key, value):
    def mut(opt, ctx):
        opt.param_groups[ctx.target][key] = value() if callable(value) else value
    return mut


for key, value in (('momentum', 0.9), ('initial_lr', 0.5), ('foo', lambda: object()), ('amsgrad', True),
                   ('param_names', lambda: ['a', 'b', 'c']), ('weight_decouple', False), ('use_sign', True)):
    add(f'gk_extra_{key}', _group_extra_key(key, value), configs=('plain',), **LITE)


# ================================================================== C. gradients
def _grad_data(make):
    def mut(opt, ctx):
        p = P(opt, ctx.target, 0)
        p.grad.data = make(p.grad.data, p)
    return mut


GRAD_DATA = {
    'f16': lambda g, p: g.to(torch.float16 if g.dtype != torch.float16 else torch.float32),
    'bf16': lambda g, p: g.to(torch.bfloat16 if g.dtype != torch.bfloat16 else torch.float32),
    'f64': lambda g, p: g.to(torch.float64 if g.dtype != torch.float64 else torch.float32),
    'int32': lambda g, p: g.to(torch.int32),
    'bool': lambda g, p: g > 0,
    'complex': lambda g, p: g.to(torch.complex64),
    'meta': lambda g, p: g.to('meta'),
    'zero_size': lambda g, p: torch.empty(0, dtype=g.dtype),
    'flattened': lambda g, p: g.reshape(-1).clone(),
    'one_more_row': lambda g, p: torch.randn(g.shape[0] + 1, *g.shape[1:], dtype=torch.float64).to(g.dtype),
    'transposed_shape': lambda g, p: g.t().contiguous() if g.dim() == 2 else g.flip(0).reshape(g.shape[::-1]),
}
for name, make in GRAD_DATA.items():
    add(f'grad_data_{name}', _grad_data(make), configs=('plain',), **MID)
for name in ('f16', 'f64', 'zero_size', 'flattened'):
    add(f'grad_data_{name}', _grad_data(GRAD_DATA[name]), configs=('ada_sm', 'master', 'scale'), **TINY)


def grad_csr(opt, ctx):
    p = P(opt, ctx.target, 0)
    p.grad = p.grad.to_sparse_csr()


def grad_coo_uncoalesced(opt, ctx):
    p = P(opt, ctx.target, 0)
    i = torch.tensor([[0, 0], [1, 1]])
    p.grad = torch.sparse_coo_tensor(i, torch.tensor([0.5, 0.25], dtype=p.dtype), p.shape)


def grads_bucket_view(opt, ctx):
    """DDP's gradient_as_bucket_view: every grad of a group a contiguous view into one flat buffer."""
    for g in opt.param_groups:
        ps = [p for p in g['params'] if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in ps])
        o = 0
        for p in ps:
            p.grad = flat[o:o + p.numel()].view(p.shape)
            o += p.numel()


def grads_bucket_view_all_groups(opt, ctx):
    ps = [p for g in opt.param_groups for p in g['params'] if p.grad is not None and p.dtype == P(opt, 0, 0).dtype]
    flat = torch.cat([p.grad.reshape(-1) for p in ps])
    o = 0
    for p in ps:
        p.grad = flat[o:o + p.numel()].view(p.shape)
        o += p.numel()


def grads_bucket_misaligned(opt, ctx):
    """Grads as views into one buffer at odd element offsets (1 element of padding before each)."""
    for g in opt.param_groups:
        ps = [p for p in g['params'] if p.grad is not None]
        flat = torch.zeros(sum(p.numel() + 1 for p in ps), dtype=ps[0].dtype)
        o = 0
        for p in ps:
            v = flat[o + 1:o + 1 + p.numel()].view(p.shape)
            v.copy_(p.grad)
            p.grad = v
            o += p.numel() + 1


def grad_channels_last_for_contiguous(opt, ctx):
    p = P(opt, ctx.target, 2)  # 4-D
    p.grad = p.grad.contiguous(memory_format=torch.channels_last)


def grad_expanded_row(opt, ctx):  # a bias-like grad broadcast from one row (stride 0 in dim 0)
    p = P(opt, ctx.target, 0)
    p.grad = p.grad[:1].clone().expand(p.shape)


def grad_requires_grad_parameter(opt, ctx):
    p = P(opt, ctx.target, 0)
    p.grad = torch.nn.Parameter(p.grad.clone())


def grad_is_own_param_data(opt, ctx):  # p.grad = p.data: the same memory as the param
    p = P(opt, ctx.target, 0)
    p.grad = p.data


def grad_zero_all(opt, ctx):
    for g in opt.param_groups:
        for p in g['params']:
            p.grad = torch.zeros_like(p)


def grad_denormal(opt, ctx):
    p = P(opt, ctx.target, 0)
    p.grad = torch.full_like(p, torch.finfo(p.dtype).tiny / 4)


def grad_huge(opt, ctx):
    p = P(opt, ctx.target, 0)
    p.grad = torch.full_like(p, torch.finfo(p.dtype).max / 2)


for f in (grad_csr, grad_coo_uncoalesced, grads_bucket_view, grads_bucket_misaligned,
          grad_channels_last_for_contiguous, grad_expanded_row, grad_requires_grad_parameter, grad_is_own_param_data,
          grad_zero_all, grad_denormal, grad_huge):
    case(configs=('plain',), **MID)(f)
for f in (grads_bucket_view, grads_bucket_misaligned, grad_zero_all, grad_expanded_row):
    case(configs=('ada_sm', 'sr', 'master', 'scale', 'sdt_bf16'), **TINY)(f)
case(configs=('plain', 'scale'), paths=PATHS, ngroups=(2, 3), pres=(0, 2))(grads_bucket_view_all_groups)


# ================================================================== D. params built up front
def _builder(make_group_params, set_grads=None, cls=None, **over):
    """A builds=True case: groups of the params make_group_params(gi, ctx) returns, on the ctx's paths."""
    def mut(ctx):
        torch.manual_seed(0)
        groups = []
        for gi, gp in enumerate(ctx.group_paths()):
            g = {'params': make_group_params(gi, ctx), 'lr': 0.01 * (gi + 1), **PATH_KW[gp]}
            if ctx.c.get('per_group_pre'):
                g['preconditioner'] = ('second_moment', 'variance', 'second_moment')[gi]
            groups.append(g)
        opt = (cls or ctx.cls)(groups, betas=(0.9, 0.99), **{**ctx.opts, **over})
        sg = set_grads or (lambda o, c: new_grads(o))
        for _ in range(ctx.pre):
            sg(opt, ctx)
            opt.step()
        sg(opt, ctx)
        return opt
    return mut


def _flat_params(gap=0, shapes=SHAPES, shared=None):
    """Leaf params that are views into one flat buffer (FSDP1's flat parameter), `gap` elements apart."""
    def make(gi, ctx):
        n = sum(math.prod(s) + gap for s in shapes) + gap
        flat = torch.randn(n, dtype=torch.float64).to(ctx.dtype)
        out, o = [], gap
        for s in shapes:
            out.append(flat[o:o + math.prod(s)].view(s).detach().requires_grad_())
            o += math.prod(s) + gap
        return out
    return make


_FLAT_ALL = {}


def _flat_across_groups(gi, ctx):
    """Every group's params views into one buffer shared by all groups."""
    key = id(ctx)
    if key not in _FLAT_ALL:
        n = ctx.ngroups * sum(math.prod(s) for s in SHAPES)
        _FLAT_ALL[key] = [torch.randn(n, dtype=torch.float64).to(ctx.dtype), 0]
    flat, o = _FLAT_ALL[key]
    out = []
    for s in SHAPES:
        out.append(flat[o:o + math.prod(s)].view(s).detach().requires_grad_())
        o += math.prod(s)
    _FLAT_ALL[key][1] = o
    return out


def _shapes(shapes, **kw):
    def make(gi, ctx):
        return [torch.randn(s, dtype=torch.float64).to(ctx.dtype).requires_grad_(**kw) for s in shapes]
    return make


def _odd_size1_strides(gi, ctx):
    ps = []
    for shape, strides in (((3, 1, 4), (4, 77, 1)), ((1, 5), (3, 1)), ((2, 1, 1, 3), (3, 9, 9, 1))):
        t = torch.empty_strided(shape, strides, dtype=ctx.dtype)
        t.copy_(torch.randn(shape, dtype=torch.float64))
        ps.append(t.requires_grad_())
    return ps


def _bucket_grads(opt, ctx):
    for g in opt.param_groups:
        ps = g['params']
        flat = torch.randn(sum(p.numel() for p in ps), dtype=torch.float64).to(ps[0].dtype)
        o = 0
        for p in ps:
            p.grad = flat[o:o + p.numel()].view(p.shape)
            o += p.numel()


def _flat_grads_into(opt, ctx):  # FSDP1: the grads views of one flat grad buffer, like the params
    _bucket_grads(opt, ctx)


BUILDS = {
    'flat_params': _builder(_flat_params()),
    'flat_params_flat_grads': _builder(_flat_params(), set_grads=_flat_grads_into),
    'flat_params_misaligned': _builder(_flat_params(gap=1)),
    'flat_params_gap3': _builder(_flat_params(gap=3)),
    'flat_params_across_groups': _builder(_flat_across_groups),
    'zero_dim_params': _builder(_shapes([(), (), (1,)])),
    'size1_dims': _builder(_shapes([(1, 1, 1, 1, 1, 1, 1, 3), (1,), (1, 1)])),
    'odd_size1_strides': _builder(_odd_size1_strides),
    'requires_grad_false_with_grad': _builder(_shapes(SHAPES, requires_grad=False)),
    'one_big_param': _builder(_shapes([(300, 301)])),
    'empty_param_in_group': _builder(_shapes([(4, 3), (0,), (5,)])),
    'empty_param_only': _builder(_shapes([(0, 3)])),
}
for name, f in BUILDS.items():
    add(f'build_{name}', f, configs=('plain',), builds=True, **MID)
for name in ('flat_params', 'flat_params_misaligned', 'zero_dim_params', 'odd_size1_strides'):
    add(f'build_{name}', BUILDS[name], configs=('ada_sm', 'master', 'sr', 'f16', 'f64'), builds=True, **TINY)


# --- a param's .data replaced after the optimizer was built
def _data(make):
    def mut(opt, ctx):
        p = P(opt, ctx.target, 0)
        with torch.no_grad():
            p.data = make(p.data)
    return mut


def _into_flat(t):  # FSDP1 (use_orig_params) re-points the params into its flat buffer, values unchanged
    flat = torch.zeros(t.numel() + 5, dtype=t.dtype)
    v = flat[3:3 + t.numel()].view(t.shape)
    v.copy_(t)
    return v


PARAM_DATA = {
    'reshaped': lambda t: t.reshape(t.shape[::-1]).clone(),
    'transposed': lambda t: t.t() if t.dim() == 2 else t.flip(0),
    'into_flat_view': _into_flat,
    'into_flat_view_misaligned': lambda t: (lambda f: f[1:1 + t.numel()].view(t.shape).copy_(t))(
        torch.zeros(t.numel() + 1, dtype=t.dtype)),
    'zero_dim': lambda t: t.reshape(-1)[0].clone(),
    'requires_grad_tensor': lambda t: t.clone().requires_grad_(),
}
for name, make in PARAM_DATA.items():
    add(f'param_data_{name}', _data(make), configs=('plain',), **MID)
for name in ('into_flat_view', 'into_flat_view_misaligned'):
    add(f'param_data_{name}', _data(PARAM_DATA[name]), configs=('ada_sm', 'master', 'sr', 'f16'), **TINY)


# --- complex parameters
def _complex(dtype, conj_grad=False, edit=None, cls=None, over=None):
    def make(gi, ctx):
        return [torch.randn(s, dtype=torch.complex128).to(dtype).requires_grad_() for s in SHAPES]

    def grads(opt, ctx):
        for g in opt.param_groups:
            for p in g['params']:
                gr = torch.randn(p.shape, dtype=torch.complex128).to(p.dtype)
                p.grad = gr.conj() if conj_grad else gr
    b = _builder(make, set_grads=grads, cls=cls, **(over or {}))

    def mut(ctx):
        opt = b(ctx)
        if edit:
            edit(opt, ctx)
        return opt
    return mut


def _cx_param_conj(opt, ctx):
    p = P(opt, ctx.target, 0)
    with torch.no_grad():
        p.data = p.data.conj()


def _cx_state_conj(opt, ctx):
    s = opt.state.get(P(opt, ctx.target, 0))
    if not s:
        raise RuntimeError('n/a')
    s['exp_avg'] = s['exp_avg'].conj()


def _cx_state_real(opt, ctx):
    p = P(opt, ctx.target, 0)
    s = opt.state.get(p)
    if not s:
        raise RuntimeError('n/a')
    s['exp_var'] = torch.view_as_real(s['exp_var']).clone()


COMPLEX = {
    'c64': _complex(torch.complex64),
    'c128': _complex(torch.complex128),
    'c32': _complex(torch.complex32),
    'c64_conj_grad': _complex(torch.complex64, conj_grad=True),
    'c64_param_conj': _complex(torch.complex64, edit=_cx_param_conj),
    'c64_state_conj': _complex(torch.complex64, edit=_cx_state_conj),
    'c64_state_as_real': _complex(torch.complex64, edit=_cx_state_real),
    'c64_ada': _complex(torch.complex64, cls=AdaSGDF),
    'c64_ada_var': _complex(torch.complex64, cls=AdaSGDF, over={'preconditioner': 'variance'}),
    'c64_wd_max': _complex(torch.complex64, over={'weight_decay': 0.1, 'maximize': True}),
    'c64_state_bf16': _complex(torch.complex64, over={'state_dtype': torch.bfloat16}),
    'c64_orth': _complex(torch.complex64, over={'orthogonalize': True}),
    'c64_conj_grad_scaled': _complex(torch.complex64, conj_grad=True, edit=lambda o, c: (
        setattr(o, 'grad_scale', torch.tensor(2.0)), setattr(o, 'found_inf', torch.tensor(0.0)))),
}
for name, f in COMPLEX.items():
    add(f'complex_{name}', f, configs=('plain',), builds=True, **MID)


# ================================================================== E. hooks
def _pre_hook(fn):
    def mut(opt, ctx):
        opt.register_step_pre_hook(lambda o, args, kwargs: (fn(o, ctx), None)[1])
        if getattr(fn, 'ref', None):
            ctx.ref_action = lambda r: (fn.ref(r), r.step())
    return mut


def _h_clip(o, ctx=None):
    torch.nn.utils.clip_grad_norm_([p for g in o.param_groups for p in g['params']], 0.1, foreach=False)


_h_clip.ref = _h_clip


def _h_raise(o, ctx):
    raise ValueError('hook refuses')


def _h_neg_grad(o, ctx):
    p = P(o, ctx.target, 0)
    p.grad = torch._neg_view(-p.grad)
    ctx.mid = snapshot(o, ctx)


def _h_delete_exp_var(o, ctx):
    s = o.state.get(P(o, ctx.target, 0))
    if s:
        s.pop('exp_var')
        ctx.mid = snapshot(o, ctx)


def _h_bad_lr(o, ctx):
    o.param_groups[ctx.target]['lr'] = -1.0
    ctx.mid = snapshot(o, ctx)


def _h_zero_grad(o, ctx=None):
    o.zero_grad()


_h_zero_grad.ref = _h_zero_grad


def _h_add_group(o, ctx):
    if getattr(o, '_probe_added', False):
        return
    o._probe_added = True
    x = torch.randn(3, 3, dtype=P(o, 0, 0).dtype).requires_grad_()
    x.grad = torch.randn_like(x)
    o.add_param_group({'params': [x], 'lr': 0.03})
    ctx.extra['x'] = x
    ctx.mid = snapshot(o, ctx)


def _h_tensor_lr(o, ctx):
    o.param_groups[ctx.target]['lr'] = torch.tensor(0.03)
    ctx.mid = snapshot(o, ctx)
    ctx.ref_over = {}


PRE_HOOKS = {'clip': _h_clip, 'raise': _h_raise, 'neg_grad': _h_neg_grad, 'delete_exp_var': _h_delete_exp_var,
             'bad_lr': _h_bad_lr, 'zero_grad': _h_zero_grad, 'add_group': _h_add_group}
for name, fn in PRE_HOOKS.items():
    add(f'hook_pre_{name}', _pre_hook(fn), configs=('plain',), **LITE)


def hook_pre_tensor_lr(opt, ctx):
    opt.register_step_pre_hook(lambda o, a, k: _h_tensor_lr(o, ctx))

    def ref_action(r):
        r.param_groups[ctx.target]['lr'] = 0.03
        r.step()
    ctx.ref_action = ref_action


def hook_global_pre_raise(opt, ctx):
    from torch.optim.optimizer import register_optimizer_step_pre_hook
    register_optimizer_step_pre_hook(lambda o, a, k: _h_raise(o, ctx))
    ctx.no_ref = 'global hook'


def hook_post_zero_grad(opt, ctx):
    opt.register_step_post_hook(lambda o, a, k: o.zero_grad())
    ctx.ref_action = lambda r: (r.step(), r.zero_grad())


def hook_post_raise(opt, ctx):
    """A post-hook that raises: the step has happened (torch's order); expected RAISE_DIRTY, noted as by design."""
    opt.register_step_post_hook(lambda o, a, k: _h_raise(o, ctx))


def hook_pre_returns_args(opt, ctx):
    # a pre-hook may return new (args, kwargs): here a closure
    opt.register_step_pre_hook(lambda o, a, k: ((a[0], lambda: torch.tensor(2.0)), {}))  # (a[0]: the optimizer)
    ctx.ref_action = lambda r: r.step()


for f in (hook_pre_tensor_lr, hook_global_pre_raise, hook_post_zero_grad, hook_pre_returns_args):
    case(configs=('plain',), **LITE)(f)
case(configs=('plain',), paths=('default', 'foreach'), ngroups=(1,), pres=(0, 2))(hook_post_raise)


def _sd_hook_case(register):
    def mut(opt, ctx):
        sd = copy.deepcopy(opt.state_dict())
        register(opt, ctx)

        def action(o):
            o.load_state_dict(sd)
            ctx.mid = snapshot(o, ctx)
            ctx.late_ref = make_ref(o, ctx)
            o.step()
        ctx.action = action
        ctx.second_action = lambda o: o.step()
        ctx.no_ref = 'load'
    return mut


def _reg_load_pre_raise(o, ctx):
    o.register_load_state_dict_pre_hook(lambda opt, sd: _h_raise(opt, ctx))


def _reg_load_pre_modify(o, ctx):  # returns a new dict with another lr
    def hook(opt, sd):
        sd = dict(sd)
        sd['param_groups'] = [dict(g, lr=0.005) for g in sd['param_groups']]
        return sd
    o.register_load_state_dict_pre_hook(hook)


def _reg_load_pre_bad(o, ctx):  # returns a dict whose state is broken
    def hook(opt, sd):
        sd = copy.deepcopy(sd)
        for s in sd['state'].values():
            s.pop('exp_var', None)
        sd['param_groups'][0]['betas'] = (2.0, 0.5)
        return sd
    o.register_load_state_dict_pre_hook(hook)


def _reg_load_pre_edits_opt(o, ctx):  # edits the optimizer's own groups (replaced by the load)
    def hook(opt, sd):
        opt.param_groups[0]['lr'] = 'bad'
    o.register_load_state_dict_pre_hook(hook)


def _reg_load_post_raise(o, ctx):
    o.register_load_state_dict_post_hook(lambda opt: _h_raise(opt, ctx))


def _reg_sd_post_edit(o, ctx):  # a state_dict post-hook that changes what state_dict() returns
    def hook(opt, sd):
        sd['param_groups'][0]['lr'] = 0.004
        return sd
    o.register_state_dict_post_hook(hook)


LOAD_HOOKS = {'pre_raise': _reg_load_pre_raise, 'pre_modify': _reg_load_pre_modify, 'pre_bad': _reg_load_pre_bad,
              'pre_edits_opt': _reg_load_pre_edits_opt, 'post_raise': _reg_load_post_raise}
for name, reg in LOAD_HOOKS.items():
    add(f'hook_load_{name}', _sd_hook_case(reg), configs=('plain', 'ada_sm'), paths=('default', 'foreach', 'mixed'),
        ngroups=(2,), pres=(0, 2))


def hook_state_dict_post_edit(opt, ctx):
    _reg_sd_post_edit(opt, ctx)
    sd = opt.state_dict()

    def action(o):
        o.load_state_dict(sd)
        ctx.late_ref = make_ref(o, ctx)
        o.step()
    ctx.action = action
    ctx.no_ref = 'load'


case(configs=('plain',), **LITE)(hook_state_dict_post_edit)


# ================================================================== F. LR schedulers
def _sched(make, steps=2):
    def mut(opt, ctx):
        def run(o):
            s = make(o)
            for k in range(steps):
                _grads_like(o, 10 + k)
                o.step()
                s.step() if not isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) else s.step(1.0)
            o.step()
        ctx.action = ctx.ref_action = run
        ctx.post_check = lambda o, r: [k for gi, (a, b) in enumerate(zip(o.param_groups, r.param_groups))
                                       for k in ('lr', 'betas') if close(torch.as_tensor(a[k], dtype=torch.float64),
                                                                         torch.as_tensor(b[k], dtype=torch.float64))
                                       > 1e-6 * float(torch.as_tensor(b[k], dtype=torch.float64).abs().max())]
    # (1e-6 relative: a tensor lr is float32, the reference's lr a float)
    return mut


SCHEDS = {
    'onecycle': lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=10),
    'onecycle_no_momentum': lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=10,
                                                                          cycle_momentum=False),
    'cyclic': lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.001, 0.05, step_size_up=2),
    'step': lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5),
    'cosine': lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 4),
    'plateau': lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0),
    'linear_warmup': lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=3),
}
for name, make in SCHEDS.items():
    add(f'sched_{name}', _sched(make), configs=('plain', 'tlr'), paths=('default', 'fused', 'foreach', 'mixed'),
        ngroups=(2,), pres=(0, 2))


# ================================================================== G. closures and contexts around step
def _ctx_action(cm):
    def mut(opt, ctx):
        def action(o):
            with cm():
                o.step()
        ctx.action = action
        ctx.ref_action = lambda r: r.step()
    return mut


class _default_dtype:
    def __init__(self, dt):
        self.dt = dt

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(self.dt)

    def __exit__(self, *a):
        torch.set_default_dtype(self.old)


class _deterministic:
    def __enter__(self):
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = True

    def __exit__(self, *a):
        torch.use_deterministic_algorithms(False)


CONTEXTS = {
    'default_f64': lambda: _default_dtype(torch.float64),
    'default_f16': lambda: _default_dtype(torch.float16),
    'deterministic': _deterministic,
    'anomaly': lambda: torch.autograd.detect_anomaly(),
    'enable_grad': torch.enable_grad,
    'default_device_meta': lambda: torch.device('meta'),
    'autocast_cpu_bf16': lambda: torch.autocast('cpu', dtype=torch.bfloat16),
}
for name, cm in CONTEXTS.items():
    add(f'ctx_{name}', _ctx_action(cm), configs=('plain', 'ada_sm', 'sr', 'master'),
        paths=('default', 'fused', 'foreach', 'single', 'mixed'), ngroups=(2,), pres=(0, 2))


def ctx_inference_then_normal(opt, ctx):
    """First step inside inference_mode (state created there), the next one outside."""
    def action(o):
        with torch.inference_mode():
            o.step()
        ctx.mid = snapshot(o, ctx)
        _grads_like(o, 7)
        o.step()

    def ref_action(r):
        r.step()
        _grads_like(r, 7)
        r.step()
    ctx.action, ctx.ref_action = action, ref_action
    ctx.second_action = lambda o: o.step()


def ctx_no_grad_then_normal(opt, ctx):
    def action(o):
        with torch.no_grad():
            o.step()
        _grads_like(o, 7)
        o.step()

    def ref_action(r):
        r.step()
        _grads_like(r, 7)
        r.step()
    ctx.action, ctx.ref_action = action, ref_action


def closure_raises(opt, ctx):
    def action(o):
        o.step(lambda: (_ for _ in ()).throw(ValueError('loss is nan')))
    ctx.action = action


def _set_grads_closure(o):
    def closure():
        for gi, g in enumerate(o.param_groups):
            for i, p in enumerate(g['params']):
                p.grad = torch.full_like(p, 0.25 * (i + 1) - 0.1 * gi)
        return torch.tensor(1.0)
    return closure


def closure_sets_grads(opt, ctx):
    ctx.action = ctx.ref_action = lambda o: o.step(_set_grads_closure(o))


def closure_backward(opt, ctx):
    """The usual LBFGS-style closure: zero_grad, a loss of the params, backward."""
    def closure_for(o):
        def closure():
            o.zero_grad()
            loss = sum((p.float() ** 2).sum() * (i + 1) for g in o.param_groups for i, p in enumerate(g['params']))
            loss.backward()
            return loss
        return closure
    ctx.action = ctx.ref_action = lambda o: o.step(closure_for(o))


def closure_sets_bad_grad(opt, ctx):
    def action(o):
        def closure():
            p = P(o, ctx.target, 0)
            p.grad = torch._neg_view(-p.grad)
            ctx.mid = snapshot(o, ctx)
        o.step(closure)
    ctx.action = action


def step_with_loss_as_closure(opt, ctx):  # opt.step(loss): a tensor where a closure belongs
    ctx.action = lambda o: o.step(torch.tensor(1.0))


def step_with_int_arg(opt, ctx):
    ctx.action = lambda o: o.step(0)


for f in (ctx_inference_then_normal, ctx_no_grad_then_normal, closure_raises, closure_sets_grads, closure_backward,
          closure_sets_bad_grad, step_with_loss_as_closure, step_with_int_arg):
    case(configs=('plain', 'ada_sm'), paths=('default', 'fused', 'foreach', 'single', 'mixed'), ngroups=(2,),
         pres=(0, 2))(f)


# ================================================================== H. zero_grad
def zero_grad_keep_then_step(opt, ctx):
    ctx.action = ctx.ref_action = lambda o: (o.zero_grad(set_to_none=False), o.step())


def zero_grad_none_then_step(opt, ctx):
    ctx.action = ctx.ref_action = lambda o: (o.zero_grad(), o.step())


def zero_grad_keep_bucket_views(opt, ctx):
    grads_bucket_view(opt, ctx)
    ctx.action = lambda o: (o.zero_grad(set_to_none=False), o.step())
    ctx.ref_action = lambda r: (r.zero_grad(set_to_none=False), r.step())


def zero_grad_keep_expanded(opt, ctx):
    grad_expanded_row(opt, ctx)
    ctx.action = lambda o: (o.zero_grad(set_to_none=False), o.step())
    ctx.ref_action = lambda r: (r.zero_grad(set_to_none=False), r.step())


def zero_grad_keep_grad_rg(opt, ctx):  # a grad with requires_grad / a graph (create_graph=True backward)
    p = P(opt, ctx.target, 0)
    x = torch.randn(p.shape, dtype=p.dtype, requires_grad=True)
    p.grad = x * 2
    ctx.action = lambda o: (o.zero_grad(set_to_none=False), o.step())
    ctx.ref_action = lambda r: (r.zero_grad(set_to_none=False), r.step())


def zero_grad_keep_generator_params(opt, ctx):
    params_generator(opt, ctx)
    ctx.action = lambda o: (o.zero_grad(set_to_none=False), o.step())
    ctx.ref_action = lambda r: (r.zero_grad(set_to_none=False), r.step())


for f in (zero_grad_keep_then_step, zero_grad_none_then_step, zero_grad_keep_bucket_views, zero_grad_keep_expanded,
          zero_grad_keep_grad_rg, zero_grad_keep_generator_params):
    case(configs=('plain', 'ada_sm'), paths=('default', 'fused', 'foreach', 'single', 'mixed'), ngroups=(2,),
         pres=(0, 2))(f)


# ================================================================== I. opt.state replaced
def state_plain_dict(opt, ctx):
    opt.state = dict(opt.state)


def state_emptied_plain(opt, ctx):
    opt.state = {}


def state_plain_dict_then_new_group(opt, ctx):
    opt.state = dict(opt.state)
    x = torch.randn(3, 3, dtype=P(opt, 0, 0).dtype).requires_grad_()
    x.grad = torch.randn_like(x)
    opt.add_param_group({'params': [x], 'lr': 0.03})


def state_plain_dict_new_param_last_group(opt, ctx):
    opt.state = dict(opt.state)
    g = opt.param_groups[-1]
    x = torch.randn(3, 3, dtype=g['params'][0].dtype).requires_grad_()
    x.grad = torch.randn_like(x)
    g['params'].append(x)


def state_keyed_by_other_tensor(opt, ctx):  # state moved to a clone of the param (e.g. after model.to())
    p = P(opt, ctx.target, 0)
    s = opt.state.pop(p, None)
    if s is None:
        raise RuntimeError('n/a')
    opt.state[p.detach().clone()] = s


for f in (state_plain_dict, state_emptied_plain, state_plain_dict_then_new_group,
          state_plain_dict_new_param_last_group, state_keyed_by_other_tensor):
    case(configs=('plain',), paths=PATHS, ngroups=(1, 2, 3), pres=(0, 2))(f)


# ================================================================== J. state_dict round trips
def _load(edit=None, source=None, then=None):
    """state_dict() -> (source: another optimizer's) -> deep copy -> edit -> load_state_dict -> step."""
    def mut(opt, ctx):
        sd = source(opt, ctx) if source else opt.state_dict()
        sd = copy.deepcopy(sd)
        if edit:
            edit(sd, ctx)

        def action(o):
            o.load_state_dict(sd)
            ctx.mid = snapshot(o, ctx)
            if then:
                then(o, sd, ctx)
                ctx.mid = snapshot(o, ctx)
            ctx.late_ref = make_ref(o, ctx)
            o.step()
        ctx.action = action
        ctx.second_action = lambda o: o.step()
        ctx.no_ref = 'load'
    return mut


def _each_state(fn):
    def edit(sd, ctx):
        if not sd['state']:
            raise RuntimeError('n/a (no state)')
        for k in list(sd['state']):
            fn(sd['state'], k)
    return edit


def _first_state(fn):
    def edit(sd, ctx):
        if not sd['state']:
            raise RuntimeError('n/a (no state)')
        k = sorted(sd['state'])[0]
        fn(sd['state'], k)
    return edit


def _entry(key, make):
    return _first_state(lambda s, k: s[k].__setitem__(key, make(s[k][key])))


SD_EDITS = {
    'keys_str': lambda sd, c: sd.__setitem__('state', {str(k): v for k, v in sd['state'].items()}),
    'key_out_of_range': lambda sd, c: sd['state'].__setitem__(99, copy.deepcopy(next(iter(sd['state'].values()),
                                                                                     {}))),
    'key_negative': lambda sd, c: sd.__setitem__('state', {(-1 if k == 0 else k): v
                                                           for k, v in sd['state'].items()}),
    'key_tensor': lambda sd, c: sd.__setitem__('state', {torch.tensor(k): v for k, v in sd['state'].items()}),
    'state_list': lambda sd, c: sd.__setitem__('state', list(sd['state'].values())),
    'state_none': lambda sd, c: sd.__setitem__('state', None),
    'param_groups_tuple': lambda sd, c: sd.__setitem__('param_groups', tuple(sd['param_groups'])),
    'param_groups_dict': lambda sd, c: sd.__setitem__('param_groups', dict(enumerate(sd['param_groups']))),
    'group_params_dup_ids': lambda sd, c: sd['param_groups'][0].__setitem__('params', [
        sd['param_groups'][0]['params'][0]] * len(sd['param_groups'][0]['params'])),
    'group_params_swapped': lambda sd, c: sd['param_groups'][0].__setitem__('params',
                                                                            sd['param_groups'][0]['params'][::-1]),
    'groups_swapped': lambda sd, c: sd.__setitem__('param_groups', sd['param_groups'][::-1]),
    'renamed_exp_var': _each_state(lambda s, k: s[k].__setitem__('exp_variance', s[k].pop('exp_var'))),
    'renamed_to_momentum_buffer': _each_state(lambda s, k: s[k].__setitem__('momentum_buffer', s[k].pop('exp_avg'))),
    'extra_state_key': _each_state(lambda s, k: s[k].__setitem__('foo', torch.zeros(2))),
    'group_lr_changed': lambda sd, c: [g.__setitem__('lr', 0.05) for g in sd['param_groups']],
    'group_lr_tensor': lambda sd, c: [g.__setitem__('lr', torch.tensor(0.05)) for g in sd['param_groups']],
    'group_lr_np': lambda sd, c: [g.__setitem__('lr', np.float64(0.05)) for g in sd['param_groups']],
    'group_betas_invalid': lambda sd, c: sd['param_groups'][-1].__setitem__('betas', (1.5, 0.9)),
    'group_betas_list': lambda sd, c: [g.__setitem__('betas', list(g['betas'])) for g in sd['param_groups']],
    'group_extra_key': lambda sd, c: [g.__setitem__('foo', 1) for g in sd['param_groups']],
    'group_missing_gamma': lambda sd, c: sd['param_groups'][-1].pop('gamma'),
    'group_state_dtype_str': lambda sd, c: [g.__setitem__('state_dtype', str(g['state_dtype']))
                                            for g in sd['param_groups']],
    'group_fused_flipped': lambda sd, c: [g.update(fused=not g['fused'], foreach=None) for g in sd['param_groups']],
    'group_release_keys': lambda sd, c: [g.update(weight_decouple=g.pop('decoupled_weight_decay'),
                                                  use_sign=g.pop('sign'), use_muon=g.pop('orthogonalize'))
                                         for g in sd['param_groups']],
    'group_not_dict': lambda sd, c: sd['param_groups'].__setitem__(0, list(sd['param_groups'][0]['params'])),
    'group_params_missing': lambda sd, c: sd['param_groups'][0].pop('params'),
    'top_extra_key': lambda sd, c: sd.__setitem__('foo', 1),
    'state_meta': _entry('exp_avg', lambda t: t.to('meta')),
    'state_f16': _entry('exp_avg', lambda t: t.half()),
    'state_f64': _entry('exp_var', lambda t: t.double()),
    'state_complex': _entry('exp_avg', lambda t: t.to(torch.complex64)),
    'state_int': _entry('exp_avg', lambda t: t.to(torch.int64)),
    'state_bool': _entry('exp_var', lambda t: t > 0),
    'state_numpy': _entry('exp_avg', lambda t: t.float().numpy()),
    'state_list_values': _entry('exp_avg', lambda t: t.tolist()),
    'state_transposed': _entry('exp_avg', lambda t: t.t().contiguous().t() if t.dim() == 2 else t.flip(0)),
    'state_expanded': _entry('exp_avg', lambda t: t.reshape(-1)[:1].expand(t.shape)),
    'state_requires_grad': _entry('exp_avg', lambda t: t.clone().requires_grad_()),
    'state_inference': _entry('exp_avg', lambda t: _inf(t)),
    'state_neg': _entry('exp_var', lambda t: torch._neg_view(-t)),
    'state_sparse': _entry('exp_avg', lambda t: t.to_sparse()),
    'state_shape_wrong': _entry('exp_avg', lambda t: t.reshape(-1)),
    'state_exp_var_negative': _entry('exp_var', lambda t: -t - 1),
    'state_nan': _entry('exp_avg', lambda t: torch.full_like(t, math.nan)),
    'step_np_int64': _entry('step', lambda t: np.int64(float(t))),
    'step_np_float64': _entry('step', lambda t: np.float64(float(t))),
    'step_np_f32': _entry('step', lambda t: np.float32(float(t))),
    'step_bool_tensor': _entry('step', lambda t: torch.tensor(True)),
    'step_int_tensor': _entry('step', lambda t: t.to(torch.int32)),
    'step_neg': _entry('step', lambda t: torch.tensor(-1.0)),
    'step_nan': _entry('step', lambda t: torch.tensor(math.nan)),
    'step_huge': _entry('step', lambda t: torch.tensor(1e30)),
    'step_fraction': _entry('step', lambda t: 2.5),
    'step_str': _entry('step', lambda t: '2'),
    'step_shape2': _entry('step', lambda t: torch.tensor([1.0, 2.0])),
    'step_missing': _first_state(lambda s, k: s[k].pop('step')),
    'state_empty_dict': _first_state(lambda s, k: s.__setitem__(k, {})),
    'state_entry_none': _entry('exp_avg', lambda t: None),
    'state_not_dict': _first_state(lambda s, k: s.__setitem__(k, [1, 2])),
}


def _inf(t):
    with torch.inference_mode():
        return t.clone()


for name, edit in SD_EDITS.items():
    add(f'sd_{name}', _load(edit), configs=('plain',), paths=('default', 'foreach', 'mixed'), ngroups=(2,),
        pres=(0, 2) if not name.startswith(('state', 'step', 'renamed', 'extra')) else (2,))
for name in ('state_f16', 'state_transposed', 'step_np_int64', 'renamed_exp_var', 'keys_str', 'group_lr_tensor'):
    add(f'sd_{name}', _load(SD_EDITS[name]), configs=('ada_sm', 'sr', 'master'), paths=('default', 'foreach'),
        ngroups=(1,), pres=(2,))
SEED_SD = {'seed_str': _entry('rounding_seed', lambda s: str(s)), 'seed_float': _entry('rounding_seed', float),
           'seed_np': _entry('rounding_seed', lambda s: np.int64(s)), 'seed_missing': _first_state(
               lambda s, k: s[k].pop('rounding_seed')), 'seed_tensor': _entry('rounding_seed', torch.tensor)}
for name, edit in SEED_SD.items():
    add(f'sd_{name}', _load(edit), configs=('sr',), paths=('default', 'foreach', 'single'), ngroups=(1,), pres=(2,))
MASTER_SD = {'master_f16': _entry('master_param', lambda t: t.half()),
             'master_missing': _first_state(lambda s, k: s[k].pop('master_param')),
             'master_shape': _entry('master_param', lambda t: t.reshape(-1)),
             'master_int': _entry('master_param', lambda t: t.long())}
for name, edit in MASTER_SD.items():
    add(f'sd_{name}', _load(edit), configs=('master',), paths=('default', 'foreach', 'single'), ngroups=(1,),
        pres=(2,))


def _then_mutate_sd(o, sd, ctx):  # the loaded state must not alias the checkpoint's tensors
    before = snapshot(o, ctx)
    for s in sd['state'].values():
        for k, v in s.items():
            if isinstance(v, Tensor) and v.is_floating_point():
                v.fill_(math.nan)
    aliased = diff(before, snapshot(o, ctx))
    ctx.post_check = lambda o, r: [f'loaded state aliases the checkpoint: {aliased[:4]}'] if aliased else []


add('sd_mutated_after_load', _load(then=_then_mutate_sd), configs=('plain', 'ada_sm', 'master', 'sr', 'f64'),
    paths=('default', 'fused', 'foreach', 'single'), ngroups=(1, 2), pres=(2,))


def _other_opt_sd(make_other, extra_step=True):
    """A checkpoint of another optimizer over the same model (params of the same shapes, stepped once)."""
    def source(opt, ctx):
        groups = []
        for g in opt.param_groups:
            ps = [p.detach().clone().requires_grad_() for p in g['params']]
            groups.append({'params': ps})
        other = make_other(groups, ctx)
        if extra_step:
            for g in other.param_groups:
                for p in g['params']:
                    p.grad = torch.randn_like(p)
            other.step()
        return other.state_dict()
    return source


OTHERS = {
    'adam': lambda gs, c: torch.optim.Adam(gs, lr=1e-3),
    'adamw_single': lambda gs, c: torch.optim.AdamW(gs, lr=1e-3, foreach=False),
    'sgd_momentum': lambda gs, c: torch.optim.SGD(gs, lr=0.1, momentum=0.9),
    'sgd_plain': lambda gs, c: torch.optim.SGD(gs, lr=0.1),
    'ada_var_into': lambda gs, c: AdaSGDF(gs, lr=1e-3, preconditioner='variance'),
    'ada_sm_into': lambda gs, c: AdaSGDF(gs, lr=1e-3, preconditioner='second_moment'),
    'sgdf_into': lambda gs, c: SGDF(gs, lr=1e-3),
    'sgdf_sign_into': lambda gs, c: SGDF(gs, lr=1e-3, sign=True),
    'sgdf_sr_into': lambda gs, c: SGDF(gs, lr=1e-3, stochastic_rounding=True),
    'sgdf_bf16_state_into': lambda gs, c: SGDF(gs, lr=1e-3, state_dtype=torch.bfloat16),
}
for name, make in OTHERS.items():
    add(f'sd_other_{name}', _load(source=_other_opt_sd(make)), configs=('plain', 'ada_sm', 'ada_var'),
        paths=('default', 'foreach', 'mixed'), ngroups=(2,), pres=(0, 2))
add('sd_other_adam_nostate', _load(source=_other_opt_sd(OTHERS['adam'], extra_step=False)),
    configs=('plain', 'ada_sm'), paths=('default', 'foreach'), ngroups=(1,), pres=(0, 2))


def _weights_only_source(opt, ctx):
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


add('sd_weights_only_roundtrip', _load(source=_weights_only_source), configs=('plain', 'ada_sm', 'sr', 'master', 'tlr'),
    paths=('default', 'fused', 'foreach', 'single'), ngroups=(1, 2), pres=(0, 2))


def _ada_sd_into_sgdf(opt, ctx):
    """An AdaSGDF checkpoint of the same model loaded into this SGDF (its 'preconditioner' key comes along)."""
    return _other_opt_sd(lambda gs, c: AdaSGDF(gs, lr=1e-3, weight_decay=0.0))(opt, ctx)


add('sd_ada_into_sgdf_then_step2', _load(source=_ada_sd_into_sgdf,
                                         then=lambda o, sd, c: None), configs=('plain', 'sr', 'master'),
    paths=('default', 'fused', 'foreach', 'single', 'mixed'), ngroups=(2,), pres=(2,))


# ================================================================== K. copies of the optimizer
def _copy_case(make_copy):
    def mut(opt, ctx):
        def action(o):
            c = make_copy(o)
            for g, h in zip(o.param_groups, c.param_groups):  # (pickling a tensor drops its .grad)
                for p, q in zip(g['params'], h['params']):
                    if q.grad is None and p.grad is not None:
                        q.grad = p.grad.clone()
            ctx.extra_copy = c
            c.step()
            o.step()

        def post_check(o, r):
            c = ctx.extra_copy
            bad = []
            for gi, (g, h) in enumerate(zip(o.param_groups, c.param_groups)):
                for i, (p, q) in enumerate(zip(g['params'], h['params'])):
                    if p is q or p.data_ptr() == q.data_ptr():
                        bad.append(f'copy shares g{gi}.p{i}')
                    elif close(p, q) > (2e-2 if p.element_size() == 2 else 1e-6) * (1 + float(p.detach().abs().max())):
                        # (16-bit params with stochastic rounding: a seed drawn at the first step differs by a spacing)
                        bad.append(f'copy g{gi}.p{i} stepped otherwise: {close(p, q):.3g}')
                    sp, sq = o.state.get(p, {}), c.state.get(q, {})
                    if set(sp) != set(sq):
                        bad.append(f'copy g{gi}.p{i} state keys {sorted(sp)} vs {sorted(sq)}')
            return bad
        ctx.action = action
        ctx.ref_action = lambda r: r.step()
        ctx.post_check = post_check
    return mut


def _pickled(o):
    return pickle.loads(pickle.dumps(o))


def _torch_saved(o):
    buf = io.BytesIO()
    torch.save(o, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


for name, mk in (('deepcopy', copy.deepcopy), ('pickle', _pickled), ('torch_save_whole', _torch_saved)):
    add(f'copy_{name}', _copy_case(mk), configs=('plain', 'ada_sm', 'sr', 'master', 'tlr'),
        paths=('default', 'fused', 'foreach', 'single', 'mixed'), ngroups=(2,), pres=(0, 2))


# ================================================================== L. GradScaler and amp scalars
def scaler_two_optimizers(opt, ctx):
    """One scaler for two optimizers: another SGDF (fused) whose grads hold an inf steps first and is skipped."""
    def action(o, inf=True, scaler=None):
        x = torch.randn(6, dtype=P(o, 0, 0).dtype).requires_grad_()
        o2 = SGDF([x], lr=0.1, fused=True)
        x.grad = torch.randn_like(x) * 1024
        if inf:
            x.grad[0] = math.inf
        sc = scaler or ctx.scaler
        sc.step(o2)
        ctx.extra['x'] = x.detach()
        sc.step(o)
        sc.update()
    ctx.action = action


def scaler_unscale_then_step(opt, ctx):
    def action(o):
        ctx.scaler.unscale_(o)
        torch.nn.utils.clip_grad_norm_([p for g in o.param_groups for p in g['params']], 1e9)
        ctx.scaler.step(o)
    ctx.action = action


def scaler_unscale_twice(opt, ctx):
    def action(o):
        ctx.scaler.unscale_(o)
        ctx.mid = snapshot(o, ctx)
        ctx.scaler.unscale_(o)
    ctx.action = action
    ctx.no_ref = 'unscale twice'


def scaler_unscale_then_step_inf(opt, ctx):
    P(opt, ctx.target, 0).grad.view(-1)[0] = math.inf
    ctx.expect_skip = True
    ctx.action = lambda o: (ctx.scaler.unscale_(o), ctx.scaler.step(o))


def scaler_step_twice_no_update(opt, ctx):
    """scaler.step(opt) twice without update(): torch refuses the second (its own message)."""
    def action(o):
        ctx.scaler.step(o)
        ctx.mid = snapshot(o, ctx)
        ctx.scaler.step(o)
    ctx.action = action
    ctx.no_ref = 'twice'


def scaler_nan_grad_all_groups(opt, ctx):
    for g in opt.param_groups:
        g['params'][0].grad.view(-1)[0] = math.nan
    ctx.expect_skip = True


def _fused_default(edit):
    """Built with fused=True as the optimizer's default on the fused path (GradScaler then hands grad_scale and
    found_inf to step(), _step_supports_amp_scaling), else as the harness builds."""
    def mut(ctx):
        opt = build(ctx, **({'fused': True} if ctx.path == 'fused' else {}))
        edit(opt, ctx)
        return opt
    mut.__name__ = edit.__name__
    return mut


def scaler_plain(opt, ctx):
    pass


def scaler_inf_one_group(opt, ctx):
    P(opt, ctx.target, 0).grad.view(-1)[0] = math.inf
    ctx.expect_skip = True


for f in (scaler_plain, scaler_inf_one_group, scaler_two_optimizers, scaler_unscale_then_step, scaler_unscale_twice,
          scaler_unscale_then_step_inf, scaler_step_twice_no_update, scaler_nan_grad_all_groups):
    case(configs=('scaler',), paths=('default', 'fused', 'foreach', 'mixed'), ngroups=(1, 2), pres=(0, 2),
         builds=True)(_fused_default(f))


def _amp_scalar(name, make, ref=None):
    def mut(opt, ctx):
        setattr(opt, name, make())
        if ref is not None:
            ctx.ref_attrs = {name: ref()}
    return mut


AMP4 = {
    'scale_f16': ('grad_scale', lambda: torch.tensor(1024.0, dtype=torch.float16), lambda: torch.tensor(1024.0)),
    'scale_bf16': ('grad_scale', lambda: torch.tensor(1024.0, dtype=torch.bfloat16), lambda: torch.tensor(1024.0)),
    'scale_int': ('grad_scale', lambda: torch.tensor(1024), None),
    'scale_111': ('grad_scale', lambda: torch.tensor([[[1024.0]]]), lambda: torch.tensor(1024.0)),
    'scale_strided': ('grad_scale', lambda: torch.tensor([1.0, 1024.0, 3.0])[1:2], lambda: torch.tensor(1024.0)),
    'scale_neg': ('grad_scale', lambda: torch.tensor(-1024.0), lambda: torch.tensor(-1024.0)),
    'scale_nan': ('grad_scale', lambda: torch.tensor(math.nan), lambda: torch.tensor(math.nan)),
    'scale_np': ('grad_scale', lambda: np.float32(1024.0), None),
    'scale_sparse': ('grad_scale', lambda: torch.tensor([1024.0]).to_sparse(), None),
    'found_bool': ('found_inf', lambda: torch.tensor(False), None),
    'found_f16': ('found_inf', lambda: torch.tensor(0.0, dtype=torch.float16), lambda: torch.tensor(0.0)),
    'found_nan': ('found_inf', lambda: torch.tensor(math.nan), lambda: torch.tensor(math.nan)),
    'found_two': ('found_inf', lambda: torch.tensor([0.0, 0.0]), None),
    'found_int': ('found_inf', lambda: torch.tensor(0), None),
    'found_py': ('found_inf', lambda: 0.0, None),
}
for name, (attr, make, ref) in AMP4.items():
    add(f'amp4_{name}', _amp_scalar(attr, make, ref), configs=('scale',),
        paths=('default', 'fused', 'foreach', 'single', 'mixed'), ngroups=(1, 2), pres=(0, 2))


# ================================================================== M. add_param_group / constructor inputs
def _add_group(make):
    def mut(opt, ctx):
        ctx.action = lambda o: o.add_param_group(make(o, ctx))
        ctx.no_ref = 'add_param_group'
    return mut


def _fresh(o, n=2, shape=(3, 2)):
    return [torch.randn(shape, dtype=P(o, 0, 0).dtype).requires_grad_() for _ in range(n)]


ADD_GROUPS = {
    'generator': lambda o, c: {'params': (p for p in _fresh(o))},
    'set': lambda o, c: {'params': set(_fresh(o))},
    'single_tensor': lambda o, c: {'params': _fresh(o, 1)[0]},
    'dict_of_params': lambda o, c: {'params': dict(enumerate(_fresh(o)))},
    'named_pairs': lambda o, c: {'params': [(f'n{i}', p) for i, p in enumerate(_fresh(o))]},
    'named_bad_tuple': lambda o, c: {'params': [(1, p) for p in _fresh(o)]},
    'nested_list': lambda o, c: {'params': [_fresh(o)]},
    'none_in_list': lambda o, c: {'params': [*_fresh(o), None]},
    'empty': lambda o, c: {'params': []},
    'repeat_existing': lambda o, c: {'params': [P(o, 0, 0)]},
    'view_of_existing': lambda o, c: {'params': [P(o, 0, 0).detach()[1:].requires_grad_()]},
    'same_twice': lambda o, c: {'params': [_fresh(o, 1)[0]] * 2},
    'overlapping_views': lambda o, c: (lambda b: {'params': [b[:4].detach().requires_grad_(),
                                                             b[2:6].detach().requires_grad_()]})(torch.randn(8)),
    'module': lambda o, c: torch.nn.Linear(2, 2),
    'list_of_groups': lambda o, c: [{'params': _fresh(o)}],
    'no_params_key': lambda o, c: {'lr': 0.1},
    'lr_str': lambda o, c: {'params': _fresh(o), 'lr': 'x'},
    'betas_tensor': lambda o, c: {'params': _fresh(o), 'betas': torch.tensor([0.9, 0.99])},
    'fused_f64_state': lambda o, c: {'params': _fresh(o), 'fused': True, 'state_dtype': torch.float64},
    'fused_and_foreach': lambda o, c: {'params': _fresh(o), 'fused': True, 'foreach': True},
    'int_param': lambda o, c: {'params': [torch.zeros(3, dtype=torch.int64)]},
    'nonleaf_param': lambda o, c: {'params': [torch.randn(3, requires_grad=True) * 2]},
    'meta_param_fused': lambda o, c: {'params': [torch.empty(3, device='meta', requires_grad=True)], 'fused': True},
    'master_f32': lambda o, c: {'params': _fresh(o), 'master_weights': True},
    'unknown_key': lambda o, c: {'params': _fresh(o), 'momentum': 0.9},
    'strided_fused': lambda o, c: {'params': [torch.randn(4, 6)[:, ::2].detach().requires_grad_()], 'fused': True},
    'expanded_param': lambda o, c: {'params': [torch.randn(1, 3).expand(4, 3).detach().requires_grad_()]},
    'preconditioner_bad': lambda o, c: {'params': _fresh(o), 'preconditioner': 'adam'},
    'params_str': lambda o, c: {'params': 'weight'},
    'params_int': lambda o, c: {'params': 3},
}
for name, make in ADD_GROUPS.items():
    add(f'addgrp_{name}', _add_group(make), configs=('plain', 'ada_sm'), paths=('default', 'mixed'),
        ngroups=(2,), pres=(2,))


def _add_group_then_step(make):
    """Groups add_param_group accepts must then step as the reference (which gets the same group as a list)."""
    def mut(opt, ctx):
        torch.manual_seed(3)
        ps = _fresh(opt, 2)
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.add_param_group(make(ps))
        ctx.param_lists = {len(opt.param_groups) - 1: ps}
        ctx.extra.update({f'x{i}': p for i, p in enumerate(ps)})
    return mut


for name, make in (('generator', lambda ps: {'params': iter(ps)}), ('single_tensor', lambda ps: {'params': ps[0]}),
                   ('named_pairs', lambda ps: {'params': [(f'n{i}', p) for i, p in enumerate(ps)]}),
                   ('tuple', lambda ps: {'params': tuple(ps)}),
                   ('unknown_key', lambda ps: {'params': ps, 'momentum': 0.9}),
                   ('lr_np', lambda ps: {'params': ps, 'lr': np.float32(0.125)}),
                   ('preconditioner_key', lambda ps: {'params': ps, 'preconditioner': 'second_moment'})):
    add(f'addgrp_step_{name}', _add_group_then_step(make), configs=('plain', 'ada_sm'),
        paths=('default', 'fused', 'foreach', 'mixed'), ngroups=(1, 2), pres=(0, 2))


def _ctor(make):
    def mut(opt, ctx):
        ctx.action = lambda o: make(o, ctx)
        ctx.no_ref = 'constructor'
    return mut


CTORS = {
    'views_within_group': lambda o, c: (lambda b: SGDF([b[:6].view(2, 3).detach().requires_grad_(),
                                                        b[3:9].view(2, 3).detach().requires_grad_()]))(torch.randn(9)),
    'views_across_groups': lambda o, c: (lambda b: SGDF([{'params': [b[:6].detach().requires_grad_()]},
                                                         {'params': [b[5:].detach().requires_grad_()]}]))(
        torch.randn(9)),
    'same_param_two_groups': lambda o, c: (lambda p: SGDF([{'params': [p]}, {'params': [p]}]))(
        torch.randn(3, requires_grad=True)),
    'empty_list': lambda o, c: SGDF([]),
    'none': lambda o, c: SGDF(None),
    'tensor_params': lambda o, c: SGDF(torch.randn(3, requires_grad=True)),
    'lr_tensor_2': lambda o, c: SGDF([torch.randn(3, requires_grad=True)], lr=torch.tensor([0.1, 0.2])),
    'betas_np_array': lambda o, c: SGDF([torch.randn(3, requires_grad=True)], betas=np.array([0.9, 0.99])),
    'ada_sign': lambda o, c: AdaSGDF([torch.randn(3, requires_grad=True)], sign=True),
    'ada_bad_pre': lambda o, c: AdaSGDF([torch.randn(3, requires_grad=True)], preconditioner='adam'),
    'fused_int': lambda o, c: SGDF([torch.randn(3, requires_grad=True)], fused=1),
    'model_parameters_twice': lambda o, c: (lambda m: SGDF([{'params': m.parameters()},
                                                            {'params': m.parameters()}]))(torch.nn.Linear(2, 2)),
}
for name, make in CTORS.items():
    add(f'ctor_{name}', _ctor(make), configs=('plain',), paths=('default',), ngroups=(1,), pres=(0,))
