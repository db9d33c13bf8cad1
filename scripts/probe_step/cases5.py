"""Fifth case set for scripts/probe_step/harness.py (branch wt-probe6): inputs that cases 1-4 do not try.

- direct calls of the public ops with bad arguments: torch.ops.sgdf_erd.fused_sgdf_ / fused_sgdf_grouped_ (path
  'raw') and their sgdf_erd.ops wrappers (path 'wrap'): list lengths, dtypes, shapes, layouts, memory shared between
  arguments, special tensors (sparse, meta, inference, neg / zero / subclass), scalars out of range, seeds and
  offsets, per-group lists, check_only; a few binned_gram_eigvalsh / erd_weights calls. A case states whether the
  input is invalid ('bad': it must raise; ACCEPTED_BAD otherwise) or valid ('ok' / 'any': if it steps, the result is
  compared with the same call on clean copies: contiguous, own memory, neg bits resolved);
- modules: nn.utils.parametrize'd and weight_norm'd models, tied weights, requires_grad toggled between steps,
  model-wide conversions after the optimizer has state (dtype, memory format, swap_tensors, freed storage),
  torch.func.functional_call, meta-initialised models materialised with to_empty after the optimizer was built;
- param layouts: permuted / channels_last(_3d) / transposed params vs grads vs state, high rank, size-1 dims, 0-dim;
  mixed real / complex groups; conj and neg views all at once;
- AdaSGDF: preconditioner switched between steps, its checkpoints through SGDF and back;
- step hooks that edit grads / state / params / groups, state_dict and load hooks returning odd things;
- copies of the optimizer mid-training (with the model, shallow, with a tensor lr / grad_scale);
- LR schedulers producing tensor / non-finite / out-of-range lr;
- torch.compile(backend="eager") steps with bad inputs (a few);
- GradScaler with inf / NaN, fused=True / None, f16 grads, disabled, huge scale;
- 5000 tiny params with one bad one at the end.
"""
import copy, io, math, pickle, types

import numpy as np
import torch
from torch import Tensor
import torch.nn as nn
import sgdf_erd
from sgdf_erd import ops as sops
from harness import (P, st, case, new_grads, build, snapshot, SGDF, AdaSGDF, CONFIGS, PATH_KW, PATHS, SHAPES, close, _clean)

f32, f64, bf16, f16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
OPS = torch.ops.sgdf_erd


def add(name, fn, **kw):
    fn.__name__ = name
    case(**kw)(fn)


# ================================================================== A. direct op calls
OPCFG = {
    'op_f32': dict(dtype=f32, sdt=f32),
    'op_f64': dict(dtype=f64, sdt=f64),
    'op_bf16m': dict(dtype=bf16, sdt=f32, master=True),
    'op_bf16sr': dict(dtype=bf16, sdt=bf16, sr=True),
    'op_ada': dict(dtype=f32, sdt=f32, pre='second_moment'),
    'op_var': dict(dtype=f32, sdt=f32, pre='variance'),
    'op_upd': dict(dtype=f32, sdt=f32, updates=True),
}

def _register_config(name, **c):  # (into the harness run as __main__ too: its Ctx reads that module's CONFIGS)
    import __main__
    for configs in {id(CONFIGS): CONFIGS, id(getattr(__main__, 'CONFIGS', CONFIGS)): getattr(__main__, 'CONFIGS', CONFIGS)}.values():
        configs[name] = c


for _k in OPCFG:
    _register_config(_k, cls=SGDF, dtype=f32, opts={})
ALLOPS = tuple(OPCFG)
LISTS = ('params', 'grads', 'exp_avgs', 'exp_vars', 'updates', 'steps', 'master_params', 'exp_avg_sqs')
SINGLES = ('lr_tensor', 'grad_scale', 'found_inf')
SHAPES5 = [(4, 3), (5,), (2, 3, 2, 2), (6,)]


class _NoOpt:  # what the harness snapshots for an op case: no groups, no state (the op's tensors are ctx.extra)
    def __init__(self):
        self.param_groups, self.state = [], {}


def _tensors(cfg, shapes, seed=1):
    torch.manual_seed(seed)
    dt, sdt = cfg['dtype'], cfg['sdt']
    r = lambda s, k=1.0: (torch.randn(s, dtype=f64) * k).to(dt)  # noqa: E731
    d = dict(params=[r(s) for s in shapes], grads=[r(s) for s in shapes],
             exp_avgs=[(torch.randn(s, dtype=f64) * 0.1).to(sdt) for s in shapes],
             exp_vars=[(torch.rand(s, dtype=f64) * 0.1).to(sdt) for s in shapes],
             steps=[torch.tensor(3.0) for _ in shapes],
             master_params=[], rounding_seeds=[], exp_avg_sqs=[])
    if cfg.get('master'):
        d['master_params'] = [p.float() + 1e-3 for p in d['params']]
    if cfg.get('sr'):
        d['rounding_seeds'] = [11 + i for i in range(len(shapes))]
    if cfg.get('pre') == 'second_moment':
        d['exp_avg_sqs'] = [(torch.rand(s, dtype=f64) * 0.1).to(sdt) for s in shapes]
    return d


def _op_kw(cfg):
    d = _tensors(cfg, SHAPES5[:3])
    return dict(d, updates=[torch.zeros(p.shape, dtype=f32) for p in d['params']] if cfg.get('updates') else [],
                lr=0.01, lr_tensor=None, beta1=0.9, beta2=0.99, eps=1e-8, gamma=0.5, weight_decay=0.0,
                decoupled_weight_decay=False, sign=False, maximize=False, grad_scale=None, found_inf=None,
                rounding_offsets=[], preconditioner=cfg.get('pre', 'none'))


def _grouped_kw(cfg):
    d = _tensors(cfg, SHAPES5)
    m, sr = bool(cfg.get('master')), bool(cfg.get('sr'))
    return dict(d, group_sizes=[2, 2], lr=[0.01, 0.02], lr_tensor=[None, None], beta1=[0.9, 0.8], beta2=[0.99, 0.999],
                eps=[1e-8, 1e-8], gamma=[0.5, 1.0], weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True],
                sign=[False, False], maximize=[False, True], master_weights=[m, m], stochastic_rounding=[sr, sr],
                grad_scale=None, found_inf=None, preconditioner=cfg.get('pre', 'none'), check_only=[])


def _call(entry, opname, kw):
    kw = dict(kw)
    if entry == 'wrap':
        return getattr(sops, opname)(**kw)
    if isinstance(kw.get('exp_avg_sqs'), list) and not kw['exp_avg_sqs']:
        kw['exp_avg_sqs'] = None  # (the schema's "absent")
    return getattr(OPS, opname)(**kw)


def _no_memory(t):  # a freed storage: reading it (torch.isfinite, clone) would crash the case, not the op
    try:
        return t.layout is torch.strided and not t.is_meta and t.numel() > 0 and t.data_ptr() == 0
    except Exception:
        return False


def _flat(kw):
    out = {}
    for k, v in kw.items():
        if isinstance(v, (list, tuple)):
            for i, t in enumerate(v):
                if isinstance(t, Tensor) and not _no_memory(t):
                    out[f'{k}{i}'] = t
        elif isinstance(v, Tensor) and not _no_memory(v):
            out[k] = v
    return out


def _clean_kw(kw):
    c = lambda t: _clean(t) if isinstance(t, Tensor) and not _no_memory(t) else t  # noqa: E731
    return {k: ([c(t) for t in v] if isinstance(v, (list, tuple)) else c(v)) for k, v in kw.items()}


def _finite(t):
    try:
        return not isinstance(t, Tensor) or t.device.type == 'meta' or t.layout is not torch.strided or not (
            t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(
                t.detach().resolve_neg().resolve_conj().to(torch.complex128 if t.is_complex() else f64)).all())
    except Exception:  # (a tensor torch cannot read this way: nested, quantized, freed storage)
        return True


def _op_case(name, opname, edit, kind, configs, entries=('raw', 'wrap')):
    def mk(ctx):
        cfg = OPCFG[ctx.config]
        kw = (_op_kw if opname == 'fused_sgdf_' else _grouped_kw)(cfg)
        edit(kw, cfg)
        ctx.no_ref = 'op'
        ctx.extra = _flat(kw)
        ctx.must_raise = kind == 'bad'
        finite_before = all(_finite(t) for t in ctx.extra.values())
        try:
            ref = _clean_kw(kw)
        except Exception as e:
            ref = f'no clean copy: {type(e).__name__}'
        ctx.action = lambda o: _call(ctx.path, opname, kw)

        def check_ok():
            if isinstance(ref, str):
                return 'OK_NOREF', [ref]
            nonfinite = [k for k, t in _flat(kw).items() if not _finite(t)]
            try:
                _call(ctx.path, opname, ref)
            except Exception as e:
                return 'OK_MISMATCH', [f'the clean copies are refused: {type(e).__name__}: {e}'[:200]]
            bad = []
            rf = _flat(ref)
            for k, t in _flat(kw).items():
                if (k not in rf or t.device.type == 'meta' or t.layout is not torch.strided
                        or not (t.is_floating_point() or t.is_complex())):
                    continue
                d = close(t, rf[k])
                tol = (2e-2 if t.dtype in (bf16, f16) else 1e-5) * (1 + float(rf[k].detach().abs().max().double())
                                                                    if rf[k].numel() else 1)
                if d > tol:
                    bad.append(f'{k}: |diff|={d:.3g}')
            if bad:
                return 'OK_MISMATCH', bad
            if finite_before and nonfinite:
                return 'OK_NONFINITE', nonfinite
            return 'OK_MATCH', []
        ctx.check_ok = check_ok
        return _NoOpt()
    add(f'op_{opname.strip("_")}_{name}', mk, configs=configs, paths=entries, ngroups=(1,), pres=(0,), builds=True)


def S(key, i, make):  # kw[key][i] = make(old, kw)
    def e(kw, cfg):
        kw[key][i] = make(kw[key][i], kw)
    return e


def SET(key, make):  # kw[key] = make(kw)
    def e(kw, cfg):
        kw[key] = make(kw)
    return e


def SEQ(*edits):
    def e(kw, cfg):
        for x in edits:
            x(kw, cfg)
    return e


def POP(key):
    def e(kw, cfg):
        kw[key].pop()
    return e


def APPEND(key, make):
    def e(kw, cfg):
        kw[key].append(make(kw))
    return e


def _negv(t):
    return torch._neg_view(-t)


def _T(t):  # the same values in a transposed (column-major) layout
    return t.t().contiguous().t() if t.dim() == 2 else t


def _gaps(t):  # the same values in a view with gaps
    big = torch.zeros((*t.shape[:-1], t.shape[-1] * 2), dtype=t.dtype)
    v = big[..., ::2]
    v.copy_(t)
    return v


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _inf_t(t):
    with torch.inference_mode():
        return t.clone()


def _ztensor(t):
    return torch._efficientzerotensor(t.shape, dtype=t.dtype)


def _two(t):
    from torch.testing._internal.two_tensor import TwoTensor
    return TwoTensor(t.clone(), t.clone())


def _alltensors(key, make):
    def e(kw, cfg):
        kw[key] = [make(t) for t in kw[key]]
    return e


def _each_list(make, keys=LISTS):
    def e(kw, cfg):
        for k in keys:
            if k in kw and isinstance(kw[k], list):
                kw[k] = [make(t) for t in kw[k]]
    return e


# fused_sgdf_: name -> (kind, edit, configs)
F = {}
# -- list lengths
for key in ('grads', 'exp_avgs', 'exp_vars', 'steps'):
    F[f'len_{key}_short'] = ('bad', POP(key), ALLOPS)
F['len_steps_long'] = ('bad', APPEND('steps', lambda kw: torch.tensor(1.0)), ('op_f32',))
F['len_params_long'] = ('bad', APPEND('params', lambda kw: torch.randn(2)), ('op_f32', 'op_ada'))
F['len_updates_short'] = ('bad', POP('updates'), ('op_upd',))
F['len_updates_one'] = ('bad', SET('updates', lambda kw: [torch.zeros(4, 3)]), ('op_f32',))
F['len_master_short'] = ('bad', POP('master_params'), ('op_bf16m',))
F['len_master_for_f32'] = ('bad', SET('master_params', lambda kw: [p.float().clone() for p in kw['params']]),
                           ('op_f32', 'op_f64'))
