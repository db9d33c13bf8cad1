"""Sixth case set for scripts/probe_step/harness.py (branch wt-probe7): the optimizer in the PyTorch ecosystem, with
inputs that cases 1-5 do not try.

- LR schedulers not tried before: torch.optim.swa_utils.SWALR (float / tensor / per-group swa_lr, cos / linear),
  transformers' get_scheduler family, schedulers resumed with last_epoch (initial_lr set by hand, as a float, a
  tensor or a numpy number), OneCycleLR(cycle_momentum) inside SequentialLR / ChainedScheduler, a scheduler's
  state_dict loaded into another scheduler;
- torch.optim.swa_utils.AveragedModel (also EMA, use_buffers) updated between steps;
- accelerate's AcceleratedOptimizer wrapper (step, zero_grad, state_dict round trip, gradient accumulation);
- transformers Trainer-style param groups with extra keys ('name', 'initial_lr', per-group 'weight_decay', an empty
  'params' list, 'param_names'), stepped and round-tripped through state_dict into a fresh optimizer;
- torch.distributed.checkpoint.state_dict get / set_optimizer_state_dict on a one-process gloo group;
- clip_grad_norm_ / clip_grad_value_ (foreach True / False) before the step, also with non-finite grads;
- torch.set_default_device('meta') / set_default_dtype around construction, load_state_dict and step;
- torch.save / torch.load(map_location=..., mmap=True, weights_only=True) round trips of the state_dict;
- use_deterministic_algorithms(True) (with fill_uninitialized_memory), anomaly mode, autocast around the step, on
  the stochastic-rounding and master-weight configs.
"""
import copy, io, math, os, types

import numpy as np
import torch
from torch import Tensor
import torch.nn as nn
try:  # (imported once here, before the forks: importing them in every case would take seconds)
    import transformers.optimization  # noqa: F401
    from transformers import get_scheduler  # noqa: F401
    import accelerate, accelerate.optimizer, accelerate.state  # noqa: F401
except Exception:  # pragma: no cover
    pass
import torch.distributed.checkpoint.state_dict  # noqa: F401,E402
from harness import (P, st, case, new_grads, build, snapshot, SGDF, AdaSGDF, CONFIGS, PATH_KW, PATHS, SHAPES, close,
                     _clean, make_ref, compare_ref)

f32, f64, bf16, f16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
LS = torch.optim.lr_scheduler
P4 = ('default', 'fused', 'foreach', 'single', 'mixed')


def add(name, fn, **kw):
    fn.__name__ = name
    case(**kw)(fn)


def _both(fn):
    """A case whose action runs fn(opt) and then step(); the reference runs the same fn on itself first."""
    def mut(opt, ctx):
        def action(o):
            fn(o)
            return o.step()
        ctx.action = action
        ctx.ref_action = action
    return mut


# ================================================================== A. schedulers
def _sched(make, steps=2, tensor_lr=False, prep=None):
    def mut(opt, ctx):
        if tensor_lr:
            for g in opt.param_groups:
                g['lr'] = torch.tensor(float(g['lr']))
        if prep:
            prep(opt)
        s = make(opt)
        for _ in range(steps):
            s.step()
    return mut


def _initial_lr(kind):
    def prep(opt):
        for g in opt.param_groups:
            v = float(g['lr'])
            g['initial_lr'] = {'float': v, 'tensor': torch.tensor(v), 'np': np.float32(v), 'np64': np.float64(v),
                               'int0': 0, 'str': str(v)}[kind]
    return prep


def _tf_sched(name, **kw):
    def make(o):
        from transformers import get_scheduler
        return get_scheduler(name, o, num_warmup_steps=1, num_training_steps=6, **kw)
    return make


def _sched_loaded(o):  # a scheduler's state from another optimizer's scheduler
    other = SGDF([torch.zeros(1, requires_grad=True) for _ in o.param_groups] and
                 [{'params': [torch.zeros(1, requires_grad=True)], 'lr': 0.5} for _ in o.param_groups])
    s0 = LS.StepLR(other, step_size=1, gamma=0.1)
    other.step()
    s0.step()
    s = LS.StepLR(o, step_size=1, gamma=0.1)
    s.load_state_dict(s0.state_dict())
    return s


