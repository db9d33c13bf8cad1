"""The three SGDF execution paths over flat lists of tensors of one param group.

- fused: the compiled multi-tensor kernel (``torch.ops.sgdf_erd.fused_sgdf_``), one call per (device, dtype);
- foreach: the same update written once with ``torch._foreach_*`` ops over the whole list;
- single-tensor: that foreach code applied to one tensor at a time (lowest peak memory, torch.compile friendly).

All three share one behaviour: arithmetic in float32 (float64 for float64 tensors), state in its own dtype (the
parameter's unless ``state_dtype`` is set), complex tensors treated as their real views, and the Newton-Schulz
orthogonalisation of matrix-shaped updates applied after the filter (taking precedence over the sign option for
those tensors, as in the release). ``master_weights`` and ``stochastic_rounding`` work on every path: the fused
kernels draw the same counter-based random numbers as the Python paths.
"""

from collections import defaultdict
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import ops
from . import _dtensor
import math

from .counter_random import EXP_AVG_SQ_STREAM, EXP_AVG_STREAM, EXP_VAR_STREAM, PARAM_STREAM
from .newton_schulz import is_matrix_shaped, orthogonalize
from .stochastic_rounding import round_all_into_

def _real(tensors: List[Tensor]) -> List[Tensor]:
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


def _bias_corrections(steps: List[Tensor], beta1: float, beta2: float, as_tensors: bool):
    """1 / bc1 and bc2 per tensor: python floats read from the steps, or tensors computed from them (capturable:
    no host sync; torch.compile: no specialisation on the step's value)."""
    if not as_tensors:
        values = [float(s) for s in steps]
        inv_bc1 = [1.0 / (1.0 - beta1**t) for t in values]
        bc2 = [(1 + beta1) * (1 - beta2**t) / ((1 - beta1) * (1 - beta1 ** (2 * t))) for t in values]
        return inv_bc1, bc2
    b1t = torch._foreach_pow(beta1, steps)
    b2t = torch._foreach_pow(beta2, steps)
    inv_bc1 = torch._foreach_reciprocal(torch._foreach_sub(torch._foreach_neg(b1t), -1.0))
    b1_2t = torch._foreach_mul(b1t, b1t)
    # bc2 = (1 + b1)(1 - b2^t) / ((1 - b1)(1 - b1^2t))
    numer = torch._foreach_mul(torch._foreach_sub(torch._foreach_neg(b2t), -1.0), (1 + beta1) / (1 - beta1))
    bc2 = torch._foreach_div(numer, torch._foreach_sub(torch._foreach_neg(b1_2t), -1.0))
    return inv_bc1, bc2


def _precondition_(updates, exp_vars, exp_avg_sqs, steps, beta2, eps, as_tensors):
    """AdaSGDF: u = u / (sqrt(x / (1 - b2^t)) + eps), in place, where x is the second moment v (updated first:
    v = b2 v + (1 - b2) u^2) when `exp_avg_sqs` are given, else the residual variance s. As the kernel computes it."""
    if exp_avg_sqs is not None:
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, updates, updates, value=1 - beta2)
    if as_tensors:
        inv_sqrt_bc = torch._foreach_rsqrt(torch._foreach_sub(torch._foreach_neg(torch._foreach_pow(beta2, steps)),
                                                              -1.0))
    else:
        inv_sqrt_bc = [1.0 / math.sqrt(1.0 - beta2 ** float(t)) for t in steps]
    denom = torch._foreach_sqrt(exp_avg_sqs if exp_avg_sqs is not None else exp_vars)
    torch._foreach_mul_(denom, inv_sqrt_bc)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(updates, denom)


def _apply_update(params, updates, lr, sign, orthogonalize_matrices, ns_steps, matrix_mask):
    """Optional sign / orthogonalisation of the filtered update, then p -= lr * u."""
    updates = list(updates)
    for i, u in enumerate(updates):
        if orthogonalize_matrices and matrix_mask[i]:
            updates[i] = orthogonalize(u, ns_steps)
        elif sign:
            updates[i] = u.sign_()
    if isinstance(lr, Tensor):
        torch._foreach_sub_(params, torch._foreach_mul(updates, lr.to(params[0].device)))
    else:
        torch._foreach_add_(params, updates, alpha=-lr)