F['len_seeds_short'] = ('bad', POP('rounding_seeds'), ('op_bf16sr',))
F['len_seeds_long'] = ('bad', APPEND('rounding_seeds', lambda kw: 5), ('op_bf16sr',))
F['len_seeds_for_f32'] = ('any', SET('rounding_seeds', lambda kw: [1, 2, 3]), ('op_f32',))
F['len_offsets_long'] = ('bad', SET('rounding_offsets', lambda kw: [0, 0, 0, 0]), ('op_bf16sr',))
F['len_offsets_short'] = ('bad', SET('rounding_offsets', lambda kw: [0]), ('op_bf16sr',))
F['len_offsets_without_seeds'] = ('any', SET('rounding_offsets', lambda kw: [0, 0, 0]), ('op_f32', 'op_bf16m'))
F['len_sqs_short'] = ('bad', POP('exp_avg_sqs'), ('op_ada',))
F['len_sqs_missing'] = ('bad', SET('exp_avg_sqs', lambda kw: []), ('op_ada',))
F['len_sqs_with_none_pre'] = ('bad', SET('exp_avg_sqs', lambda kw: [torch.zeros_like(t) for t in kw['exp_avgs']]),
                              ('op_f32', 'op_var', 'op_bf16sr'))
F['all_empty'] = ('any', lambda kw, cfg: kw.update({k: [] for k in LISTS}, rounding_seeds=[]), ('op_f32', 'op_ada'))
F['params_empty_others_full'] = ('bad', SET('params', lambda kw: []), ('op_f32',))
F['grads_empty_others_full'] = ('bad', SET('grads', lambda kw: []), ('op_f32',))
# -- dtypes
for dt in (f64, f16, bf16, torch.int64, torch.bool, torch.complex64):
    n = str(dt).split('.')[-1]
    F[f'grad1_{n}'] = ('bad', S('grads', 1, lambda t, kw, dt=dt: t.to(dt)), ('op_f32',))
F['grad1_f32_for_bf16'] = ('bad', S('grads', 1, lambda t, kw: t.float()), ('op_bf16m', 'op_bf16sr'))
F['param1_f64'] = ('bad', S('params', 1, lambda t, kw: t.double()), ('op_f32',))
F['param1_int'] = ('bad', S('params', 1, lambda t, kw: t.long()), ('op_f32',))
F['exp_avg1_f16'] = ('bad', S('exp_avgs', 1, lambda t, kw: t.half()), ('op_f32', 'op_ada'))
F['exp_avg_all_f64'] = ('bad', _alltensors('exp_avgs', lambda t: t.double()), ('op_f32',))
F['state_all_f64'] = ('bad', SEQ(_alltensors('exp_avgs', lambda t: t.double()),
                                 _alltensors('exp_vars', lambda t: t.double())), ('op_f32', 'op_bf16m'))
F['state_all_bf16'] = ('ok', SEQ(_alltensors('exp_avgs', lambda t: t.bfloat16()),
                                 _alltensors('exp_vars', lambda t: t.bfloat16())), ('op_f32',))
F['exp_var_only_bf16'] = ('bad', _alltensors('exp_vars', lambda t: t.bfloat16()), ('op_f32', 'op_ada'))
F['sqs_only_bf16'] = ('bad', _alltensors('exp_avg_sqs', lambda t: t.bfloat16()), ('op_ada',))
F['state_all_f32_for_f64'] = ('bad', SEQ(_alltensors('exp_avgs', lambda t: t.float()),
                                         _alltensors('exp_vars', lambda t: t.float())), ('op_f64',))
F['master_bf16'] = ('bad', _alltensors('master_params', lambda t: t.bfloat16()), ('op_bf16m',))
F['master_f64'] = ('bad', _alltensors('master_params', lambda t: t.double()), ('op_bf16m',))
F['params_grads_all_f16'] = ('any', SEQ(_alltensors('params', lambda t: t.half()),
                                        _alltensors('grads', lambda t: t.half())), ('op_f32',))
F['params_grads_all_c64'] = ('bad', SEQ(_alltensors('params', lambda t: torch.complex(t, t)),
                                        _alltensors('grads', lambda t: torch.complex(t, -t))), ('op_f32',))
F['all_c64'] = ('bad', _each_list(lambda t: torch.complex(t, t) if t.dim() else t,
                                  ('params', 'grads', 'exp_avgs', 'exp_vars')), ('op_f32',))
# -- steps
STEP_EDITS = {
    'f64': lambda t: t.double(), 'int64': lambda t: t.long(), 'int32': lambda t: t.int(), 'bool': lambda t: t.bool(),
    'f16': lambda t: t.half(), 'bf16': lambda t: t.bfloat16(), 'shape1': lambda t: t.reshape(1),
    'shape11': lambda t: t.reshape(1, 1), 'shape2': lambda t: torch.tensor([3.0, 3.0]), 'empty': lambda t: torch.empty(0),
    'neg': lambda t: torch.tensor(-1.0), 'nan': lambda t: torch.tensor(float('nan')),
    'inf': lambda t: torch.tensor(float('inf')), 'frac': lambda t: torch.tensor(2.5),
    'huge': lambda t: torch.tensor(1e30), 'at_2p24': lambda t: torch.tensor(2.0 ** 24),
    'zero': lambda t: torch.tensor(0.0), 'meta': lambda t: t.to('meta'), 'neg_view': lambda t: _negv(t),
    'inference': _inf_t, 'requires_grad': lambda t: t.clone().requires_grad_(),
    'view_of_exp_avg': None, 'noncontig_0dim': lambda t: torch.tensor([3.0, 9.0])[0],
}
for nm, mkx in STEP_EDITS.items():
    kind = ('ok' if nm in ('zero', 'shape1', 'shape11', 'huge', 'at_2p24', 'noncontig_0dim', 'neg_view',
                           'inference', 'requires_grad') else 'bad')
    if nm == 'view_of_exp_avg':
        e = S('steps', 0, lambda t, kw: kw['exp_avgs'][0].view(-1)[0].fill_(3.0))
    else:
        e = S('steps', 1, lambda t, kw, m=mkx: m(t))
    F[f'step1_{nm}'] = (kind, e, ('op_f32',) if nm not in ('neg', 'frac', 'nan', 'zero') else ('op_f32', 'op_ada'))
F['steps_shared'] = ('bad', S('steps', 1, lambda t, kw: kw['steps'][0]), ('op_f32', 'op_bf16sr'))
# -- lr_tensor
LT = {
    'f64': ('any', lambda: torch.tensor(0.01, dtype=f64)), 'f16': ('any', lambda: torch.tensor(0.01, dtype=f16)),
    'int': ('bad', lambda: torch.tensor(0)), 'bool': ('bad', lambda: torch.tensor(True)),
    'shape2': ('bad', lambda: torch.tensor([0.01, 0.02])), 'shape1': ('any', lambda: torch.tensor([0.01])),
    'empty': ('bad', lambda: torch.empty(0)), 'neg': ('bad', lambda: torch.tensor(-0.01)),
    'nan': ('bad', lambda: torch.tensor(float('nan'))), 'inf': ('bad', lambda: torch.tensor(float('inf'))),
    'big_f64': ('bad', lambda: torch.tensor(1e39, dtype=f64)), 'c64': ('bad', lambda: torch.tensor(0.01 + 0j)),
    'requires_grad': ('ok', lambda: torch.tensor(0.01, requires_grad=True)),
    'meta': ('bad', lambda: torch.tensor(0.01, device='meta')), 'sparse': ('bad', lambda: torch.tensor([0.01]).to_sparse()),
    'strided_elem': ('ok', lambda: torch.tensor([0.01, 5.0, 0.01])[::2][:1]),
    'neg_bit': ('ok', lambda: torch._neg_view(torch.tensor(-0.01))),
    'inference': ('ok', lambda: _inf_t(torch.tensor(0.01))), 'zerotensor': ('any', lambda: torch._efficientzerotensor(())),
}
for nm, (kind, mkx) in LT.items():
    F[f'lr_tensor_{nm}'] = (kind, SET('lr_tensor', lambda kw, m=mkx: m()), ('op_f32',) if nm not in (
        'neg_bit', 'nan', 'neg') else ('op_f32', 'op_ada', 'op_bf16sr'))
F['lr_nan_with_lr_tensor'] = ('any', lambda kw, cfg: kw.update(lr=float('nan'), lr_tensor=torch.tensor(0.01)), ('op_f32',))
F['lr_tensor_is_step'] = ('bad', SET('lr_tensor', lambda kw: kw['steps'][0]), ('op_f32',))
F['lr_tensor_view_of_param'] = ('bad', SET('lr_tensor', lambda kw: kw['params'][0].view(-1)[3]), ('op_f32',))
F['lr_tensor_view_of_grad'] = ('any', SET('lr_tensor', lambda kw: kw['grads'][0].view(-1)[3].abs_()), ('op_f32',))
# -- grad_scale / found_inf
GS = {
    'gs_zero': ('any', 'grad_scale', lambda kw: torch.tensor(0.0)), 'gs_neg': ('any', 'grad_scale', lambda kw: torch.tensor(-2.0)),
    'gs_nan': ('any', 'grad_scale', lambda kw: torch.tensor(float('nan'))),
    'gs_inf': ('any', 'grad_scale', lambda kw: torch.tensor(float('inf'))),
    'gs_int': ('bad', 'grad_scale', lambda kw: torch.tensor(2)), 'gs_bool': ('bad', 'grad_scale', lambda kw: torch.tensor(True)),
    'gs_shape2': ('bad', 'grad_scale', lambda kw: torch.tensor([2.0, 2.0])), 'gs_f64': ('any', 'grad_scale', lambda kw: torch.tensor(2.0, dtype=f64)),
    'gs_f16': ('any', 'grad_scale', lambda kw: torch.tensor(2.0, dtype=f16)),
    'gs_meta': ('bad', 'grad_scale', lambda kw: torch.tensor(2.0, device='meta')),
    'gs_neg_bit': ('ok', 'grad_scale', lambda kw: torch._neg_view(torch.tensor(-2.0))),
    'gs_view_of_grad': ('bad', 'grad_scale', lambda kw: kw['grads'][1].view(-1)[0]),
    'gs_view_of_param': ('bad', 'grad_scale', lambda kw: kw['params'][1].view(-1)[0]),
    'fi_one': ('ok', 'found_inf', lambda kw: torch.tensor(1.0)), 'fi_half': ('any', 'found_inf', lambda kw: torch.tensor(0.5)),
    'fi_nan': ('any', 'found_inf', lambda kw: torch.tensor(float('nan'))), 'fi_neg': ('any', 'found_inf', lambda kw: torch.tensor(-1.0)),
    'fi_int': ('any', 'found_inf', lambda kw: torch.tensor(1)), 'fi_shape2': ('bad', 'found_inf', lambda kw: torch.tensor([0.0, 0.0])),
    'fi_bool': ('any', 'found_inf', lambda kw: torch.tensor(True)),
    'fi_view_of_step': ('bad', 'found_inf', lambda kw: kw['steps'][0]),
    'fi_neg_bit_zero': ('ok', 'found_inf', lambda kw: torch._neg_view(torch.tensor(-0.0))),
    'fi_neg_bit_one': ('ok', 'found_inf', lambda kw: torch._neg_view(torch.tensor(-1.0))),
}
for nm, (kind, key, mkx) in GS.items():
    F[nm] = (kind, SET(key, mkx), ('op_f32',))
F['gs_is_found_inf'] = ('any', lambda kw, cfg: kw.update(grad_scale=torch.tensor(0.0), found_inf=None) or kw.update(
    found_inf=kw['grad_scale']), ('op_f32',))
F['gs_without_found_inf'] = ('ok', SET('grad_scale', lambda kw: torch.tensor(4.0)), ('op_f32', 'op_ada', 'op_bf16m'))
F['fi_without_gs_zero'] = ('ok', SET('found_inf', lambda kw: torch.tensor(0.0)), ('op_f32',))
F['gs_with_grads_shared'] = ('bad', SEQ(SET('grad_scale', lambda kw: torch.tensor(2.0)),
                                        S('grads', 1, lambda t, kw: kw['grads'][0].view(-1)[:5])), ('op_f32',))