SWA = torch.optim.swa_utils
SCHED6 = {
    'swalr_cos': (lambda o: SWA.SWALR(o, swa_lr=0.05, anneal_epochs=2, anneal_strategy='cos'), False, None),
    'swalr_linear_tensor_lr': (lambda o: SWA.SWALR(o, swa_lr=0.05, anneal_epochs=3, anneal_strategy='linear'),
                               True, None),
    'swalr_per_group': (lambda o: SWA.SWALR(o, swa_lr=[0.05 * (i + 1) for i in range(len(o.param_groups))],
                                            anneal_epochs=1), False, None),
    'swalr_swa_lr_zero': (lambda o: SWA.SWALR(o, swa_lr=0.0, anneal_epochs=1), False, None),
    'swalr_swa_lr_negative': (lambda o: SWA.SWALR(o, swa_lr=-0.1, anneal_epochs=1), False, None),
    'swalr_swa_lr_tensor': (lambda o: SWA.SWALR(o, swa_lr=torch.tensor(0.05), anneal_epochs=1), False, None),
    'tf_linear': (_tf_sched('linear'), False, None),
    'tf_cosine': (_tf_sched('cosine'), False, None),
    'tf_cosine_restarts': (_tf_sched('cosine_with_restarts'), False, None),
    'tf_polynomial': (_tf_sched('polynomial'), False, None),
    'tf_const_warmup': (_tf_sched('constant_with_warmup'), False, None),
    'tf_inverse_sqrt': (_tf_sched('inverse_sqrt'), False, None),
    'tf_cosine_min_lr': (_tf_sched('cosine_with_min_lr', scheduler_specific_kwargs={'min_lr': 1e-3}), False, None),
    'tf_wsd': (_tf_sched('warmup_stable_decay', scheduler_specific_kwargs={'num_decay_steps': 2}), False, None),
    'tf_linear_tensor_lr': (_tf_sched('linear'), True, None),
    'tf_cosine_tensor_lr': (_tf_sched('cosine'), True, None),
    'resume_initial_lr_float': (lambda o: LS.ExponentialLR(o, 0.5, last_epoch=3), False, _initial_lr('float')),
    'resume_initial_lr_tensor': (lambda o: LS.ExponentialLR(o, 0.5, last_epoch=3), False, _initial_lr('tensor')),
    'resume_initial_lr_np32': (lambda o: LS.ExponentialLR(o, 0.5, last_epoch=3), False, _initial_lr('np')),
    'resume_initial_lr_np64_cos': (lambda o: LS.CosineAnnealingLR(o, 4, last_epoch=2), False, _initial_lr('np64')),
    'resume_initial_lr_zero': (lambda o: LS.LinearLR(o, last_epoch=1), False, _initial_lr('int0')),
    'resume_initial_lr_str': (lambda o: LS.ExponentialLR(o, 0.5, last_epoch=3), False, _initial_lr('str')),
    'sequential_onecycle': (lambda o: LS.SequentialLR(o, [LS.OneCycleLR(o, 0.1, total_steps=4, cycle_momentum=True),
                                                          LS.ConstantLR(o, factor=0.5)], milestones=[2]), False, None),
    'chained_onecycle_exp': (lambda o: LS.ChainedScheduler([LS.OneCycleLR(o, 0.1, total_steps=6),
                                                            LS.ExponentialLR(o, 0.9)]), False, None),
    'onecycle_three_phase_beta0': (lambda o: LS.OneCycleLR(o, 0.1, total_steps=6, three_phase=True,
                                                           base_momentum=0.0, max_momentum=0.0), False, None),
    'onecycle_beta1_rounds_to_one': (lambda o: LS.OneCycleLR(o, 0.1, total_steps=6, base_momentum=0.99999999,
                                                             max_momentum=0.99999999), False, None),
    'onecycle_tensor_lr_momentum': (lambda o: LS.OneCycleLR(o, 0.1, total_steps=6, cycle_momentum=True), True, None),
    'cyclic_exp_range_momentum': (lambda o: LS.CyclicLR(o, 0.01, 0.1, step_size_up=1, mode='exp_range', gamma=0.9,
                                                        cycle_momentum=True, base_momentum=0.5, max_momentum=0.95),
                                  False, None),
    'cyclic_tensor_lr_momentum': (lambda o: LS.CyclicLR(o, 0.01, 0.1, step_size_up=1, cycle_momentum=True,
                                                        base_momentum=0.5, max_momentum=0.95), True, None),
    'step_loaded_state': (_sched_loaded, False, None),
    'plateau_min_lr_per_group': (lambda o: (lambda s: types.SimpleNamespace(step=lambda: s.step(1.0)))(
        LS.ReduceLROnPlateau(o, patience=0, factor=0.5, min_lr=[1e-3] * len(o.param_groups))), True, None),
}
for nm, (mk, tlr, prep) in SCHED6.items():
    add(f'sched6_{nm}', _sched(mk, tensor_lr=tlr, prep=prep), configs=('plain', 'ada_sm'), paths=P4, ngroups=(1, 2),
        pres=(0, 2))