def _compute_dtype(p: Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _widened(tensors: List[Tensor], dtypes: List[torch.dtype]) -> List[Tensor]:
    """Each tensor in its arithmetic dtype: itself where it already is (updated in place), else a copy."""
    return [t if t.dtype == d else t.to(d) for t, d in zip(tensors, dtypes)]


def foreach_sgdf(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_vars: List[Tensor],
                 steps: List[Tensor], *, lr: Union[float, Tensor], beta1: float, beta2: float, eps: float,
                 gamma: float, weight_decay: float, decoupled_weight_decay: bool, sign: bool,
                 orthogonalize_matrices: bool, ns_steps: int, maximize: bool, capturable: bool,
                 master_params: Optional[List[Tensor]] = None, rounding_seeds: Optional[List[int]] = None,
                 preconditioner: str = "none", exp_avg_sqs: Optional[List[Tensor]] = None) -> None:
    """One SGDF step with foreach ops; steps are incremented here.

    `master_params`: float32 copies of bfloat16 / float16 params, updated instead of them; each param then
    receives its master rounded to nearest. `rounding_seeds` (stochastic rounding): per param, the seed of the
    counter-based generator that rounds the float32 results stochastically into low-precision storage (params
    without master copies, and exp_avg / exp_var). `preconditioner` "second_moment" (with `exp_avg_sqs`) or
    "variance": AdaSGDF's step (_precondition_)."""
    if not params:
        return
    matrix_mask = [is_matrix_shaped(p) for p in params]
    params, grads, exp_avgs, exp_vars = map(_real, (params, grads, exp_avgs, exp_vars))
    exp_avg_sqs = _real(exp_avg_sqs) if exp_avg_sqs is not None else None
    torch._foreach_add_(steps, 1)
    compiling = torch.compiler.is_compiling()
    if isinstance(lr, Tensor) and not (capturable or compiling):
        lr = lr.item()

    # Arithmetic in float32 (float64 for float64 params) on copies of the tensors stored narrower, which are
    # written back (rounded) at the end.
    dtypes = [_compute_dtype(p) for p in params]
    p = list(master_params) if master_params is not None else _widened(params, dtypes)
    m, s, g = (_widened(ts, dtypes) for ts in (exp_avgs, exp_vars, grads))
    v = _widened(exp_avg_sqs, dtypes) if exp_avg_sqs is not None else None

    if maximize:
        g = torch._foreach_neg(g)
    if weight_decay != 0:
        if decoupled_weight_decay:
            torch._foreach_mul_(p, 1 - lr * weight_decay)
        else:
            g = torch._foreach_add(g, p, alpha=weight_decay)
    torch._foreach_mul_(m, beta1)
    torch._foreach_add_(m, g, alpha=1 - beta1)
    residual_new_mean = torch._foreach_sub(g, m)
    torch._foreach_mul_(s, beta2)
    torch._foreach_addcmul_(s, residual_new_mean, residual_new_mean, value=1 - beta2)

    inv_bc1, bc2 = _bias_corrections(steps, beta1, beta2, as_tensors=capturable or compiling)
    m_hat = torch._foreach_mul(m, inv_bc1)
    r = torch._foreach_sub(g, m_hat)
    denom = torch._foreach_mul(torch._foreach_mul(r, r), bc2)
    torch._foreach_add_(denom, s)
    torch._foreach_add_(denom, eps)
    gain = torch._foreach_div(s, denom)
    if gamma == 0.5:
        torch._foreach_sqrt_(gain)
    elif gamma != 1:
        torch._foreach_pow_(gain, gamma)
    torch._foreach_mul_(gain, r)
    updates = torch._foreach_add(m_hat, gain)
    if preconditioner != "none":
        _precondition_(updates, s, v, steps, beta2, eps, as_tensors=capturable or compiling)

    _apply_update(p, updates, lr, sign, orthogonalize_matrices, ns_steps, matrix_mask)
    seeds = rounding_seeds if rounding_seeds is not None else [None] * len(params)
    # a param with a master copy takes it rounded to nearest: the master already keeps what rounding drops
    param_seeds = [None] * len(params) if master_params is not None else seeds
    for stored, computed, stream, stream_seeds in ((params, p, PARAM_STREAM, param_seeds),
                                                   (exp_avgs, m, EXP_AVG_STREAM, seeds),
                                                   (exp_vars, s, EXP_VAR_STREAM, seeds),
                                                   (exp_avg_sqs or [], v or [], EXP_AVG_SQ_STREAM, seeds)):
        round_all_into_(stored, computed, stream_seeds, steps, stream)


def single_tensor_sgdf(params, grads, exp_avgs, exp_vars, steps, *, master_params=None, rounding_seeds=None,
                       exp_avg_sqs=None, **hyper) -> None:
    """One SGDF step, tensor by tensor (the foreach code on one-element lists)."""
    for i in range(len(params)):
        foreach_sgdf([params[i]], [grads[i]], [exp_avgs[i]], [exp_vars[i]], [steps[i]],
                     master_params=None if master_params is None else [master_params[i]],
                     rounding_seeds=None if rounding_seeds is None else [rounding_seeds[i]],
                     exp_avg_sqs=None if exp_avg_sqs is None else [exp_avg_sqs[i]], **hyper)


def _matching_layout(grad: Tensor, param: Tensor, copies: List[Tuple[Tensor, Tensor]]) -> Tensor:
    """The fused kernel walks p, g and the states as one flat buffer each; a gradient with other strides is
    copied into the parameter's layout, and (gradient, copy) appended to `copies`: the kernel unscales the copy,
    which is written back (torch's fused optimizers unscale p.grad in place)."""
    if grad.stride() == param.stride():
        return grad
    copy = torch.empty_like(param).copy_(grad)
    copies.append((grad, copy))
    return copy


def fused_sgdf(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_vars: List[Tensor],
               steps: List[Tensor], *, lr: Union[float, Tensor], beta1: float, beta2: float, eps: float,
               gamma: float, weight_decay: float, decoupled_weight_decay: bool, sign: bool,
               orthogonalize_matrices: bool, ns_steps: int, maximize: bool, capturable: bool,
               grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
               master_params: Optional[List[Tensor]] = None, rounding_seeds: Optional[List[int]] = None,
               preconditioner: str = "none", exp_avg_sqs: Optional[List[Tensor]] = None) -> None:
    """One SGDF step with the compiled kernel: one launch per (device, param dtype, state dtype) and update mode.
    `master_params`, `rounding_seeds`, `preconditioner` and `exp_avg_sqs` as in foreach_sgdf."""
    if not params:
        return
    masters = master_params if master_params is not None else [None] * len(params)
    seeds = rounding_seeds if rounding_seeds is not None else [None] * len(params)
    second_moments = exp_avg_sqs if exp_avg_sqs is not None else [None] * len(params)
    device, dtype, state_dtype = params[0].device, params[0].dtype, exp_avgs[0].dtype
    dtensor = _dtensor.dtensor_type() or ()  # isinstance(p, ()) is False
    # the common case, one launch: no per-tensor regrouping (this runs at every step, for every tensor)
    uniform = not orthogonalize_matrices and all(p.dtype is dtype and m.dtype is state_dtype and p.device == device
                                                 and not isinstance(p, dtensor) for p, m in zip(params, exp_avgs))
    if dtype.is_complex if uniform else any(p.is_complex() for p in params):
        params, grads, exp_avgs, exp_vars = map(_real, (params, grads, exp_avgs, exp_vars))
        second_moments = [None if v is None else torch.view_as_real(v) if v.is_complex() else v
                          for v in second_moments]
    grad_copies = []  # (gradient, its copy in the parameter's layout)
    if uniform:
        groups = {(device, None, None, False): (params, [_matching_layout(g, p, grad_copies)
                                                         for g, p in zip(grads, params)],
                                                exp_avgs, exp_vars, steps, masters, seeds, [0] * len(params),
                                                [None] * len(params), second_moments)}
    else:
        keys = [(p.device, p.dtype, m.dtype, orthogonalize_matrices and is_matrix_shaped(p))
                for p, m in zip(params, exp_avgs)]
        # params, grads, exp_avgs, exp_vars, steps, master copies, seeds, the number of each tensor's first element
        # in its random numbers, the DTensor each param is a shard of, and the second moment (AdaSGDF)
        groups = defaultdict(lambda: ([], [], [], [], [], [], [], [], [], []))
        for key, p, g, m, s, t, w, seed, v in zip(keys, params, grads, exp_avgs, exp_vars, steps, masters, seeds,
                                                  second_moments):
            sharded = p if isinstance(p, dtensor) else None
            first_index = 0
            if sharded is not None:  # the kernel is elementwise: it steps each rank's shards
                p, g, m, s = (_dtensor.local_shard(x, sharded) for x in (p, g, m, s))
                w = None if w is None else _dtensor.local_shard(w, sharded)
                v = None if v is None else _dtensor.local_shard(v, sharded)
                # numbered as in the whole tensor (the path choice sends other shards to foreach when rounding)
                first_index = (_dtensor.shard_first_index(sharded) or 0) if seed is not None else 0
            for bucket, value in zip(groups[key], (p, _matching_layout(g, p, grad_copies), m, s, t, w, seed,
                                                   first_index, sharded, v)):
                bucket.append(value)

    moved = {}  # lr / grad_scale / found_inf moved once per device
    for (device, _, _, orth), bucket in groups.items():
        g_params, g_grads, g_exp_avgs, g_exp_vars, g_steps, g_masters, g_seeds, g_first, g_sharded, g_v = bucket
        g_masters = [] if master_params is None else g_masters
        g_v = [] if exp_avg_sqs is None else g_v
        g_seeds = [] if rounding_seeds is None else g_seeds
        g_first = g_first if g_seeds and any(g_first) else []
        # zero-filled so that a step skipped for inf/NaN gradients orthogonalises to a zero update
        updates = [torch.zeros_like(p) for p in g_params] if orth else []
        lr_tensor = _fused_call(device, g_params, g_grads, g_exp_avgs, g_exp_vars, updates, g_steps, g_masters,
                                g_seeds, g_first, moved, lr=lr, beta1=beta1, beta2=beta2, eps=eps, gamma=gamma,
                                weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                                sign=sign and not orth, maximize=maximize, grad_scale=grad_scale,
                                found_inf=found_inf, exp_avg_sqs=g_v, preconditioner=preconditioner)
        if orth:  # orthogonalisation is refused for complex parameters, so g_params are the originals
            directions = [orthogonalize(u, ns_steps) if sharded is None else
                          _dtensor.orthogonalize_shard(u, sharded, ns_steps) for u, sharded in zip(updates, g_sharded)]
            _apply_orthogonalized(g_params, directions, g_steps, g_masters, g_seeds, g_first,
                                  lr_tensor.reshape(()) if lr_tensor is not None else float(lr),
                                  weight_decay if decoupled_weight_decay else 0.0,
                                  _scalar_on(device, found_inf, moved))
    if grad_scale is not None:  # the unscaled copies back into the gradients
        for grad, copy in grad_copies:
            grad.copy_(copy)


def _scalar_on(device: torch.device, t: Optional[Tensor], moved: dict) -> Optional[Tensor]:
    """`t` (lr, grad_scale or found_inf) as the one-element float32 tensor the kernel takes on `device`, moved once
    per device and call (`moved` remembers)."""
    if t is None:
        return None
    if (device, id(t)) not in moved:
        # Only a copy *to* a CUDA device may be non-blocking (it is ordered on the stream before the kernel); a
        # non-blocking copy to the CPU returns before the value has arrived, and the CPU kernel reads it at once.
        moved[(device, id(t))] = t.to(device=device, dtype=torch.float32,
                                      non_blocking=device.type == "cuda").reshape(1)
    return moved[(device, id(t))]


def _fused_call(device, params, grads, exp_avgs, exp_vars, updates, steps, master_params, rounding_seeds,
                rounding_offsets, moved, *, lr, beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign,
                maximize, grad_scale, found_inf, exp_avg_sqs=(), preconditioner="none") -> Optional[Tensor]:
    """One kernel call over tensors of one device, param dtype and state dtype, laid out alike; it also advances
    the step counts, unless found_inf is set (then it changes nothing). Returns the lr tensor the kernel was given
    (None for a float lr). The kernel checks every argument before it writes anything."""
    lr_tensor = _scalar_on(device, lr, moved) if isinstance(lr, Tensor) else None
    ops.fused_sgdf_(params, grads, exp_avgs, exp_vars, updates, steps, 0.0 if lr_tensor is not None else float(lr),
                    lr_tensor, beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign, maximize,
                    _scalar_on(device, grad_scale, moved), _scalar_on(device, found_inf, moved), master_params,
                    rounding_seeds, rounding_offsets, exp_avg_sqs, preconditioner)
    return lr_tensor


def fused_sgdf_groups_in_one_call(groups: Sequence[Tuple[tuple, dict]], *, grad_scale: Optional[Tensor] = None,
                                  found_inf: Optional[Tensor] = None) -> None:
    """fused_sgdf for the case it reduces to most of the time, for several param groups in one kernel call, without
    the per-tensor regrouping. Each of `groups` is (params, grads, exp_avgs, exp_vars, steps, master_params,
    rounding_seeds), the last two empty where the group's storage options do not use them, with the group's update
    options (lr, beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign, maximize): tensors of one
    device, each group of one param dtype and one state dtype, neither complex nor DTensor, each grad and state laid
    out as its param, no orthogonalisation. Given anything else, the kernel refuses the call before writing anything
    (RuntimeError or ValueError, message starting with ops.FUSED_SGDF_REFUSED), and fused_sgdf is the call to make for
    each group."""
    device = next((tensors[0][0].device for tensors, _ in groups if tensors[0]), None)
    if device is None:
        return
    if len(groups) == 1:  # the common case: fused_sgdf_, whose arguments cost less to pass
        (params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds, *exp_avg_sqs), options = groups[0]
        _fused_call(device, params, grads, exp_avgs, exp_vars, [], steps, master_params, rounding_seeds, [], {},
                    grad_scale=grad_scale, found_inf=found_inf, exp_avg_sqs=exp_avg_sqs[0] if exp_avg_sqs else (),
                    **options)
        return
    # one preconditioner per call: groups with others are refused (as the kernel refuses), then stepped one by one
    preconditioners = {options.get("preconditioner", "none") for _, options in groups}
    if len(preconditioners) > 1:
        raise RuntimeError(f"{ops.FUSED_SGDF_REFUSED}_grouped_: param groups with preconditioners "
                           f"{sorted(preconditioners)} cannot share one call")
    # params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds, exp_avg_sqs
    lists = [[], [], [], [], [], [], [], []]
    hyper = {key: [] for key in _GROUP_HYPERPARAMETERS}
    lr_values, lr_tensors, moved = [], [], {}
    for tensors, options in groups:
        for merged, part in zip(lists, tensors):
            merged.extend(part)
        for key, values in hyper.items():
            values.append(options[key])
        lr = options["lr"]
        lr_tensors.append(_scalar_on(device, lr, moved) if isinstance(lr, Tensor) else None)
        lr_values.append(0.0 if isinstance(lr, Tensor) else float(lr))
    # the storage options follow from the lists: master copies and seeds are given where the group uses them
    master_weights = [bool(tensors[5]) for tensors, _ in groups]
    stochastic_rounding = [bool(tensors[6]) for tensors, _ in groups]
    ops.fused_sgdf_grouped_(*lists[:7], [len(tensors[0]) for tensors, _ in groups], lr_values, lr_tensors,
                            *hyper.values(), master_weights, stochastic_rounding, _scalar_on(device, grad_scale, moved),
                            _scalar_on(device, found_inf, moved), lists[7], preconditioners.pop())


# fused_sgdf_grouped_'s per-group hyperparameters after lr and lr_tensor, in its order
_GROUP_HYPERPARAMETERS = ("beta1", "beta2", "eps", "gamma", "weight_decay", "decoupled_weight_decay", "sign",
                          "maximize")


def _apply_orthogonalized(params, directions, steps, masters, seeds, first_indices, lr, decoupled_decay,
                          found_inf) -> None:
    """w = w * (1 - lr * decoupled_decay) - lr * direction for the weights the kernel left as they were in update
    mode: the master copies (the params then take them rounded to nearest), else the params, computed in float32
    and rounded once, stochastically when `seeds` (elements numbered from `first_indices`, a shard's position in
    its whole tensor, when given). A step skipped for inf/NaN gradients (found_inf nonzero)
    changes nothing, without reading found_inf on the host."""
    keep = None if found_inf is None else (found_inf.reshape(()) == 0)
    if keep is not None:
        lr = lr * keep  # 0 on a skipped step: no decay, no update
    weights = masters if masters else [p if not seeds else p.float() for p in params]
    if decoupled_decay:
        torch._foreach_mul_(weights, 1 - lr * decoupled_decay)
    torch._foreach_sub_(weights, torch._foreach_mul([d.to(w.dtype) for d, w in zip(directions, weights)], lr))
    if masters:
        for p, w in zip(params, masters):
            p.copy_(w if keep is None else torch.where(keep, w.to(p.dtype), p))
    elif seeds:
        round_all_into_(params, weights, seeds, steps, PARAM_STREAM, first_indices)