# -- shapes
F['grad0_shape_T'] = ('bad', S('grads', 0, lambda t, kw: t.reshape(3, 4)), ('op_f32',))
F['grad0_flat'] = ('bad', S('grads', 0, lambda t, kw: t.reshape(-1)), ('op_f32',))
F['grad0_numel'] = ('bad', S('grads', 0, lambda t, kw: torch.randn(4, 4)), ('op_f32',))
F['grad1_scalar_broadcast'] = ('bad', S('grads', 1, lambda t, kw: torch.tensor(1.0)), ('op_f32',))
F['exp_avg0_flat'] = ('bad', S('exp_avgs', 0, lambda t, kw: t.reshape(-1)), ('op_f32',))
F['exp_var2_shape'] = ('bad', S('exp_vars', 2, lambda t, kw: t.reshape(2, 3, 4)), ('op_f32',))
F['master0_flat'] = ('bad', S('master_params', 0, lambda t, kw: t.reshape(-1)), ('op_bf16m',))
F['sq0_flat'] = ('bad', S('exp_avg_sqs', 0, lambda t, kw: t.reshape(-1)), ('op_ada',))
F['update0_flat'] = ('bad', S('updates', 0, lambda t, kw: t.reshape(-1)), ('op_upd',))
F['update0_f16'] = ('bad', S('updates', 0, lambda t, kw: t.half()), ('op_upd',))
F['update0_f64'] = ('any', _alltensors('updates', lambda t: t.double()), ('op_upd',))
F['param0_empty_all'] = ('ok', _each_list(lambda t: t[:0] if t.dim() and t.shape[0] == 4 else t), ('op_f32', 'op_bf16sr'))
F['param0_empty_only'] = ('bad', S('params', 0, lambda t, kw: t[:0]), ('op_f32',))
F['all_0dim'] = ('ok', _each_list(lambda t: t.reshape(-1)[:1].reshape(()).clone() if t.dim() else t,
                                  ('params', 'grads', 'exp_avgs', 'exp_vars', 'master_params', 'exp_avg_sqs')),
                 ('op_f32', 'op_bf16m', 'op_ada'))
F['rank30_all'] = ('ok', _each_list(lambda t: t.reshape(-1)[:2].reshape((1,) * 29 + (2,)).clone() if t.dim() else t,
                                    ('params', 'grads', 'exp_avgs', 'exp_vars', 'master_params', 'exp_avg_sqs')),
                   ('op_f32', 'op_bf16sr'))


def _perm_hi(t):  # rank 30, 2 elements in a permuted dense layout (last dim outermost)
    x = t.reshape(-1)[:4].reshape((1,) * 27 + (2, 1, 2)).clone()
    return x.permute(*range(27), 29, 28, 27).contiguous().permute(*range(27), 29, 28, 27)


F['rank30_permuted_all'] = ('ok', _each_list(lambda t: _perm_hi(t) if t.dim() else t,
                                             ('params', 'grads', 'exp_avgs', 'exp_vars', 'master_params')),
                            ('op_f32', 'op_bf16m'))
F['rank30_permuted_grad_only'] = ('any', SEQ(_each_list(lambda t: t.reshape(-1)[:4].reshape((1,) * 27 + (2, 1, 2)).clone()
                                                        if t.dim() else t, ('params', 'exp_avgs', 'exp_vars')),
                                             _each_list(lambda t: _perm_hi(t) if t.dim() else t, ('grads',))),
                                  ('op_f32',))
# -- layouts and memory
for key in ('grads', 'params', 'exp_avgs', 'exp_vars'):
    F[f'{key}0_transposed_only'] = ('any', S(key, 0, lambda t, kw: _T(t)), ('op_f32',))
    F[f'{key}0_gaps_only'] = ('any', S(key, 0, lambda t, kw: _gaps(t)), ('op_f32',))
    F[f'{key}2_channels_last_only'] = ('any', S(key, 2, lambda t, kw: _cl(t)), ('op_f32',))
    F[f'{key}0_neg_view'] = ('ok', S(key, 0, lambda t, kw: _negv(t)), ('op_f32', 'op_ada'))
    F[f'{key}0_inference'] = ('any', S(key, 0, lambda t, kw: _inf_t(t)), ('op_f32',))
F['sq0_neg_view'] = ('ok', S('exp_avg_sqs', 0, lambda t, kw: _negv(t)), ('op_ada',))
F['master0_neg_view'] = ('ok', S('master_params', 0, lambda t, kw: _negv(t)), ('op_bf16m',))
F['update0_neg_view'] = ('ok', S('updates', 0, lambda t, kw: _negv(t)), ('op_upd',))
F['all_neg_view'] = ('ok', _each_list(lambda t: _negv(t) if t.dim() else t), ('op_f32', 'op_ada', 'op_bf16m'))
F['all0_transposed'] = ('ok', _each_list(lambda t: _T(t)), ('op_f32', 'op_ada', 'op_bf16m'))
F['all0_gaps'] = ('any', _each_list(lambda t: _gaps(t) if t.dim() else t), ('op_f32',))
F['all2_channels_last'] = ('ok', _each_list(lambda t: _cl(t)), ('op_f32', 'op_bf16sr', 'op_ada'))
F['grad0_expanded'] = ('any', S('grads', 0, lambda t, kw: t[:1].expand(4, 3)), ('op_f32',))
F['param0_expanded'] = ('bad', S('params', 0, lambda t, kw: t[:1].expand(4, 3)), ('op_f32',))
F['exp_avg0_expanded'] = ('bad', S('exp_avgs', 0, lambda t, kw: t[:1].expand(4, 3)), ('op_f32',))
F['grads_overlap'] = ('any', S('grads', 1, lambda t, kw: kw['grads'][0].view(-1)[:5]), ('op_f32',))
F['grads_same_view'] = ('any', S('grads', 1, lambda t, kw: kw['grads'][0].view(-1)[3:8]), ('op_f32',))
F['params_overlap'] = ('bad', S('params', 1, lambda t, kw: kw['params'][0].view(-1)[2:7]), ('op_f32', 'op_bf16m'))
F['exp_var_is_exp_avg'] = ('bad', S('exp_vars', 0, lambda t, kw: kw['exp_avgs'][0]), ('op_f32',))
F['sq_is_exp_var'] = ('bad', S('exp_avg_sqs', 0, lambda t, kw: kw['exp_vars'][0]), ('op_ada',))
F['grad_is_param'] = ('bad', S('grads', 0, lambda t, kw: kw['params'][0]), ('op_f32',))
F['grad_is_exp_avg'] = ('bad', S('grads', 0, lambda t, kw: kw['exp_avgs'][0]), ('op_f32',))
F['grad_is_step_view'] = ('any', S('grads', 1, lambda t, kw: kw['steps'][2].expand(5)), ('op_f32',))
F['update_is_grad'] = ('bad', S('updates', 0, lambda t, kw: kw['grads'][0]), ('op_upd',))
F['update_is_param'] = ('bad', S('updates', 0, lambda t, kw: kw['params'][0]), ('op_upd',))
F['masters_overlap'] = ('bad', S('master_params', 1, lambda t, kw: kw['master_params'][0].view(-1)[:5]), ('op_bf16m',))
F['params_disjoint_views_of_one_buffer'] = ('ok', lambda kw, cfg: _disjoint(kw), ('op_f32',))


def _disjoint(kw):  # params 0 and 1 as disjoint views of one buffer (valid)
    buf = torch.empty(12 + 5, dtype=kw['params'][0].dtype)
    buf[:12].copy_(kw['params'][0].view(-1))
    buf[12:].copy_(kw['params'][1])
    kw['params'][0], kw['params'][1] = buf[:12].view(4, 3), buf[12:]


# -- special tensors
SPECIAL = {
    'grads0_sparse': ('bad', S('grads', 0, lambda t, kw: t.to_sparse())),
    'params0_sparse': ('bad', S('params', 0, lambda t, kw: t.to_sparse())),
    'exp_avgs0_sparse': ('bad', S('exp_avgs', 0, lambda t, kw: t.to_sparse())),
    'grads0_csr': ('bad', S('grads', 0, lambda t, kw: t.to_sparse_csr())),
    'grads0_meta': ('bad', S('grads', 0, lambda t, kw: t.to('meta'))),
    'params0_meta': ('bad', S('params', 0, lambda t, kw: t.to('meta'))),
    'exp_vars2_meta': ('bad', S('exp_vars', 2, lambda t, kw: t.to('meta'))),
    'all_meta': ('any', _each_list(lambda t: t.to('meta'))),
    'grads0_zerotensor': ('any', S('grads', 0, lambda t, kw: _ztensor(t))),
    'params0_zerotensor': ('bad', S('params', 0, lambda t, kw: _ztensor(t))),
    'grads0_twotensor': ('any', S('grads', 0, lambda t, kw: _two(t))),
    'params0_twotensor': ('any', S('params', 0, lambda t, kw: _two(t))),
    'params_requires_grad': ('any', _alltensors('params', lambda t: t.requires_grad_())),
    'params_nonleaf': ('any', _alltensors('params', lambda t: t.requires_grad_() * 1)),
    'params0_parameter': ('ok', S('params', 0, lambda t, kw: nn.Parameter(t))),
    'grads_requires_grad': ('ok', _alltensors('grads', lambda t: t.requires_grad_())),
    'params0_nested': ('bad', S('params', 0, lambda t, kw: torch.nested.nested_tensor([t[0], t[1]]))),
    'params0_mkldnn': ('bad', S('params', 0, lambda t, kw: t.to_mkldnn())),
    'grads0_quantized': ('bad', S('grads', 0, lambda t, kw: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8))),
    'params_storage_freed': ('bad', S('params', 0, lambda t, kw: (t.untyped_storage().resize_(0), t)[1])),
    'grads_storage_freed': ('bad', S('grads', 2, lambda t, kw: (t.untyped_storage().resize_(0), t)[1])),
    'exp_avg_storage_freed': ('bad', S('exp_avgs', 1, lambda t, kw: (t.untyped_storage().resize_(0), t)[1])),
    'step_storage_freed': ('bad', S('steps', 1, lambda t, kw: (t.untyped_storage().resize_(0), t)[1])),
    'lr_tensor_storage_freed': ('bad', SET('lr_tensor', lambda kw: (lambda t: (t.untyped_storage().resize_(0), t)[1])(
        torch.tensor(0.01)))),
    'grad_scale_storage_freed': ('bad', SET('grad_scale', lambda kw: (lambda t: (t.untyped_storage().resize_(0), t)[1])(
        torch.tensor(2.0)))),
    'params0_set_to_smaller_storage': ('bad', S('params', 0, lambda t, kw: torch.empty(0).set_(
        torch.zeros(5).untyped_storage(), 0, (4, 3), (3, 1)))),
}
for nm, (kind, e) in SPECIAL.items():
    F[nm] = (kind, e, ('op_f32',) if 'storage' in nm or 'meta' in nm else ('op_f32', 'op_ada'))
# -- scalars
SCAL = {'lr': (-0.01, float('nan'), float('inf'), 1e39), 'beta1': (1.0, -0.1, float('nan'), 1.5),
        'beta2': (1.0, -0.1, float('nan'), 1.5), 'eps': (-1e-8, float('nan'), float('inf'), 1e39),
        'gamma': (0.0, -0.5, float('nan'), float('inf')), 'weight_decay': (-0.1, float('nan'), float('inf'), 1e39)}
for key, vals in SCAL.items():
    for v in vals:
        F[f'{key}_{v}'.replace('.', 'p')] = ('bad', SET(key, lambda kw, v=v: v), ('op_f32', 'op_ada'))
OTHER_SCALARS = {
    'lr_int': ('ok', 'lr', 1), 'lr_bool': ('bad', 'lr', True), 'lr_np64': ('ok', 'lr', np.float64(0.01)),
    'lr_np32': ('ok', 'lr', np.float32(0.01)), 'lr_tensor0d_in_lr': ('any', 'lr', torch.tensor(0.01)),
    'lr_None': ('bad', 'lr', None), 'lr_str': ('bad', 'lr', '0.01'), 'lr_complex': ('bad', 'lr', 0.01 + 0j),
    'beta1_int0': ('ok', 'beta1', 0), 'dwd_int1': ('any', 'decoupled_weight_decay', 1),
    'sign_str': ('bad', 'sign', 'yes'), 'maximize_None': ('bad', 'maximize', None),
    'maximize_np_bool': ('any', 'maximize', np.bool_(True)), 'sign_tensor': ('any', 'sign', torch.tensor(True)),
    'pre_Variance': ('bad', 'preconditioner', 'Variance'), 'pre_bogus': ('bad', 'preconditioner', 'adam'),
    'pre_empty': ('bad', 'preconditioner', ''), 'pre_None': ('bad', 'preconditioner', None),
    'pre_none_str_with_sqs': ('bad', 'preconditioner', 'none'),
    'eps_tiny': ('ok', 'eps', 1e-45), 'lr_subnormal': ('ok', 'lr', 1e-40),
    'gamma_huge': ('any', 'gamma', 1e30), 'gamma_tiny': ('ok', 'gamma', 1e-30),
}
for nm, (kind, key, v) in OTHER_SCALARS.items():
    F[nm] = (kind, SET(key, lambda kw, v=v: v), ('op_ada',) if nm == 'pre_none_str_with_sqs' else ('op_f32',))