# ================================================================== B. AveragedModel between steps
def _swa(kind):
    def mut(opt, ctx):
        params = [p for g in opt.param_groups for p in g['params']]
        holder = nn.Module()
        holder.ps = nn.ParameterList([nn.Parameter(p.detach().clone()) for p in params])
        if kind == 'ema':
            avg = SWA.AveragedModel(holder, multi_avg_fn=SWA.get_ema_multi_avg_fn(0.9))
        elif kind == 'ema_single':
            avg = SWA.AveragedModel(holder, avg_fn=SWA.get_ema_avg_fn(0.9))
        elif kind == 'use_buffers':
            avg = SWA.AveragedModel(holder, use_buffers=True)
        else:
            avg = SWA.AveragedModel(holder)

        def fn(o):
            if o is opt:
                with torch.no_grad():
                    for hp, p in zip(holder.ps, params):
                        hp.copy_(p)
                avg.update_parameters(holder)
                avg.update_parameters(holder)
        ctx.action = lambda o: (fn(o), o.step())[1]
        ctx.ref_action = lambda o: o.step()
    return mut


for kind in ('swa', 'ema', 'ema_single', 'use_buffers'):
    add(f'swa6_averaged_{kind}', _swa(kind), configs=('plain', 'master', 'sr'), paths=P4, ngroups=(1, 2), pres=(0, 2))


def _swa_optimize_average(opt, ctx):
    """The optimizer built on an AveragedModel's parameters (a user mistake that still must step cleanly)."""
    ps = [p for g in opt.param_groups for p in g['params']]
    holder = nn.Module()
    holder.ps = nn.ParameterList([nn.Parameter(p.detach().clone()) for p in ps])
    avg = SWA.AveragedModel(holder)
    o2 = type(opt)(avg.parameters(), lr=0.01)
    for p in avg.parameters():
        p.grad = torch.ones_like(p)

    def action(o):
        o2.step()
        return o.step()
    ctx.action = action
    ctx.ref_action = lambda o: o.step()


add('swa6_optimize_averaged_copy', _swa_optimize_average, configs=('plain',), paths=P4, ngroups=(1, 2), pres=(0, 2))


# ================================================================== C. accelerate's AcceleratedOptimizer
def _accel(kind):
    def mut(opt, ctx):
        from accelerate.optimizer import AcceleratedOptimizer
        from accelerate import Accelerator
        from accelerate.state import GradientState
        Accelerator(cpu=True)  # (the wrapper reads the shared accelerator state)
        wrapped = AcceleratedOptimizer(opt, device_placement=False)
        if kind == 'step':
            ctx.action = lambda o: wrapped.step() if o is opt else o.step()
        elif kind == 'sd_roundtrip':
            def action(o):
                if o is opt:
                    wrapped.load_state_dict(copy.deepcopy(wrapped.state_dict()))
                    return wrapped.step()
                return o.step()
            ctx.action = action
        elif kind == 'zero_grad_keep':
            def action(o):
                if o is opt:
                    saved = [p.grad.clone() for g in o.param_groups for p in g['params']]
                    wrapped.zero_grad(set_to_none=False)
                    for p, g in zip([p for g in o.param_groups for p in g['params']], saved):
                        p.grad.add_(g)
                    return wrapped.step()
                return o.step()
            ctx.action = action
        elif kind == 'no_sync_skips':  # gradient accumulation: not a sync step, the wrapper must not step
            gs = GradientState()
            gs._set_sync_gradients(False)
            ctx.action = lambda o: wrapped.step()
            ctx.expect_skip = True
        elif kind == 'step_was_skipped':
            def action(o):
                wrapped.step()
                assert wrapped.step_was_skipped is False
            ctx.action = action
            ctx.ref_action = lambda o: o.step()
        elif kind == 'train_eval':
            def action(o):
                if o is opt:
                    wrapped.eval()
                    wrapped.train()
                    return wrapped.step()
                return o.step()
            ctx.action = action
        elif kind == 'pickle':
            import pickle
            def action(o):
                if o is opt:
                    w2 = pickle.loads(pickle.dumps(wrapped))
                    for g in w2.optimizer.param_groups:
                        for p in g['params']:
                            if p.grad is not None:
                                p.grad.mul_(-1.0)
                    w2.step()
                    return wrapped.step()
                return o.step()
            ctx.action = action
    return mut


for kind in ('step', 'sd_roundtrip', 'zero_grad_keep', 'no_sync_skips', 'step_was_skipped', 'train_eval', 'pickle'):
    add(f'accel6_{kind}', _accel(kind), configs=('plain', 'ada_sm', 'sr', 'master', 'tlr'), paths=P4, ngroups=(1, 2),
        pres=(0, 2))