F['pre_variance_with_sqs'] = ('bad', SET('preconditioner', lambda kw: 'variance'), ('op_ada',))
F['pre_second_moment_no_sqs'] = ('bad', SET('preconditioner', lambda kw: 'second_moment'), ('op_f32',))
# -- seeds and offsets (bf16 + stochastic rounding)
SEEDS = {'neg': ('bad', -1), '2p32': ('bad', 2 ** 32), '2p63m1': ('bad', 2 ** 63 - 1), '2p64': ('bad', 2 ** 64),
         'bool': ('bad', True), 'float': ('bad', 1.0), 'np_int64': ('ok', np.int64(7)), 'np_uint32': ('ok', np.uint32(7)),
         'tensor': ('any', torch.tensor(7)), 'max': ('ok', 2 ** 32 - 1), 'zero': ('ok', 0), 'str': ('bad', '7'),
         'None': ('bad', None)}
for nm, (kind, v) in SEEDS.items():
    F[f'seed1_{nm}'] = (kind, S('rounding_seeds', 1, lambda t, kw, v=v: v), ('op_bf16sr',))
OFFS = {'neg': ('bad', [0, -1, 0]), 'huge': ('any', [0, 2 ** 62, 0]), 'overflow': ('bad', [0, 2 ** 63 - 3, 0]),
        'float': ('bad', [0, 1.0, 0]), 'valid': ('ok', [0, 12, 17]), 'np_uint64': ('bad', [0, np.uint64(2 ** 63), 0]),
        'int64_max': ('bad', [0, 2 ** 63 - 1, 0]), 'bool': ('bad', [0, True, 0]), 'tensor_list': ('any', torch.tensor([0, 1, 2]))}
for nm, (kind, v) in OFFS.items():
    F[f'offsets_{nm}'] = (kind, SET('rounding_offsets', lambda kw, v=v: v), ('op_bf16sr',))
# -- container types (mostly for the wrapper)
CONT = {
    'lists_as_tuples': ('ok', lambda kw, cfg: kw.update({k: tuple(kw[k]) for k in LISTS})),
    'params_generator': ('any', SET('params', lambda kw: (p for p in list(kw['params'])))),
    'grads_single_tensor': ('bad', SET('grads', lambda kw: kw['grads'][0])),
    'params_None': ('bad', SET('params', lambda kw: None)),
    'grads_dict': ('bad', SET('grads', lambda kw: {i: g for i, g in enumerate(kw['grads'])})),
    'steps_floats': ('bad', SET('steps', lambda kw: [3.0, 3.0, 3.0])),
    'params_with_None': ('bad', S('params', 1, lambda t, kw: None)),
    'grads_with_None': ('bad', S('grads', 1, lambda t, kw: None)),
    'grads_ndarray': ('bad', S('grads', 1, lambda t, kw: t.numpy())),
    'lr_tensor_float': ('bad', SET('lr_tensor', lambda kw: 0.01)),
    'grad_scale_float': ('bad', SET('grad_scale', lambda kw: 2.0)),
    'found_inf_list': ('bad', SET('found_inf', lambda kw: [torch.tensor(0.0)])),
    'seeds_ndarray': ('any', SET('rounding_seeds', lambda kw: np.array([1, 2, 3]))),
    'master_generator': ('any', SET('master_params', lambda kw: iter(kw['master_params']))),
}
for nm, (kind, e) in CONT.items():
    cf = ('op_bf16m',) if 'master' in nm else ('op_bf16sr',) if 'seeds' in nm else ('op_f32',)
    F[nm] = (kind, e, cf)

for nm, (kind, e, cfs) in F.items():
    _op_case(nm, 'fused_sgdf_', e, kind, cfs)


# fused_sgdf_grouped_: name -> (kind, edit, configs)
G = {}
G['valid'] = ('ok', lambda kw, cfg: None, ('op_f32', 'op_ada', 'op_bf16m', 'op_bf16sr', 'op_f64'))
G['sizes_short'] = ('bad', SET('group_sizes', lambda kw: [2, 1]), ('op_f32', 'op_ada'))
G['sizes_long'] = ('bad', SET('group_sizes', lambda kw: [2, 3]), ('op_f32',))
G['sizes_neg'] = ('bad', SET('group_sizes', lambda kw: [5, -1]), ('op_f32', 'op_bf16sr'))
G['sizes_neg_first'] = ('bad', SET('group_sizes', lambda kw: [-1, 5]), ('op_f32',))
G['sizes_empty'] = ('bad', SET('group_sizes', lambda kw: []), ('op_f32',))
G['sizes_one_group'] = ('bad', SET('group_sizes', lambda kw: [4]), ('op_f32',))
G['sizes_huge'] = ('bad', SET('group_sizes', lambda kw: [2 ** 40, 4 - 2 ** 40]), ('op_f32',))
G['sizes_int32_wrap'] = ('bad', SET('group_sizes', lambda kw: [2 ** 32 + 2, 2]), ('op_f32',))
G['sizes_bool'] = ('bad', SET('group_sizes', lambda kw: [True, 3]), ('op_f32',))
G['sizes_np_int'] = ('ok', SET('group_sizes', lambda kw: [np.int64(2), np.int32(2)]), ('op_f32',))
G['sizes_tensor'] = ('any', SET('group_sizes', lambda kw: torch.tensor([2, 2])), ('op_f32',))


def _three_groups(kw, cfg):  # an empty middle group: every per-group list grows by one
    kw['group_sizes'] = [2, 0, 2]
    for k in ('lr', 'lr_tensor', 'beta1', 'beta2', 'eps', 'gamma', 'weight_decay', 'decoupled_weight_decay', 'sign',
              'maximize', 'master_weights', 'stochastic_rounding'):
        kw[k] = [kw[k][0], kw[k][0], kw[k][1]]


G['empty_middle_group'] = ('ok', _three_groups, ('op_f32', 'op_bf16sr', 'op_bf16m'))
for k in ('lr', 'lr_tensor', 'beta1', 'beta2', 'eps', 'gamma', 'weight_decay', 'decoupled_weight_decay', 'sign',
          'maximize', 'master_weights', 'stochastic_rounding'):
    G[f'{k}_short'] = ('bad', POP(k), ('op_f32',))
    G[f'{k}_long'] = ('bad', APPEND(k, lambda kw, k=k: kw[k][0]), ('op_f32',))
G['check_only_len1'] = ('bad', SET('check_only', lambda kw: [True]), ('op_f32',))
G['check_only_len3'] = ('bad', SET('check_only', lambda kw: [False, False, True]), ('op_f32',))
G['check_only_all'] = ('ok', SET('check_only', lambda kw: [True, True]), ('op_f32', 'op_ada', 'op_bf16sr'))
G['check_only_first'] = ('ok', SET('check_only', lambda kw: [True, False]), ('op_f32', 'op_bf16m'))
G['check_only_ints'] = ('any', SET('check_only', lambda kw: [1, 0]), ('op_f32',))
G['check_only_bad_grad_in_checked'] = ('bad', SEQ(SET('check_only', lambda kw: [True, False]),
                                                  S('grads', 0, lambda t, kw: t.double())), ('op_f32',))
G['check_only_bad_beta_in_checked'] = ('bad', SEQ(SET('check_only', lambda kw: [True, False]),
                                                  S('beta1', 0, lambda t, kw: 1.0)), ('op_f32',))
G['check_only_grads_shared'] = ('ok', SEQ(SET('check_only', lambda kw: [True, True]),
                                          S('grads', 1, lambda t, kw: kw['grads'][0].view(-1)[:5])), ('op_f32',))
G['check_only_grad_is_stepped_param'] = ('bad', SEQ(SET('check_only', lambda kw: [True, False]),
                                                    S('grads', 1, lambda t, kw: kw['params'][3][:5])), ('op_f32',))
G['master_flag_for_f32'] = ('bad', SET('master_weights', lambda kw: [True, True]), ('op_f32',))
G['master_first_group_only'] = ('ok', lambda kw, cfg: kw.update(master_weights=[True, False],
                                                               master_params=kw['master_params'][:2]), ('op_bf16m',))
G['master_count_off'] = ('bad', SET('master_weights', lambda kw: [True, False]), ('op_bf16m',))
G['sr_first_group_only'] = ('ok', lambda kw, cfg: kw.update(stochastic_rounding=[True, False],
                                                           rounding_seeds=kw['rounding_seeds'][:2]), ('op_bf16sr',))
G['sr_count_off'] = ('bad', SET('stochastic_rounding', lambda kw: [False, True]), ('op_bf16sr',))
G['sr_flag_for_f32'] = ('any', lambda kw, cfg: kw.update(stochastic_rounding=[True, True], rounding_seeds=[1, 2, 3, 4]),
                        ('op_f32',))
GLT = {'nan': ('bad', lambda kw: torch.tensor(float('nan'))), 'neg': ('bad', lambda kw: torch.tensor(-0.02)),
       'neg_bit': ('ok', lambda kw: torch._neg_view(torch.tensor(-0.02))), 'f64': ('any', lambda kw: torch.tensor(0.02, dtype=f64)),
       'shape2': ('bad', lambda kw: torch.tensor([0.02, 0.02])), 'meta': ('bad', lambda kw: torch.tensor(0.02, device='meta')),
       'is_step_of_g0': ('bad', lambda kw: kw['steps'][0]), 'view_of_param_g0': ('bad', lambda kw: kw['params'][0].view(-1)[0]),
       'int': ('bad', lambda kw: torch.tensor(0)), 'sparse': ('bad', lambda kw: torch.tensor([0.02]).to_sparse()),
       'strided_elem': ('ok', lambda kw: torch.tensor([0.02, 9.0])[::2]), 'requires_grad': ('ok', lambda kw: torch.tensor(0.02, requires_grad=True)),
       'inference': ('ok', lambda kw: _inf_t(torch.tensor(0.02))), 'zerotensor': ('any', lambda kw: torch._efficientzerotensor(())),
       'shared_both_groups': ('ok', None)}
for nm, (kind, mkx) in GLT.items():
    if nm == 'shared_both_groups':
        e = lambda kw, cfg: (lambda t: kw.update(lr_tensor=[t, t]))(torch.tensor(0.02))  # noqa: E731
    else:
        e = S('lr_tensor', 1, lambda t, kw, m=mkx: m(kw))
    G[f'g1_lr_tensor_{nm}'] = (kind, e, ('op_f32', 'op_ada') if nm in ('neg_bit', 'nan') else ('op_f32',))
for key, v in (('lr', float('nan')), ('lr', -1.0), ('beta1', 1.0), ('beta2', 1.0), ('eps', -1.0), ('gamma', 0.0),
               ('weight_decay', float('inf')), ('lr', 1e39)):
    G[f'g1_{key}_{v}'.replace('.', 'p')] = ('bad', S(key, 1, lambda t, kw, v=v: v), ('op_f32', 'op_bf16sr'))
G['g1_params_f64'] = ('any', lambda kw, cfg: [kw[k].__setitem__(i, kw[k][i].double()) for k in
                                                ('params', 'grads', 'exp_avgs', 'exp_vars') for i in (2, 3)], ('op_f32',))
G['g1_params_bf16_state_f32'] = ('any', lambda kw, cfg: [kw[k].__setitem__(i, kw[k][i].bfloat16()) for k in
                                                           ('params', 'grads') for i in (2, 3)], ('op_f32',))
G['g1_grad_f64'] = ('bad', S('grads', 3, lambda t, kw: t.double()), ('op_f32', 'op_ada'))
G['g1_param_meta'] = ('bad', S('params', 3, lambda t, kw: t.to('meta')), ('op_f32',))
G['g1_step_shape2'] = ('bad', S('steps', 3, lambda t, kw: torch.tensor([1.0, 1.0])), ('op_f32',))
G['g1_step_nan'] = ('bad', S('steps', 3, lambda t, kw: torch.tensor(float('nan'))), ('op_f32',))
G['g1_step_frac'] = ('bad', S('steps', 2, lambda t, kw: torch.tensor(0.5)), ('op_f32',))
G['steps_shared_across_groups'] = ('bad', S('steps', 3, lambda t, kw: kw['steps'][0]), ('op_f32',))
G['param_g1_overlaps_exp_avg_g0'] = ('bad', S('params', 3, lambda t, kw: kw['exp_avgs'][0].view(-1)[:6]), ('op_f32',))
G['grads_shared_across_groups'] = ('any', S('grads', 3, lambda t, kw: kw['grads'][0].view(-1)[:6]), ('op_f32',))
G['grads_shared_across_groups_scaled'] = ('bad', SEQ(SET('grad_scale', lambda kw: torch.tensor(2.0)),
                                                     S('grads', 3, lambda t, kw: kw['grads'][0].view(-1)[:6])), ('op_f32',))
G['sqs_short'] = ('bad', POP('exp_avg_sqs'), ('op_ada',))
G['sqs_with_pre_none'] = ('bad', SET('exp_avg_sqs', lambda kw: [torch.zeros_like(t) for t in kw['exp_avgs']]), ('op_f32',))
G['sqs_missing'] = ('bad', SET('exp_avg_sqs', lambda kw: []), ('op_ada',))
G['pre_bogus'] = ('bad', SET('preconditioner', lambda kw: 'Second_Moment'), ('op_ada',))
G['all_neg_view'] = ('ok', _each_list(lambda t: _negv(t) if t.dim() else t), ('op_f32', 'op_ada', 'op_bf16m'))
G['all_transposed'] = ('ok', _each_list(lambda t: _T(t)), ('op_f32',))
G['g1_gaps'] = ('any', lambda kw, cfg: [kw[k].__setitem__(3, _gaps(kw[k][3])) for k in
                                          ('params', 'grads', 'exp_avgs', 'exp_vars')], ('op_f32',))
G['seeds_g1_out_of_range'] = ('bad', S('rounding_seeds', 3, lambda t, kw: 2 ** 32), ('op_bf16sr',))
G['seeds_g1_neg'] = ('bad', S('rounding_seeds', 2, lambda t, kw: -5), ('op_bf16sr',))
G['seeds_short'] = ('bad', POP('rounding_seeds'), ('op_bf16sr',))
G['found_inf_one'] = ('ok', SET('found_inf', lambda kw: torch.tensor(1.0)), ('op_f32', 'op_ada'))
G['grad_scale_zero'] = ('any', SET('grad_scale', lambda kw: torch.tensor(0.0)), ('op_f32',))
G['lists_as_tuples'] = ('ok', lambda kw, cfg: kw.update({k: tuple(kw[k]) for k in kw if isinstance(kw[k], list)}), ('op_f32',))
G['lr_tensor_all_none_tuple'] = ('ok', SET('lr_tensor', lambda kw: (None, None)), ('op_f32',))
G['lr_tensor_none_list_empty'] = ('bad', SET('lr_tensor', lambda kw: []), ('op_f32',))
G['lr_floats_np'] = ('ok', SET('lr', lambda kw: [np.float32(0.01), np.float64(0.02)]), ('op_f32',))
G['lr_ints'] = ('ok', SET('lr', lambda kw: [0, 1]), ('op_f32',))
G['maximize_ints'] = ('any', SET('maximize', lambda kw: [0, 1]), ('op_f32',))
G['all_empty_lists'] = ('any', lambda kw, cfg: kw.update({k: [] for k in LISTS if k in kw}, rounding_seeds=[],
                                                          group_sizes=[0, 0]), ('op_f32',))
G['no_groups'] = ('any', lambda kw, cfg: kw.update({k: [] for k in kw if isinstance(kw[k], list)}), ('op_f32',))
G['storage_freed_g1'] = ('bad', S('exp_vars', 3, lambda t, kw: (t.untyped_storage().resize_(0), t)[1]), ('op_f32',))
for nm, (kind, e, cfs) in G.items():
    _op_case(nm, 'fused_sgdf_grouped_', e, kind, cfs)


# -- a few calls of the other public ops (probe_erd covered them broadly): bad args must raise
def _other_op(name, fn, kind='bad'):
    def mk(ctx):
        ctx.no_ref = 'op'
        ctx.must_raise = kind == 'bad'
        ctx.action = lambda o: fn(ctx.path)
        ctx.check_ok = lambda: ('OK_NOREF', [])
        return _NoOpt()
    add(f'op_other_{name}', mk, configs=('op_f32',), paths=('raw', 'wrap'), ngroups=(1,), pres=(0,), builds=True)


def _bge(features, bin_ids, num_bins):
    return lambda entry: (OPS.binned_gram_eigvalsh if entry == 'raw' else sops.binned_gram_eigvalsh)(
        features, bin_ids, num_bins)


OTHER = {
    'bge_bin_out_of_range': _bge(torch.randn(4, 3), torch.tensor([0, 1, 5, 0]), 2),
    'bge_bin_neg': _bge(torch.randn(4, 3), torch.tensor([0, -1, 1, 0]), 2),
    'bge_num_bins_zero': _bge(torch.randn(4, 3), torch.tensor([0, 0, 0, 0]), 0),
    'bge_num_bins_huge': _bge(torch.randn(4, 3), torch.tensor([0, 0, 0, 0]), 2 ** 40),
    'bge_ids_len': _bge(torch.randn(4, 3), torch.tensor([0, 1]), 2),
    'bge_ids_float': _bge(torch.randn(4, 3), torch.tensor([0.0, 1, 1, 0]), 2),
    'bge_features_int': _bge(torch.ones(4, 3, dtype=torch.int64), torch.tensor([0, 1, 1, 0]), 2),
    'bge_features_3d': _bge(torch.randn(4, 3, 2), torch.tensor([0, 1, 1, 0]), 2),
    'bge_features_meta': _bge(torch.randn(4, 3, device='meta'), torch.tensor([0, 1, 1, 0]), 2),
    'bge_ids_2d': _bge(torch.randn(4, 3), torch.tensor([[0, 1], [1, 0]]), 2),
    'bge_features_sparse': _bge(torch.randn(4, 3).to_sparse(), torch.tensor([0, 1, 1, 0]), 2),
    'bge_ids_bool': _bge(torch.randn(4, 3), torch.tensor([False, True, True, False]), 2),
    'erd_w_bad_prediction': lambda e: (OPS.erd_weights if e == 'raw' else sops.erd.erd_weights)(
        torch.rand(4), torch.rand(4), None, None, 'bogus', 'erd', 5.0, 1.0),
    'erd_w_len_mismatch': lambda e: (OPS.erd_weights if e == 'raw' else sops.erd.erd_weights)(
        torch.rand(4), torch.rand(3), None, None, 'eps', 'erd', 5.0, 1.0),
    'erd_w_int_alpha': lambda e: (OPS.erd_weights if e == 'raw' else sops.erd.erd_weights)(
        torch.ones(4, dtype=torch.int64), torch.rand(4), None, None, 'eps', 'erd', 5.0, 1.0),
    'erd_w_alpha_2d': lambda e: (OPS.erd_weights if e == 'raw' else sops.erd.erd_weights)(
        torch.rand(4, 2), torch.rand(4, 2), None, None, 'eps', 'erd', 5.0, 1.0),
}
for nm, fn in OTHER.items():
    _other_op(nm, fn)


# ================================================================== B. modules: parametrize, weight_norm, tied weights,
# requires_grad toggles, conversions after the optimizer has state, functional_call, meta init + to_empty
MOD = dict(paths=('default', 'fused', 'foreach', 'single', 'mixed'), ngroups=(1, 2), pres=(0, 2))
MOD_LITE = dict(paths=('default', 'foreach', 'single'), ngroups=(1,), pres=(0, 2))


def _opt_over(ctx, params, **over):
    gps = ctx.group_paths()
    chunks = [params[i::len(gps)] for i in range(len(gps))]
    groups = [{'params': ch, 'lr': 0.01 * (gi + 1), **PATH_KW[gp]} for gi, (ch, gp) in enumerate(zip(chunks, gps)) if ch]
    kw = dict(ctx.opts)
    kw.update(over)
    return ctx.cls(groups, betas=(0.9, 0.99), **kw)


def _loss(model, x):
    return model(x).float().square().mean()


class Symmetric(nn.Module):
    def forward(self, X):
        return X.triu() + X.triu(1).transpose(-1, -2)


def _mlp(ctx):
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)).to(ctx.dtype)
    return m, torch.randn(5, 4, dtype=f64).to(ctx.dtype)


def _conv(ctx):
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).to(ctx.dtype)
    return m, torch.randn(2, 3, 5, 5, dtype=f64).to(ctx.dtype)


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(torch.tanh(self.mid(self.emb(x))))


def _tied(ctx):
    return _Tied().to(ctx.dtype), torch.tensor([1, 2, 3, 7, 9])


def _with(make, fn):
    def mk(ctx):
        m, x = make(ctx)
        fn(m)
        return m, x
    return mk


def _model_case(name, make, edit=None, grad_edit=None, configs=('plain',), grid=MOD, action=None):
    def mk(ctx):
        torch.manual_seed(0)
        model, x = make(ctx)
        opt = _opt_over(ctx, list(model.parameters()))
        for _ in range(ctx.pre):
            opt.zero_grad()
            _loss(model, x).backward()
            opt.step()
        if edit:
            edit(model, opt, ctx, x)
        opt.zero_grad()
        _loss(model, x).backward()
        if grad_edit:
            grad_edit(model, opt, ctx, x)
        if action:
            ctx.action = lambda o: action(model, o, ctx, x)
        return opt
    add(name, mk, configs=configs, builds=True, **grid)


P_CFG = ('plain', 'ada_sm', 'master')
_model_case('mod_parametrize_symmetric', _with(_mlp, lambda m: nn.utils.parametrize.register_parametrization(
    m[0], 'weight', Symmetric())), configs=P_CFG)
_model_case('mod_parametrize_after_opt', _mlp, edit=lambda m, o, c, x: nn.utils.parametrize.register_parametrization(
    m[0], 'weight', Symmetric()), configs=P_CFG)
_model_case('mod_parametrize_removed_after_opt', _with(_mlp, lambda m: nn.utils.parametrize.register_parametrization(
    m[0], 'weight', Symmetric())), edit=lambda m, o, c, x: nn.utils.parametrize.remove_parametrizations(
    m[0], 'weight', leave_parametrized=True), configs=('plain', 'ada_sm'))
_model_case('mod_parametrize_orthogonal', _with(_mlp, lambda m: nn.utils.parametrizations.orthogonal(m[0])),
            configs=('plain', 'ada_var'))
_model_case('mod_spectral_norm', _with(_mlp, lambda m: nn.utils.parametrizations.spectral_norm(m[2])),
            configs=('plain',))
_model_case('mod_weight_norm_new', _with(_conv, lambda m: nn.utils.parametrizations.weight_norm(m[0])),
            configs=P_CFG + ('cl',))
_model_case('mod_weight_norm_old', _with(_mlp, lambda m: nn.utils.weight_norm(m[0])), configs=('plain', 'sr'))
_model_case('mod_weight_norm_old_after_opt', _mlp, edit=lambda m, o, c, x: nn.utils.weight_norm(m[0]),
            configs=('plain',))
_model_case('mod_tied_emb_head', _tied, configs=('plain', 'ada_sm', 'master', 'sr'))


def _tied_twice(groups):
    def mk(ctx):
        torch.manual_seed(0)
        m, x = _tied(ctx)
        ps = groups(m)
        ctx.no_ref = 'constructor'
        ctx.action = lambda o: ctx.cls(ps, lr=0.01, **PATH_KW[ctx.path])
        return ctx.cls(list(m.parameters()), lr=0.01)
    return mk


add('ctor_tied_listed_twice', _tied_twice(lambda m: [m.emb.weight, m.head.weight, m.mid.weight]),
    configs=('plain', 'ada_sm'), paths=('default', 'fused', 'foreach', 'single'), ngroups=(1,), pres=(0,), builds=True)
add('ctor_tied_across_groups', _tied_twice(lambda m: [{'params': [m.emb.weight]}, {'params': [m.head.weight]}]),
    configs=('plain', 'ada_sm'), paths=('default', 'fused', 'foreach', 'single'), ngroups=(1,), pres=(0,), builds=True)


def _add_tied_group(model, opt, ctx, x):  # the tied weight added again through add_param_group
    opt.add_param_group({'params': [model.head.weight]})


_model_case('mod_tied_add_param_group', _tied, action=_add_tied_group, configs=('plain',), grid=MOD_LITE)


def _retie_after(model, opt, ctx, x):  # tied after the optimizer was built: the head's own weight is orphaned
    model.head.weight = model.emb.weight


class _Untied(_Tied):
    def __init__(self):
        super().__init__()
        self.head.weight = nn.Parameter(self.emb.weight.detach().clone())


_model_case('mod_tied_after_opt', lambda ctx: (_Untied().to(ctx.dtype), torch.tensor([1, 2, 3, 7, 9])),
            edit=_retie_after, configs=('plain', 'ada_sm'))


def _rg_off(idx, with_grad=True):
    def e(model, opt, ctx, x):
        p = list(model.parameters())[idx]
        p.requires_grad_(False)
        if with_grad:
            p.grad = torch.randn_like(p)
    return e


_model_case('mod_requires_grad_off_keeps_grad', _mlp, grad_edit=_rg_off(0), configs=('plain', 'ada_sm', 'sr'))
_model_case('mod_requires_grad_off_before_backward', _mlp, edit=lambda m, o, c, x: m[0].requires_grad_(False),
            configs=('plain', 'ada_sm'))
_model_case('mod_requires_grad_all_off_with_grads', _mlp, grad_edit=lambda m, o, c, x: m.requires_grad_(False),
            configs=('plain',))


def _convert(fn):
    def e(model, opt, ctx, x):
        fn(model)
        ctx.model_x = x
    return e