def _accel_prepare(mixed):
    def mk(ctx):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        AcceleratorState._reset_state(True) if hasattr(AcceleratorState, '_reset_state') else None
        acc = Accelerator(cpu=True, mixed_precision=mixed, gradient_accumulation_steps=2)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        ref_model = copy.deepcopy(model)
        opt = ctx.cls(model.parameters(), lr=0.01, **PATH_KW[ctx.path], **ctx.opts)
        ref = ctx.cls(ref_model.parameters(), lr=0.01, **PATH_KW[ctx.path], **ctx.opts)
        m2, o2 = acc.prepare(model, opt)
        x = torch.randn(6, 4)
        for i in range(4):
            with acc.accumulate(m2):
                loss = m2(x * (i + 1)).square().mean()
                acc.backward(loss)
                o2.step()
                o2.zero_grad()
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=mixed == 'bf16'):
                rl = ref_model(x * (i + 1)).square().mean()
            (rl / 2).backward()
            if i % 2 == 1:
                ref.step()
                ref.zero_grad()
        ctx.extra['d'] = torch.tensor(max(close(a, b) for a, b in zip(model.parameters(), ref_model.parameters())))
        ctx.action = lambda o: None
        ctx.no_ref = 'accelerate prepare: compared inside'
        ctx.check_ok = lambda: (('OK_MATCH' if float(ctx.extra['d']) < 1e-4 else 'OK_MISMATCH'),
                                [f'max |diff| {float(ctx.extra["d"]):.3g}'])
        return opt
    return mk


for mixed in ('no', 'bf16'):
    add(f'accel6_prepare_accumulate_{mixed}', _accel_prepare(mixed), configs=('plain', 'ada_sm', 'f64'),
        paths=('default', 'fused', 'foreach', 'single'), ngroups=(1,), pres=(0,), builds=True)


# ================================================================== D. Trainer-style param groups
def _trainer_groups(kind):
    def mk(ctx):
        torch.manual_seed(0)
        dt = ctx.dtype
        ps = [torch.randn(s, dtype=f64).to(dt).requires_grad_() for s in SHAPES + [(3,), (2, 2)]]
        decay, no_decay = ps[:3], ps[3:]
        kw = PATH_KW[ctx.path] if not ctx.path.startswith('mixed') else {}
        g1 = {'params': decay, 'weight_decay': 0.01, 'name': 'decay', **kw}
        g2 = {'params': no_decay, 'weight_decay': 0.0, 'name': 'no_decay', **kw}
        if kind == 'initial_lr':
            g1['initial_lr'], g2['initial_lr'] = 0.01, 0.02
        if kind == 'initial_lr_tensor':
            g1['initial_lr'], g2['initial_lr'] = torch.tensor(0.01), torch.tensor(0.02)
        if kind == 'empty_group':
            g2 = {'params': [], 'weight_decay': 0.0, 'name': 'empty', **kw}
            decay.extend(no_decay)
        if kind == 'lr_per_group_np':
            g1['lr'], g2['lr'] = np.float32(0.01), np.float64(0.02)
        if kind == 'betas_list':
            g1['betas'] = [0.9, 0.99]
        if kind == 'extra_tensor_key':
            g1['grad_norm_scale'] = torch.ones(3)
        if kind == 'param_names':
            g1['param_names'] = [f'decay.{i}' for i in range(len(decay))]
            g2['param_names'] = [f'nodecay.{i}' for i in range(len(no_decay))]
        groups = [g1, g2]
        if kind == 'named_params':
            groups = [{'params': [(f'w{i}', p) for i, p in enumerate(decay)], 'weight_decay': 0.01, **kw},
                      {'params': [(f'b{i}', p) for i, p in enumerate(no_decay)], 'weight_decay': 0.0, **kw}]
        opt = ctx.cls(groups, lr=0.01, **ctx.opts)
        for _ in range(ctx.pre):
            new_grads(opt)
            opt.step()
        new_grads(opt)
        if kind == 'sd_roundtrip_fresh':  # Trainer's resume: a fresh optimizer of the same groups loads the sd
            sd = copy.deepcopy(opt.state_dict())
            ps2 = [p.detach().clone().requires_grad_() for p in ps]
            for p, q in zip(ps, ps2):
                q.grad = p.grad.clone()
            o2 = ctx.cls([{'params': ps2[:3], 'weight_decay': 0.01, 'name': 'decay', **kw},
                          {'params': ps2[3:], 'weight_decay': 0.0, 'name': 'no_decay', **kw}], lr=0.01, **ctx.opts)
            o2.load_state_dict(sd)
            ctx.action = lambda o: (o2.step(), o.step())[1] if o is opt else o.step()
            ctx.post_check = lambda o, ref: [f'fresh p{i} |diff| {close(a, b):.3g}' for i, (a, b) in
                                             enumerate(zip(ps, ps2)) if close(a, b) > 1e-6]
        return opt
    return mk