def _with_input_dtype(conv):  # the model converted after state exists; the input follows
    def mk(ctx):
        torch.manual_seed(0)
        model, x = _mlp(ctx) if conv[1] != 'cl' else _conv(ctx)
        return model, x
    return mk


CONVERSIONS = {
    'half': (lambda m: m.half(), torch.float16), 'double': (lambda m: m.double(), f64),
    'bfloat16': (lambda m: m.bfloat16(), bf16), 'float': (lambda m: m.float(), f32),
}


def _conv_case(name, conv, dtype, configs):
    def mk(ctx):
        torch.manual_seed(0)
        model, x = _mlp(ctx)
        opt = _opt_over(ctx, list(model.parameters()))
        for _ in range(ctx.pre):
            opt.zero_grad()
            _loss(model, x).backward()
            opt.step()
        conv(model)
        opt.zero_grad()
        _loss(model, x.to(dtype)).backward()
        return opt
    add(name, mk, configs=configs, builds=True, **MOD)


for nm, (conv, dt) in CONVERSIONS.items():
    _conv_case(f'mod_to_{nm}_after_state', conv, dt, ('plain', 'master') if nm != 'float' else ('master', 'sr'))


def _swap_half(m):
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        m.half()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)


_conv_case('mod_swap_tensors_half_after_state', _swap_half, torch.float16, ('plain', 'ada_sm'))


def _swap_one(m):  # torch.utils.swap_tensors of a param with a new tensor of another shape
    p = m[0].weight
    with torch.no_grad():
        q = nn.Parameter(torch.randn(4, 4, dtype=p.dtype))
    torch.utils.swap_tensors(p, q)


_conv_case('mod_swap_tensors_same_shape', _swap_one, f32, ('plain', 'ada_sm', 'sdt_bf16'))


def _cl_after(model, opt, ctx, x):
    model.to(memory_format=torch.channels_last)


_model_case('mod_conv_to_channels_last_after_state', _conv, edit=_cl_after, configs=('plain', 'ada_sm', 'master', 'sr'))
_model_case('mod_conv_channels_last_grads_contiguous', _conv, edit=_cl_after,
            grad_edit=lambda m, o, c, x: [setattr(p, 'grad', p.grad.contiguous()) for p in m.parameters()],
            configs=('plain', 'ada_sm'))


def _freed(what, idx=0):
    def e(model, opt, ctx, x):
        p = list(model.parameters())[idx]
        t = {'param': p, 'grad': p.grad, 'exp_avg': opt.state.get(p, {}).get('exp_avg'),
             'step': opt.state.get(p, {}).get('step')}[what]
        if t is None:
            raise RuntimeError('nothing to free')
        t.untyped_storage().resize_(0)
        ctx.no_ref = 'freed storage'  # (a clean copy would read it)
    return e


for what in ('param', 'grad'):
    _model_case(f'mod_storage_freed_{what}', _mlp, grad_edit=_freed(what), configs=('plain', 'ada_sm'), grid=MOD)
for what in ('exp_avg', 'step'):
    _model_case(f'mod_storage_freed_{what}', _mlp, grad_edit=_freed(what), configs=('plain', 'ada_sm'),
                grid=dict(MOD, pres=(2,)))


def _fc_grads(batched):
    def e(model, opt, ctx, x):
        opt.zero_grad()
        named = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        torch.func.functional_call(model, named, (x,)).float().square().mean().backward()
        for (n, p) in model.named_parameters():
            g = named[n].grad
            p.grad = g.unsqueeze(0).expand(3, *g.shape) if batched else g
    return e


_model_case('mod_functional_call_grads_copied', _mlp, grad_edit=_fc_grads(False), configs=('plain', 'ada_sm'))


def _func_grad(model, opt, ctx, x):  # torch.func.grad's grads assigned as .grad
    params = dict(model.named_parameters())
    gr = torch.func.grad(lambda ps: torch.func.functional_call(model, ps, (x,)).float().square().mean())(
        {n: p.detach() for n, p in params.items()})
    for n, p in params.items():
        p.grad = gr[n]


_model_case('mod_func_grad_assigned', _mlp, grad_edit=_func_grad, configs=('plain', 'master'))


def _step_in_reparametrized(model, o, ctx, x):
    with torch.nn.utils.stateless._reparametrize_module(model, {'0.weight': torch.zeros(4, 4, dtype=ctx.dtype)}):
        return o.step()


_model_case('mod_step_inside_reparametrize', _mlp, action=_step_in_reparametrized, configs=('plain',))


def _meta_init(step_on_meta=False, load=False):
    def mk(ctx):
        torch.manual_seed(0)
        with torch.device('meta'):
            model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)).to(ctx.dtype)
        opt = _opt_over(ctx, list(model.parameters()))
        if step_on_meta:
            _loss(model, torch.randn(5, 4, device='meta', dtype=ctx.dtype)).backward()
            opt.step()
            opt.zero_grad()
        if load:  # a real checkpoint loaded while the params are on meta
            torch.manual_seed(0)
            real = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)).to(ctx.dtype)
            ro = _opt_over(ctx, list(real.parameters()))
            _loss(real, torch.randn(5, 4, dtype=ctx.dtype)).backward()
            ro.step()
            opt.load_state_dict(ro.state_dict())
        model.to_empty(device='cpu')
        torch.manual_seed(1)
        for p in model.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, dtype=f64).to(p.dtype))
        _loss(model, torch.randn(5, 4, dtype=f64).to(ctx.dtype)).backward()
        return opt
    return mk


for nm, kw in (('', {}), ('_after_meta_step', {'step_on_meta': True}), ('_after_load_on_meta', {'load': True})):
    add(f'mod_meta_init_to_empty{nm}', _meta_init(**kw), configs=('plain', 'ada_sm', 'master', 'sr'), builds=True,
        paths=('default', 'fused', 'foreach', 'single', 'mixed'), ngroups=(1, 2), pres=(0,))


# ================================================================== C. layouts, ranks, complex
def _shaped(shapes, edit=None):
    def mk(ctx):
        opt = build(ctx, shapes=shapes)
        if edit:
            edit(opt, ctx)
        return opt
    return mk


def _perm_like(t, perm):  # t's values in the dense layout of t.permute(perm) (same shape)
    inv = [perm.index(i) for i in range(len(perm))]
    return t.permute(perm).contiguous().permute(inv)


def _layouts(p_perm, g_perm, s_perm):
    def e(opt, ctx):
        p = P(opt, 0, 2)
        with torch.no_grad():
            if p_perm:
                p.data = _perm_like(p.data, p_perm)
        if g_perm is not None:
            p.grad = _perm_like(p.grad, g_perm) if g_perm else p.grad.contiguous()
        s = opt.state.get(p)
        if s and s_perm is not None:
            for k in ('exp_avg', 'exp_var', 'exp_avg_sq', 'master_param'):
                if k in s:
                    s[k] = _perm_like(s[k], s_perm) if s_perm else s[k].contiguous()
    return e


CL, ODD, ODD2 = (0, 2, 3, 1), (3, 1, 0, 2), (2, 0, 3, 1)
LAYOUTS = {
    'p_cl_g_contig_s_contig': (CL, (), ()), 'p_contig_g_cl_s_cl': (None, CL, CL), 'p_cl_g_cl_s_contig': (CL, CL, ()),
    'p_odd_g_odd_s_odd': (ODD, ODD, ODD), 'p_odd_g_odd2_s_odd': (ODD, ODD2, ODD), 'p_odd_g_odd_s_odd2': (ODD, ODD, ODD2),
    'p_odd_g_contig_s_cl': (ODD, (), CL), 'p_cl_g_odd_s_odd2': (CL, ODD, ODD2),
}
for nm, (pp, gp, sp) in LAYOUTS.items():
    add(f'layout_{nm}', _shaped(SHAPES, _layouts(pp, gp, sp)), configs=('plain', 'ada_sm', 'master', 'sr', 'cl'),
        builds=True, paths=PATHS, ngroups=(1, 2), pres=(0, 2))


def _cl3d(opt, ctx):
    p = P(opt, 0, 0)
    with torch.no_grad():
        p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    p.grad = p.grad.contiguous(memory_format=torch.channels_last_3d)


HIGH_RANK = {
    'rank25': [(1,) * 23 + (2, 3), (5,)], 'rank40': [(1,) * 39 + (3,), (2, 2)], 'rank64': [(1,) * 62 + (2, 2)],
    'zero_dim_only': [(), ()], 'size1_everywhere': [(1, 1, 1, 1), (1,), (1, 1)],
    'rank30_mixed_numel0': [(1,) * 28 + (0, 2), (3,)], 'rank5_cl3d': [(2, 3, 2, 2, 2), (4,)],
}
for nm, shapes in HIGH_RANK.items():
    add(f'shape_{nm}', _shaped(shapes, _cl3d if nm == 'rank5_cl3d' else None),
        configs=('plain', 'ada_sm', 'master', 'sr'), builds=True, paths=PATHS, ngroups=(1, 2), pres=(0, 2))


def _hr_perm(opt, ctx):  # a rank-30 dense param in a permuted layout, its grad in another, its state contiguous
    p = P(opt, 0, 0)
    perm = list(range(30))
    perm[27], perm[29] = perm[29], perm[27]
    perm2 = list(range(30))
    perm2[28], perm2[29] = 29, 28
    with torch.no_grad():
        p.data = _perm_like(p.data, perm)
    p.grad = _perm_like(p.grad, perm2)


add('shape_rank30_permuted_param_and_grad', _shaped([(1,) * 27 + (2, 3, 2), (4,)], _hr_perm),
    configs=('plain', 'ada_sm', 'master'), builds=True, paths=PATHS, ngroups=(1, 2), pres=(0, 2))


def _complex_groups(real_first, mixed_within=False, conj_neg=False):
    def mk(ctx):
        torch.manual_seed(0)
        gps = ctx.group_paths()
        groups = []
        for gi, gp in enumerate(gps):
            cx = (gi % 2 == 0) != real_first
            ps = []
            for j, s in enumerate(((3, 2), (4,))):
                use_cx = cx if not mixed_within else (j == 0)
                t = torch.randn(s, dtype=torch.complex64 if use_cx else f32)
                ps.append(t.requires_grad_())
            groups.append({'params': ps, 'lr': 0.01 * (gi + 1), **PATH_KW[gp]})
        opt = ctx.cls(groups, betas=(0.9, 0.99), **ctx.opts)
        for _ in range(ctx.pre):
            new_grads(opt)
            opt.step()
        new_grads(opt)
        if conj_neg:
            for g in opt.param_groups:
                for p in g['params']:
                    if p.is_complex():
                        with torch.no_grad():
                            p.data = p.data.conj_physical().conj()  # (the same values, conj bit set)
                        p.grad = torch._neg_view(-p.grad)
                        s = opt.state.get(p)
                        if s:
                            s['exp_avg'] = s['exp_avg'].conj_physical().conj()
                            s['exp_var'] = torch._neg_view(-s['exp_var'])
        return opt
    return mk


for nm, kw in (('complex_then_real', {}), ('real_then_complex', {'real_first': True}),
               ('mixed_within_group', {'mixed_within': True}), ('conj_neg_views', {'conj_neg': True})):
    kw.setdefault('real_first', False)
    add(f'cx_{nm}', _complex_groups(**kw), configs=('plain', 'ada_sm', 'ada_var', 'wd'), builds=True, paths=PATHS,
        ngroups=(1, 2, 3) if nm != 'mixed_within_group' else (1, 2), pres=(0, 2))


# ================================================================== D. AdaSGDF: preconditioner switched, checkpoints
def _group_set(key, value, groups='all'):
    def e(opt, ctx):
        for gi, g in enumerate(opt.param_groups):
            if groups == 'all' or gi in groups:
                g[key] = value
    return e


ADA_SWITCH = {
    'pre_sm_to_var': ('ada_sm', _group_set('preconditioner', 'variance')),
    'pre_var_to_sm': ('ada_var', _group_set('preconditioner', 'second_moment')),
    'pre_sm_to_none': ('ada_sm', _group_set('preconditioner', 'none')),
    'pre_var_to_sm_group0': ('ada_var', _group_set('preconditioner', 'second_moment', (0,))),
    'pre_sm_to_var_last_group': ('ada_sm', lambda o, c: o.param_groups[-1].__setitem__('preconditioner', 'variance')),
    'pre_deleted': ('ada_sm', lambda o, c: [g.pop('preconditioner') for g in o.param_groups]),
    'sign_on': ('ada_sm', _group_set('sign', True)),
    'orthogonalize_on': ('ada_var', _group_set('orthogonalize', True)),
    'dwd_off': ('ada_sm', _group_set('decoupled_weight_decay', False)),
    'sdt_to_bf16': ('ada_sm', _group_set('state_dtype', bf16)),
    'pre_var_to_sm_with_fake_sq': ('ada_var', lambda o, c: [
        _group_set('preconditioner', 'second_moment')(o, c),
        [s.__setitem__('exp_avg_sq', torch.zeros_like(s['exp_avg'])) for s in o.state.values()]]),
}
for nm, (cfg, e) in ADA_SWITCH.items():
    add(f'ada_{nm}', e, configs=(cfg,), paths=PATHS, ngroups=(1, 2, 3), pres=(0, 2))


def _ckpt_chain(chain):
    """Train the harness's optimizer, then carry its checkpoint through `chain` (optimizer classes and options) over
    the same params, one step each; the last optimizer's step is the action (no reference: the outcome is the
    question)."""
    def mk(ctx):
        opt = build(ctx)
        def action(o):  # (the loads are the action: a refusal is classified, and must leave `opt` as it was)
            sd = o.state_dict()
            for i, (cls, kw) in enumerate(chain):
                nxt = cls([{'params': g['params']} for g in o.param_groups], **kw)
                nxt.load_state_dict(sd)
                nxt.step()
                if i < len(chain) - 1:
                    new_grads(nxt)
                    sd = nxt.state_dict()
        ctx.action = action
        ctx.no_ref = 'chain'
        return opt
    return mk


CHAINS = {
    'ada_sm_into_sgdf_back_into_ada_sm': [(SGDF, {}), (AdaSGDF, {'preconditioner': 'second_moment'})],
    'ada_sm_into_sgdf_back_into_ada_var': [(SGDF, {}), (AdaSGDF, {'preconditioner': 'variance'})],
    'ada_var_into_sgdf_into_ada_default': [(SGDF, {}), (AdaSGDF, {})],
    'ada_sm_into_ada_var_into_ada_sm': [(AdaSGDF, {'preconditioner': 'variance'}), (AdaSGDF, {})],
    'sgdf_into_ada_var_into_sgdf': [(AdaSGDF, {'preconditioner': 'variance'}), (SGDF, {})],
    'ada_sm_into_sgdf_fused': [(SGDF, {'fused': True})],
    'ada_sm_into_sgdf_master': [(SGDF, {'master_weights': True})],
}
for nm, chain in CHAINS.items():
    cfgs = ('plain',) if nm.startswith('sgdf') else ('ada_var',) if nm.startswith('ada_var') else ('ada_sm',)
    add(f'ckpt_{nm}', _ckpt_chain(chain), configs=cfgs, paths=PATHS, ngroups=(1, 2), pres=(2,), builds=True)


def _ada_into_sgdf_check_state(opt, ctx):  # after an AdaSGDF(second_moment) checkpoint loads into SGDF, the state
    sgdf = SGDF([{'params': g['params']} for g in opt.param_groups])   # must hold no exp_avg_sq
    sgdf.load_state_dict(opt.state_dict())
    ctx.no_ref = 'state check'
    ctx.action = lambda o: (lambda bad: (_ for _ in ()).throw(AssertionError(bad)) if bad else sgdf.step())(
        [k for s in sgdf.state.values() for k in s if k == 'exp_avg_sq'])
    return None


add('ckpt_ada_sm_into_sgdf_drops_exp_avg_sq', _ada_into_sgdf_check_state, configs=('ada_sm',), paths=PATHS,
    ngroups=(1, 2), pres=(2,))


# ================================================================== E. hooks
def _after_hook(fn):
    """Run a hook's edit, then take the snapshot a refusal is compared with (ctx.mid): what the hook itself changed
    is the case's doing, not the step's."""
    def hook(o, ctx):
        r = fn(o, ctx)
        ctx.mid = snapshot(o, ctx)
        return r
    return hook


# the pre-hooks whose edit changes what the step computes: the harness's reference (made before the hook) does not
# apply to them, so they are checked for crashes and clean refusals only
_NO_REF_PRE = ('data_shape', 'state_clear', 'grad_alias', 'set_grad_scale', 'set_found_inf_one', 'detach_param')


def _pre_hook(fn):
    def mut(opt, ctx):
        h = _after_hook(fn)
        opt.register_step_pre_hook(lambda o, args, kwargs: h(o, ctx))
        if fn.__name__[3:] in _NO_REF_PRE:
            ctx.no_ref = 'edited by the hook'
    return mut


def _post_hook(fn, twice=True):
    def mut(opt, ctx):
        h = _after_hook(fn)
        opt.register_step_post_hook(lambda o, args, kwargs: h(o, ctx))
        if twice:  # the post-hook's edit meets the next step
            ctx.action = lambda o: (o.step(), new_grads(o), setattr(ctx, 'mid', snapshot(o, ctx)), o.step())
            ctx.no_ref = 'two steps'
    return mut


def _h_data_f64(o, ctx):
    p = P(o, 0, 0)
    p.data = p.data.double()
    p.grad = p.grad.double()


def _h_data_shape(o, ctx):
    p = P(o, 0, 1)
    p.data = torch.randn(7, dtype=p.dtype)
    p.grad = torch.randn(7, dtype=p.dtype)


def _h_state_f16(o, ctx):
    for s in o.state.values():
        s['exp_avg'] = s['exp_avg'].half()


def _h_state_clear(o, ctx):
    for s in o.state.values():
        s.clear()


def _h_state_step_drop(o, ctx):
    for s in o.state.values():
        s.pop('step', None)


def _h_grad_alias(o, ctx):  # param 1's grad made a view of param 0's
    a, b = P(o, 0, 0), P(o, 0, 1)
    b.grad = a.grad.view(-1)[:b.numel()].view(b.shape)


def _h_grad_noncontig(o, ctx):
    p = P(o, 0, 0)
    p.grad = p.grad.t().contiguous().t()


def _h_set_grad_scale(o, ctx):
    o.grad_scale = torch.tensor(4.0)
    o.found_inf = torch.tensor(0.0)


def _h_set_found_inf_one(o, ctx):
    o.grad_scale = torch.tensor(1.0)
    o.found_inf = torch.tensor(1.0)


def _h_swap_groups(o, ctx):
    o.param_groups.reverse()


def _h_lr_nan(o, ctx):
    o.param_groups[-1]['lr'] = float('nan')


def _h_returns_bad(o, ctx):
    return 5


def _h_returns_args_closure(o, ctx):  # returns (args, kwargs) with a closure that raises (args include self)
    def closure():
        raise ValueError('closure from a pre-hook')
    return (o, closure), {}


def _h_requires_grad_off(o, ctx):
    for g in o.param_groups:
        for p in g['params']:
            p.requires_grad_(False)


def _h_detach_params(o, ctx):  # the param replaced in the group by a detached copy (state keyed by the old one)
    g = o.param_groups[0]
    old = g['params'][0]
    new = old.detach().clone().requires_grad_()
    new.grad = old.grad
    g['params'][0] = new


STEP_PRE = {'data_f64': _h_data_f64, 'data_shape': _h_data_shape, 'state_f16': _h_state_f16,
            'state_clear': _h_state_clear, 'state_step_drop': _h_state_step_drop, 'grad_alias': _h_grad_alias,
            'grad_noncontig': _h_grad_noncontig, 'set_grad_scale': _h_set_grad_scale,
            'set_found_inf_one': _h_set_found_inf_one, 'swap_groups': _h_swap_groups, 'lr_nan': _h_lr_nan,
            'returns_bad': _h_returns_bad, 'returns_args_closure': _h_returns_args_closure,
            'requires_grad_off': _h_requires_grad_off, 'detach_param': _h_detach_params}
for nm, fn in STEP_PRE.items():
    add(f'hook_pre_{nm}', _pre_hook(fn), configs=('plain', 'ada_sm'), paths=PATHS, ngroups=(1, 2),
        pres=(0, 2) if not nm.startswith('state') else (2,))
for nm in ('state_f16', 'state_clear', 'state_step_drop', 'data_f64', 'set_found_inf_one', 'lr_nan'):
    add(f'hook_post_{nm}', _post_hook(STEP_PRE[nm]), configs=('plain',), paths=PATHS, ngroups=(1, 2), pres=(0, 2))


def _sd_hook(register):
    def mut(opt, ctx):
        register(opt, ctx)

        def action(o):
            o.load_state_dict(o.state_dict())
            ctx.mid = snapshot(o, ctx)  # (a load replaces the state's tensors: the step is compared from here)
            return o.step()
        ctx.action = action
        ctx.no_ref = 'round trip'
    return mut


SD_HOOKS = {
    'sd_post_returns_list': lambda o, c: o.register_state_dict_post_hook(lambda opt, sd: [sd]),
    'sd_post_returns_str': lambda o, c: o.register_state_dict_post_hook(lambda opt, sd: 'checkpoint'),
    'sd_post_drops_groups': lambda o, c: o.register_state_dict_post_hook(lambda opt, sd: {'state': sd['state']}),
    'sd_post_state_to_list': lambda o, c: o.register_state_dict_post_hook(
        lambda opt, sd: dict(sd, state=list(sd['state'].values()))),
    'sd_post_adds_group': lambda o, c: o.register_state_dict_post_hook(
        lambda opt, sd: dict(sd, param_groups=sd['param_groups'] + [dict(sd['param_groups'][0], params=[99])])),
    'sd_post_keys_shifted': lambda o, c: o.register_state_dict_post_hook(
        lambda opt, sd: dict(sd, state={k + 1: v for k, v in sd['state'].items()})),
    'sd_pre_edits_lr': lambda o, c: o.register_state_dict_pre_hook(
        lambda opt: opt.param_groups[0].__setitem__('lr', -1.0)),
    'load_pre_returns_list': lambda o, c: o.register_load_state_dict_pre_hook(lambda opt, sd: [sd]),
    'load_pre_returns_tensor': lambda o, c: o.register_load_state_dict_pre_hook(lambda opt, sd: torch.zeros(3)),
    'load_pre_returns_opt': lambda o, c: o.register_load_state_dict_pre_hook(lambda opt, sd: opt),
    'load_pre_drops_state': lambda o, c: o.register_load_state_dict_pre_hook(
        lambda opt, sd: {'param_groups': sd['param_groups']}),
    'load_pre_state_none': lambda o, c: o.register_load_state_dict_pre_hook(lambda opt, sd: dict(sd, state=None)),
    'load_pre_mutates_in_place': lambda o, c: o.register_load_state_dict_pre_hook(
        lambda opt, sd: [s.__setitem__('exp_avg', s['exp_avg'].double()) for s in sd['state'].values()] and None),
    'load_pre_lr_tensor_neg': lambda o, c: o.register_load_state_dict_pre_hook(
        lambda opt, sd: dict(sd, param_groups=[dict(g, lr=torch.tensor(-0.1)) for g in sd['param_groups']])),
    'load_post_returns_value': lambda o, c: o.register_load_state_dict_post_hook(lambda opt: 'ignored?'),
    'load_post_clears_state': lambda o, c: o.register_load_state_dict_post_hook(lambda opt: opt.state.clear()),
    'load_post_breaks_state': lambda o, c: o.register_load_state_dict_post_hook(
        lambda opt: [s.__setitem__('exp_var', s['exp_var'][:1]) for s in opt.state.values()]),
}
for nm, reg in SD_HOOKS.items():
    add(f'hook_{nm}', _sd_hook(reg), configs=('plain', 'ada_sm'), paths=('default', 'foreach', 'single', 'mixed'),
        ngroups=(1, 2), pres=(0, 2) if 'state' not in nm and 'mutates' not in nm else (2,))


# ================================================================== F. copies of the optimizer mid-training
def _copy_then_step(make_copy):
    def mut(opt, ctx):
        def action(o):
            c = make_copy(o)
            for g in c.param_groups:  # the copy steps on its own params first: the original must not notice
                for p in g['params']:
                    if p.grad is not None:
                        p.grad.mul_(-3.0)
            c.step()
            return o.step()
        ctx.action = action
    return mut


def _deepcopy_with_model(o):  # model and optimizer copied together (one memo): the copy's state follows its params
    return copy.deepcopy({'opt': o, 'params': [p for g in o.param_groups for p in g['params']]})['opt']


def _pickle_roundtrip(o):
    return pickle.loads(pickle.dumps(o))