TRAINER = ('plain', 'initial_lr', 'initial_lr_tensor', 'empty_group', 'lr_per_group_np', 'betas_list',
           'extra_tensor_key', 'param_names', 'named_params', 'sd_roundtrip_fresh')
for kind in TRAINER:
    add(f'trainer6_{kind}', _trainer_groups(kind), configs=('plain', 'ada_sm', 'master', 'sr', 'f64'),
        paths=('default', 'fused', 'foreach', 'single'), ngroups=(1,), pres=(0, 2), builds=True)


# ================================================================== E. torch.distributed.checkpoint state dicts
_PG = {}


def _ensure_pg():
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group('gloo', init_method=f'file:///tmp/probe7_pg_{os.getpid()}', rank=0, world_size=1)


def _dcp(kind):
    """The optimizer's state through get_optimizer_state_dict into a fresh optimizer with set_optimizer_state_dict;
    the harness then steps (and compares) the fresh one. Its loaded state is compared with the original's first."""
    def mk(ctx):
        from torch.distributed.checkpoint.state_dict import (get_optimizer_state_dict, set_optimizer_state_dict,
                                                             StateDictOptions)
        _ensure_pg()
        opt = build(ctx)
        holder = nn.Module()
        flat = [p for g in opt.param_groups for p in g['params']]
        for i, p in enumerate(flat):
            q = nn.Parameter(p.detach())  # the same storage, as a module's Parameter
            q.grad = p.grad
            holder.register_parameter(f'p{i}', q)
            for g in opt.param_groups:
                for j, r in enumerate(g['params']):
                    if r is p:
                        g['params'][j] = q
            if p in opt.state:
                opt.state[q] = opt.state.pop(p)
        opts = {'default': StateDictOptions(), 'full': StateDictOptions(full_state_dict=True),
                'nonstrict': StateDictOptions(strict=False)}[kind.split('_')[0]]
        sd = get_optimizer_state_dict(holder, opt, options=opts)
        if kind.endswith('_lr_changed'):
            for g in sd['param_groups']:
                g['lr'] = 0.03
        if kind.endswith('_drop_state'):
            sd['state'] = {}
        if kind.endswith('_int_step'):
            for s in sd['state'].values():
                s['step'] = int(s['step'])
        o2 = type(opt)([{**{k: v for k, v in g.items() if k != 'params'}, 'lr': 0.5, 'params': list(g['params'])}
                        for g in opt.param_groups])
        set_optimizer_state_dict(holder, o2, sd, options=opts)
        bad = []
        for g1, g2 in zip(opt.param_groups, o2.param_groups):
            want_lr = 0.03 if kind.endswith('_lr_changed') else float(g1['lr'])
            if float(g2['lr']) != want_lr:
                bad.append(f'loaded lr {float(g2["lr"])} for {want_lr}')
            for p in g1['params']:
                s1, s2 = opt.state.get(p, {}), o2.state.get(p, {})
                if kind.endswith('_drop_state'):
                    continue
                for k in set(s1) | set(s2):
                    if k == 'rounding_seed' and k in s1 and k in s2:
                        if int(s1[k]) != int(s2[k]):
                            bad.append('rounding_seed not kept')
                        continue
                    if k not in s1 or k not in s2:
                        bad.append(f'loaded state key {k} only in {"original" if k in s1 else "loaded"}')
                    elif isinstance(s1[k], Tensor) and (s1[k].dtype != s2[k].dtype or close(s1[k], s2[k]) > 0):
                        bad.append(f'loaded {k} differs ({s1[k].dtype} -> {s2[k].dtype})')
        ctx.post_check = lambda o, ref: bad
        return o2
    return mk


for kind in ('default', 'full', 'nonstrict', 'default_lr_changed', 'full_drop_state', 'default_int_step'):
    add(f'dcp6_{kind}', _dcp(kind), configs=('plain', 'ada_sm', 'master', 'sr', 'sdt_bf16'),
        paths=('default', 'fused', 'foreach', 'single', 'mixed'), ngroups=(1, 2), pres=(2,), builds=True)


# ================================================================== F. gradient clipping before the step
def _clip(kind):
    def fn(o):
        ps = [p for g in o.param_groups for p in g['params'] if p.grad is not None]
        if kind == 'inf_grad' or kind == 'nan_grad':
            ps[-1].grad.view(-1)[0] = math.inf if kind == 'inf_grad' else math.nan
        if kind.startswith('norm'):
            torch.nn.utils.clip_grad_norm_(ps, 0.5, foreach=kind.endswith('foreach'))
        elif kind == 'norm_inf_type':
            torch.nn.utils.clip_grad_norm_(ps, 0.5, norm_type=math.inf)
        elif kind == 'value_foreach':
            torch.nn.utils.clip_grad_value_(ps, 0.1, foreach=True)
        elif kind in ('inf_grad', 'nan_grad'):
            torch.nn.utils.clip_grad_norm_(ps, 0.5, foreach=True, error_if_nonfinite=False)
        elif kind == 'error_if_nonfinite':
            ps[-1].grad.view(-1)[0] = math.inf
            torch.nn.utils.clip_grad_norm_(ps, 0.5, foreach=True, error_if_nonfinite=True)
        elif kind == 'total_norm_then_scale':
            n = torch.nn.utils.get_total_norm([p.grad for p in ps], foreach=True)
            torch.nn.utils.clip_grads_with_norm_(ps, 0.5, n, foreach=True)
    return fn


for kind in ('norm_foreach', 'norm_single', 'norm_inf_type', 'value_foreach', 'inf_grad', 'nan_grad',
             'error_if_nonfinite', 'total_norm_then_scale'):
    add(f'clip6_{kind}', _both(_clip(kind)), configs=('plain', 'f16', 'master', 'ada_var'), paths=P4,
        ngroups=(1, 2), pres=(0, 2))


# ================================================================== G. default device / dtype contexts
def _default_ctx(kind):
    def mut(opt, ctx):
        def action(o):
            old = torch.get_default_dtype()
            try:
                if kind == 'device_meta_step':
                    torch.set_default_device('meta')
                    return o.step()
                if kind == 'device_meta_load':
                    sd = copy.deepcopy(o.state_dict())
                    torch.set_default_device('meta')
                    try:
                        o.load_state_dict(sd)
                    finally:
                        torch.set_default_device(None)
                    return o.step()
                if kind == 'device_cpu_step':
                    torch.set_default_device('cpu')
                    return o.step()
                if kind == 'dtype_f64_load':
                    sd = copy.deepcopy(o.state_dict())
                    torch.set_default_dtype(f64)
                    o.load_state_dict(sd)
                    return o.step()
                if kind == 'dtype_bf16_step':
                    torch.set_default_dtype(bf16)
                    return o.step()
                if kind == 'dtype_f16_load_int_step':
                    sd = copy.deepcopy(o.state_dict())
                    for s in sd['state'].values():
                        s['step'] = int(s['step']) + 3000
                    torch.set_default_dtype(f16)
                    o.load_state_dict(sd)
                    torch.set_default_dtype(old)
                    o.step()
                    bad = [float(s['step']) for s in o.state.values() if float(s['step']) != float(int(float(s['step'])))]
                    assert not bad, bad
                    return None
            finally:
                torch.set_default_device(None)
                torch.set_default_dtype(old)
        ctx.action = action
        if kind in ('dtype_f16_load_int_step',):
            ctx.no_ref = 'checks itself'
    return mut


for kind in ('device_meta_step', 'device_meta_load', 'device_cpu_step', 'dtype_f64_load', 'dtype_bf16_step',
             'dtype_f16_load_int_step'):
    add(f'default6_{kind}', _default_ctx(kind), configs=('plain', 'master', 'sr', 'tlr', 'ada_sm'), paths=P4,
        ngroups=(1, 2), pres=(0, 2) if 'load' not in kind else (2,))


def _ctor_under_default(kind):
    def mk(ctx):
        torch.manual_seed(0)
        ps = [torch.randn(s, dtype=f64).to(ctx.dtype).requires_grad_() for s in SHAPES]
        try:
            if kind == 'meta':
                torch.set_default_device('meta')
            elif kind == 'f64':
                torch.set_default_dtype(f64)
            elif kind == 'f16':
                torch.set_default_dtype(f16)
            opt = ctx.cls(ps, lr=0.01, **PATH_KW[ctx.path], **ctx.opts)
            if kind == 'meta_tensor_lr':
                opt = ctx.cls(ps, lr=torch.tensor(0.01, device='cpu'), **PATH_KW[ctx.path], **ctx.opts)
                torch.set_default_device('meta')
                opt.add_param_group({'params': [torch.randn(3, device='cpu').to(ctx.dtype).requires_grad_()]})
        finally:
            torch.set_default_device(None)
            torch.set_default_dtype(f32)
        for _ in range(ctx.pre):
            new_grads(opt)
            opt.step()
        new_grads(opt)
        return opt
    return mk


for kind in ('meta', 'f64', 'f16', 'meta_tensor_lr'):
    add(f'default6_ctor_{kind}', _ctor_under_default(kind), configs=('plain', 'master', 'sr', 'ada_sm'),
        paths=('default', 'fused', 'foreach', 'single'), ngroups=(1,), pres=(0, 2), builds=True)