def _torch_save_weights_only_false(o):
    buf = io.BytesIO()
    torch.save(o, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


COPIES = {'deepcopy_with_params': _deepcopy_with_model, 'pickle': _pickle_roundtrip,
          'torch_save_whole': _torch_save_weights_only_false}
for nm, mk in COPIES.items():
    add(f'copy_{nm}_then_both_step', _copy_then_step(mk), configs=('tlr', 'scale', 'sr', 'master', 'ada_sm', 'sdt_bf16'),
        paths=('default', 'fused', 'foreach', 'single', 'mixed'), ngroups=(1, 2), pres=(0, 2))


def _copy_with_hooks(opt, ctx):  # a deepcopy made while hooks are registered (they are copied too: they must not
    calls = []                   # run the original's state edits on the copy)
    opt.register_step_pre_hook(lambda o, a, k: calls.append(id(o)))
    c = copy.deepcopy(opt)
    ctx.action = lambda o: (c.step(), o.step())
    ctx.no_ref = 'copy'


add('copy_deepcopy_with_hooks', _copy_with_hooks, configs=('plain',), paths=PATHS, ngroups=(1, 2), pres=(0, 2))


# ================================================================== G. LR schedulers producing odd lr
def _sched(make, steps=2, tensor_lr=False):
    def mut(opt, ctx):
        if tensor_lr:
            for g in opt.param_groups:
                g['lr'] = torch.tensor(float(g['lr']))
        s = make(opt)
        for _ in range(steps):
            s.step()
    return mut


LS = torch.optim.lr_scheduler
SCHED5 = {
    'lambda_tensor': (lambda o: LS.LambdaLR(o, lambda e: torch.tensor(0.5) ** e), False),
    'lambda_nan': (lambda o: LS.LambdaLR(o, lambda e: float('nan') if e else 1.0), False),
    'lambda_neg': (lambda o: LS.LambdaLR(o, lambda e: -1.0 if e else 1.0), False),
    'lambda_huge': (lambda o: LS.LambdaLR(o, lambda e: 1e40 if e else 1.0), False),
    'lambda_tensor_lr_nan': (lambda o: LS.LambdaLR(o, lambda e: float('nan') if e else 1.0), True),
    'multiplicative_tensor_lr': (lambda o: LS.MultiplicativeLR(o, lambda e: 0.5), True),
    'exponential_overflow': (lambda o: LS.ExponentialLR(o, gamma=1e25), False),
    'exponential_overflow_tensor_lr': (lambda o: LS.ExponentialLR(o, gamma=1e25), True),
    'cyclic_momentum_to_one': (lambda o: LS.CyclicLR(o, 0.01, 0.1, step_size_up=1, cycle_momentum=True,
                                                     base_momentum=0.8, max_momentum=1.0), False),
    'cyclic_momentum_above_one': (lambda o: LS.CyclicLR(o, 0.01, 0.1, step_size_up=1, cycle_momentum=True,
                                                        base_momentum=0.8, max_momentum=1.2), False),
    'onecycle_momentum_one': (lambda o: LS.OneCycleLR(o, 0.1, total_steps=10, base_momentum=1.0,
                                                      max_momentum=1.0), False),
    'onecycle_tensor_lr': (lambda o: LS.OneCycleLR(o, 0.1, total_steps=10), True),
    'warm_restarts_tensor_lr': (lambda o: LS.CosineAnnealingWarmRestarts(o, T_0=2), True),
    'polynomial_power_neg': (lambda o: LS.PolynomialLR(o, total_iters=4, power=-1.0), False),
    'sequential_tensor_lr': (lambda o: LS.SequentialLR(o, [LS.ConstantLR(o, factor=0.5, total_iters=1),
                                                           LS.ExponentialLR(o, gamma=0.9)], milestones=[1]), True),
    'chained_tensor_lr': (lambda o: LS.ChainedScheduler([LS.ConstantLR(o, factor=0.5, total_iters=3),
                                                         LS.ExponentialLR(o, gamma=0.9)]), True),
    'plateau_tensor_lr': (lambda o: (lambda s: types.SimpleNamespace(step=lambda: s.step(1.0)))(
        LS.ReduceLROnPlateau(o, patience=0, factor=0.1)), True),
    'linear_end_factor_zero': (lambda o: LS.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=1), False),
}
for nm, (mk, tlr) in SCHED5.items():
    add(f'sched_{nm}', _sched(mk, tensor_lr=tlr), configs=('plain', 'ada_sm'), paths=PATHS, ngroups=(1, 2),
        pres=(0, 2))


# ================================================================== H. manual amp scalars on every path, GradScaler
def _manual_amp(scale, found):
    """grad_scale / found_inf set by hand (as GradScaler does for fused=True): every path must honour them as the
    kernel path does, or refuse them; the case's check is against a fused twin stepped the same way."""
    def mut(opt, ctx):
        opt.grad_scale = torch.tensor(scale)
        opt.found_inf = torch.tensor(found)
        twin_groups = []
        for g in opt.param_groups:
            ng = {k: v for k, v in g.items() if k != 'params'}
            ng.update(fused=True, foreach=None)
            ps = []
            for p in g['params']:
                q = _clean(p).requires_grad_()
                q.grad = _clean(p.grad)
                ps.append(q)
            ng['params'] = ps
            twin_groups.append(ng)
        twin = type(opt)(twin_groups)
        for g, tg in zip(opt.param_groups, twin.param_groups):
            for p, q in zip(g['params'], tg['params']):
                if opt.state.get(p):
                    twin.state[q] = {k: (_clean(v) if isinstance(v, Tensor) else v) for k, v in opt.state[p].items()}
        twin.grad_scale, twin.found_inf = torch.tensor(scale), torch.tensor(found)

        def post(o, ref):
            twin.step()
            bad = []
            for g, tg in zip(o.param_groups, twin.param_groups):
                for p, q in zip(g['params'], tg['params']):
                    d = close(p, q)
                    if d > 1e-5 * (1 + float(q.detach().abs().max())):
                        bad.append(f'vs the fused path: |diff|={d:.3g}')
            return bad[:2]
        ctx.post_check = post
    return mut


for nm, (sc, fi) in {'scale4': (4.0, 0.0), 'found_inf': (4.0, 1.0), 'scale1_found_inf': (1.0, 1.0)}.items():
    add(f'amp_manual_{nm}_vs_fused', _manual_amp(sc, fi), configs=('plain', 'ada_sm', 'master'),
        paths=('default', 'foreach', 'single', 'mixed', 'mixed2'), ngroups=(1, 2), pres=(0, 2))


def _scaler_case(init_scale=1024.0, enabled=True, inf_group=None, nan=False, dtype=None, growth_interval=2000):
    def mk(ctx):
        torch.manual_seed(0)
        c = dict(ctx.c)
        dt = dtype or ctx.dtype
        groups = []
        for gi, gp in enumerate(ctx.group_paths()):
            ps = [torch.randn(s, dtype=f64).to(dt).requires_grad_() for s in ((4, 3), (5,))]
            groups.append({'params': ps, 'lr': 0.01 * (gi + 1), **PATH_KW[gp]})
        opt = ctx.cls(groups, betas=(0.9, 0.99), **ctx.opts)
        for _ in range(ctx.pre):
            new_grads(opt)
            opt.step()
        new_grads(opt, init_scale if enabled else 1.0)
        applied = inf_group is not None and inf_group < len(opt.param_groups)
        if applied:
            P(opt, inf_group, 1).grad[0] = float('nan') if nan else float('inf')
        ctx.scaler = torch.amp.GradScaler('cpu', init_scale=init_scale, enabled=enabled, growth_interval=growth_interval)
        ctx.scaler.scale(torch.ones(()))
        ctx.no_ref = 'scaler'
        ctx.action = lambda o: (ctx.scaler.step(o), ctx.scaler.update())
        if applied:
            ctx.expect_skip = True
        return opt
    return mk


SCALER5 = {
    'inf_last_group': dict(inf_group=1), 'nan_first_group': dict(inf_group=0, nan=True),
    'f16_params': dict(dtype=f16), 'f16_params_inf': dict(dtype=f16, inf_group=0),
    'disabled': dict(enabled=False), 'huge_scale': dict(init_scale=3e38), 'tiny_scale': dict(init_scale=1e-30),
    'bf16_inf': dict(dtype=bf16, inf_group=0), 'growth_every_step': dict(growth_interval=1),
}
for nm, kw in SCALER5.items():
    for fused_nm, over in (('fused', {'fused': True}), ('default', {})):
        add(f'scaler5_{nm}_{fused_nm}', _scaler_case(**kw), configs=('plain', 'ada_sm', 'master')
            if 'f16' in nm or 'bf16' in nm else ('plain', 'ada_sm'),
            paths=('fused',) if fused_nm == 'fused' else ('default', 'foreach', 'mixed'), ngroups=(1, 2), pres=(0, 2),
            builds=True)


# ================================================================== I. 5000 tiny params, one bad one at the end
def _many(bad):
    def mk(ctx):
        torch.manual_seed(0)
        gps = ctx.group_paths()
        n = 5000 // len(gps)
        groups = [{'params': [torch.randn(2, dtype=ctx.dtype).requires_grad_() for _ in range(n)],
                   'lr': 0.01 * (gi + 1), **PATH_KW[gp]} for gi, gp in enumerate(gps)]
        opt = ctx.cls(groups, betas=(0.9, 0.99), **ctx.opts)
        for _ in range(ctx.pre):
            for g in opt.param_groups:
                for p in g['params']:
                    p.grad = torch.randn_like(p)
            opt.step()
        for g in opt.param_groups:
            for p in g['params']:
                p.grad = torch.randn_like(p)
        bad(opt, ctx, P(opt, len(gps) - 1, n - 1), P(opt, 0, 0))
        return opt
    return mk


def _b_grad_data(make):
    def e(opt, ctx, last, first):
        last.grad.data = make(last.grad)
    return e


def _b_state(key, make):
    def e(opt, ctx, last, first):
        s = opt.state[last]
        s[key] = make(s[key])
    return e


MANY = {
    'grad_f64': _b_grad_data(lambda g: g.double()), 'grad_shape': _b_grad_data(lambda g: torch.randn(3)),
    'grad_alias_first_grad': lambda o, c, last, first: setattr(last, 'grad', first.grad),
    'grad_is_first_param': lambda o, c, last, first: setattr(last, 'grad', first),
    'grad_nan': lambda o, c, last, first: last.grad.fill_(float('nan')),
    'grad_noncontig': lambda o, c, last, first: setattr(last, 'grad', torch.randn(2, 2)[:, 0]),
    'param_data_f16': lambda o, c, last, first: setattr(last, 'data', last.data.half()),
    'param_requires_grad_off': lambda o, c, last, first: last.requires_grad_(False),
    'param_appended_twice': lambda o, c, last, first: o.param_groups[-1]['params'].append(first),
    'state_exp_avg_f16': _b_state('exp_avg', lambda t: t.half()),
    'state_exp_var_shape': _b_state('exp_var', lambda t: t[:1]),
    'state_step_nan': _b_state('step', lambda t: torch.tensor(float('nan'))),
    'state_exp_avg_is_first_param': lambda o, c, last, first: o.state[last].__setitem__('exp_avg', first),
}
for nm, bad in MANY.items():
    pres = (1,) if nm.startswith('state') else (0, 1)
    add(f'many5000_{nm}', _many(bad), configs=('plain',), builds=True, paths=('default', 'fused', 'foreach', 'single'),
        ngroups=(1,), pres=pres)
    add(f'many5000_{nm}', _many(bad), configs=('plain', 'ada_sm'), builds=True, paths=('mixed',), ngroups=(2,), pres=pres)


# ================================================================== J. torch.compile(backend="eager") steps (few: slow)
def _compiled(edit):
    def mut(opt, ctx):
        if edit:
            edit(opt, ctx)
        torch._dynamo.reset()
        step = torch.compile(opt.step, backend='eager')
        ctx.action = lambda o: step()
        ctx.ref_action = lambda o: o.step()
    return mut


COMPILED = {
    'plain': None,
    'grad_f64_data': lambda o, c: setattr(P(o, 0, 0).grad, 'data', P(o, 0, 0).grad.data.double()),
    'state_f16': lambda o, c: o.state[P(o, 0, 0)].__setitem__('exp_avg', o.state[P(o, 0, 0)]['exp_avg'].half()),
    'tensor_lr_neg': lambda o, c: o.param_groups[0].__setitem__('lr', torch.tensor(-0.01)),
    'grad_alias': lambda o, c: setattr(P(o, 0, 1), 'grad', P(o, 0, 0).grad.view(-1)[:5]),
    'beta_one': lambda o, c: o.param_groups[0].__setitem__('betas', (1.0, 0.99)),
}
for nm, e in COMPILED.items():
    add(f'compile_{nm}', _compiled(e), configs=('plain',), paths=('default', 'foreach'), ngroups=(1,),
        pres=(2,) if nm == 'state_f16' else (0,))


# ================================================================== K. an efficient zero tensor as a later group's lr
def group_lr_efficient_zero(opt, ctx):  # (the grouped kernel call reads its Tensor?[] lr list)
    opt.param_groups[-1]['lr'] = torch._efficientzerotensor(())


case(configs=('plain', 'ada_sm', 'master'), paths=PATHS, ngroups=(1, 2, 3), pres=(0, 2))(group_lr_efficient_zero)