# ================================================================== H. torch.save / torch.load variants
def _saveload(kind):
    def mut(opt, ctx):
        def action(o):
            if o is not opt:
                return o.step()
            buf = io.BytesIO()
            sd = o.state_dict()
            if kind == 'mmap':
                path = f'/tmp/probe7_sd_{os.getpid()}.pt'
                torch.save(sd, path)
                sd2 = torch.load(path, mmap=True, weights_only=True)
            else:
                torch.save(sd, buf)
                buf.seek(0)
                loc = {'cpu': 'cpu', 'device': torch.device('cpu'), 'lambda': lambda s, l: s,
                       'dict': {'cpu': 'cpu'}, 'meta': 'meta', 'none': None}[kind]
                sd2 = torch.load(buf, map_location=loc, weights_only=True)
            o.load_state_dict(sd2)
            if kind == 'mmap':  # the loaded state must not write through to the file's mapping, nor alias sd2
                for s2 in sd2['state'].values():
                    for v in s2.values():
                        if isinstance(v, Tensor):
                            for s in o.state.values():
                                for w in s.values():
                                    if isinstance(w, Tensor) and w.numel() and v.numel() and \
                                            w.untyped_storage().data_ptr() == v.untyped_storage().data_ptr():
                                        raise AssertionError('loaded state aliases the mmapped checkpoint')
            return o.step()
        ctx.action = action
        ctx.ref_action = lambda o: o.step()
    return mut


for kind in ('cpu', 'device', 'lambda', 'dict', 'meta', 'none', 'mmap'):
    add(f'saveload6_{kind}', _saveload(kind), configs=('plain', 'tlr', 'master', 'sr', 'ada_sm', 'sdt_bf16'),
        paths=P4, ngroups=(1, 2), pres=(2,))


# ================================================================== I. global modes around the step
def _mode(kind):
    def mut(opt, ctx):
        def action(o):
            if kind == 'deterministic':
                torch.use_deterministic_algorithms(True)
                try:
                    return o.step()
                finally:
                    torch.use_deterministic_algorithms(False)
            if kind == 'deterministic_fill':
                torch.use_deterministic_algorithms(True)
                old = torch.utils.deterministic.fill_uninitialized_memory
                torch.utils.deterministic.fill_uninitialized_memory = True
                try:
                    return o.step()
                finally:
                    torch.use_deterministic_algorithms(False)
                    torch.utils.deterministic.fill_uninitialized_memory = old
            if kind == 'anomaly_nan_grad':
                for g in o.param_groups:
                    g['params'][0].grad.view(-1)[0] = math.nan
                with torch.autograd.detect_anomaly(check_nan=True):
                    return o.step()
            if kind == 'autocast_bf16':
                with torch.autocast('cpu', dtype=bf16):
                    return o.step()
            if kind == 'autocast_f16':
                with torch.autocast('cpu', dtype=f16):
                    return o.step()
            if kind == 'enable_grad_lr_requires_grad':
                for g in o.param_groups:
                    g['lr'] = torch.tensor(float(g['lr']), requires_grad=True)
                with torch.enable_grad():
                    return o.step()
            if kind == 'set_grad_enabled_false':
                with torch.set_grad_enabled(False):
                    return o.step()
            if kind == 'num_threads_4':
                torch.set_num_threads(4)
                try:
                    return o.step()
                finally:
                    torch.set_num_threads(1)
            if kind == 'flush_denormal':
                torch.set_flush_denormal(True)
                try:
                    return o.step()
                finally:
                    torch.set_flush_denormal(False)
        ctx.action = action
        if kind == 'anomaly_nan_grad':
            def ref_action(o):
                for g in o.param_groups:
                    g['params'][0].grad.view(-1)[0] = math.nan
                return o.step()
            ctx.ref_action = ref_action
        elif kind == 'enable_grad_lr_requires_grad':
            ctx.ref_action = lambda o: o.step()
        else:
            ctx.ref_action = lambda o: o.step()
    return mut


for kind in ('deterministic', 'deterministic_fill', 'anomaly_nan_grad', 'autocast_bf16', 'autocast_f16',
             'enable_grad_lr_requires_grad', 'set_grad_enabled_false', 'num_threads_4', 'flush_denormal'):
    add(f'mode6_{kind}', _mode(kind), configs=('plain', 'master', 'sr', 'ada_var'), paths=P4,
        ngroups=(1, 2), pres=(0, 2))


# ================================================================== J. capturable=True on the CPU with odd tensor lr
def _register_config(name, **c):  # (into the harness run as __main__ too: its Ctx reads that module's CONFIGS)
    import __main__
    for configs in {id(CONFIGS): CONFIGS, id(getattr(__main__, 'CONFIGS', CONFIGS)): getattr(__main__, 'CONFIGS',
                                                                                            CONFIGS)}.values():
        configs[name] = c


_register_config('cap', cls=SGDF, dtype=f32, opts={'capturable': True})
_register_config('cap_ada', cls=AdaSGDF, dtype=f32, opts={'capturable': True, 'preconditioner': 'second_moment'})
_register_config('cap_sr', cls=SGDF, dtype=bf16, opts={'capturable': True, 'stochastic_rounding': True})

CAP_LR = {
    'shape1': lambda v: torch.full((1,), v),
    'shape11': lambda v: torch.full((1, 1), v),
    'shape111_f64': lambda v: torch.full((1, 1, 1), v, dtype=f64),
    'f64': lambda v: torch.tensor(v, dtype=f64),
    'bf16': lambda v: torch.tensor(v, dtype=bf16),
    'f16': lambda v: torch.tensor(v, dtype=f16),
    'requires_grad': lambda v: torch.tensor(v, requires_grad=True),
    'neg_view': lambda v: torch._neg_view(torch.tensor(-v)),
    'expanded': lambda v: torch.tensor(v).expand(()),
    'strided_1': lambda v: torch.full((3,), v)[1:2],
    'channels_last_1': lambda v: torch.full((1, 1, 1, 1), v).contiguous(memory_format=torch.channels_last),
    'inference': lambda v: (lambda: torch.inference_mode()(lambda: torch.tensor(v))())(),
}


def _cap_lr(kind):
    def mut(opt, ctx):
        g = opt.param_groups[ctx.target]
        g['lr'] = CAP_LR[kind](float(g['lr']))
    return mut


for kind in CAP_LR:
    add(f'cap6_lr_{kind}', _cap_lr(kind), configs=('cap', 'cap_ada', 'cap_sr', 'plain'), paths=P4, ngroups=(1, 2),
        pres=(0, 2))
    add(f'cap6_lr_{kind}_last_group', _cap_lr(kind), configs=('cap', 'cap_ada'), paths=P4, ngroups=(2,), pres=(0, 2),
        target=1)


def _cap_edit(kind):
    def mut(opt, ctx):
        s = st(opt, ctx.target, 0) if opt.state else None
        if kind == 'step_f64' and s:
            s['step'] = s['step'].double()
        elif kind == 'step_shape1' and s:
            s['step'] = s['step'].reshape(1)
        elif kind == 'step_int' and s:
            s['step'] = s['step'].long()
        elif kind == 'step_2pow24' and s:
            s['step'].fill_(2.0 ** 24)
        elif kind == 'step_python_int' and s:
            s['step'] = int(s['step'])
        elif kind == 'scalars':
            opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(0.0)
        elif kind == 'lr_python_then_tensor':
            for g in opt.param_groups:
                g['lr'] = torch.tensor(float(g['lr']))
    return mut


for kind in ('step_f64', 'step_shape1', 'step_int', 'step_2pow24', 'step_python_int', 'scalars',
             'lr_python_then_tensor'):
    add(f'cap6_{kind}', _cap_edit(kind), configs=('cap', 'cap_ada', 'cap_sr'), paths=P4, ngroups=(1, 2),
        pres=(0, 2) if not kind.startswith('step') else (2,))


# ================================================================== K. checkpoint step counts at float32's limits
def _ckpt_step(kind):
    def mut(opt, ctx):
        def action(o):
            sd = copy.deepcopy(o.state_dict())
            for s in sd['state'].values():
                s['step'] = {'int_1e40': 10 ** 40, 'int_2pow64': 2 ** 64, 'float_3p5e38': 3.5e38,
                             'f64_1e39': torch.tensor(1e39, dtype=f64), 'int_2pow24p1': 2 ** 24 + 1,
                             'i64_2pow24p3': torch.tensor(2 ** 24 + 3), 'f64_2pow24p1': torch.tensor(2.0 ** 24 + 1,
                                                                                                    dtype=f64)}[kind]
            o.load_state_dict(sd)
            o.step()
            if kind in ('int_2pow24p1', 'i64_2pow24p3', 'f64_2pow24p1'):  # one step later the count must be +1
                want = float(int(float(sd['state'][0]['step'])) + 1)
                got = [float(s['step']) for s in o.state.values()]
                assert all(g == want for g in got), f'step count {got[0]} after loading {want - 1} and one step'
        ctx.action = action
        ctx.no_ref = 'checks itself'
    return mut


for kind in ('int_1e40', 'int_2pow64', 'float_3p5e38', 'f64_1e39', 'int_2pow24p1', 'i64_2pow24p3', 'f64_2pow24p1'):
    add(f'ckpt6_step_{kind}', _ckpt_step(kind), configs=('plain', 'sr', 'ada_sm', 'f64'), paths=P4, ngroups=(1, 2),
        pres=(2,))
