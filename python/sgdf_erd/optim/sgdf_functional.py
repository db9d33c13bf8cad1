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

import math
from collections import defaultdict
from typing import List, Optional, Union

import torch
from torch import Tensor

from .. import ops
from . import _dtensor
from .counter_random import EXP_AVG_SQ_STREAM, EXP_AVG_STREAM, EXP_VAR_STREAM, PARAM_STREAM
from .newton_schulz import is_matrix_shaped, orthogonalize
from .sgdf_checks import is_dense
from .stochastic_rounding import round_all_into_

def _real(tensors: List[Tensor]) -> List[Tensor]:
    """Complex tensors as their real views; a gradient with the conjugate bit set is resolved first (a copy: the
    optimizer refuses conjugate params and state, which are written in place)."""
    return [torch.view_as_real(t.resolve_conj()) if t.is_complex() else t for t in tensors]


def _one_minus_power(steps: List[Tensor], beta: float, times: int = 1) -> List[Tensor]:
    """1 - beta^(times t) per step count t, as -expm1(times t log beta): 1 - pow(beta, t) in float32 loses most
    digits where beta^t is near 1 (beta rounded to float32 first: 1 - beta2 with beta2 = 0.99999 is 0.14 % off)."""
    log_beta = math.log(beta) if beta > 0 else -math.inf  # (beta = 0: 1 - 0^t = 1, t >= 1)
    return torch._foreach_neg(torch._foreach_expm1(torch._foreach_mul(steps, times * log_beta)))


def _bias_corrections(steps: List[Tensor], beta1: float, beta2: float, as_tensors: bool):
    """1 / bc1 and bc2 per tensor: python floats read from the steps, or tensors computed from them (capturable:
    no host sync; torch.compile: no specialisation on the step's value)."""
    if not as_tensors:
        values = [float(s) for s in steps]
        inv_bc1 = [1.0 / (1.0 - beta1**t) for t in values]
        bc2 = [(1 + beta1) * (1 - beta2**t) / ((1 - beta1) * (1 - beta1 ** (2 * t))) for t in values]
        return inv_bc1, bc2
    inv_bc1 = torch._foreach_reciprocal(_one_minus_power(steps, beta1))
    # bc2 = (1 + b1)(1 - b2^t) / ((1 - b1)(1 - b1^2t))
    numer = torch._foreach_mul(_one_minus_power(steps, beta2), (1 + beta1) / (1 - beta1))
    bc2 = torch._foreach_div(numer, _one_minus_power(steps, beta1, 2))
    return inv_bc1, bc2


def _precondition_(updates, exp_vars, exp_avg_sqs, steps, beta2, eps, as_tensors):
    """AdaSGDF: u = u / (sqrt(x / (1 - b2^t)) + eps), in place, where x is the second moment v (updated first:
    v = b2 v + (1 - b2) u^2) when `exp_avg_sqs` are given, else the residual variance s. As the kernel computes it."""
    if exp_avg_sqs is not None:
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, updates, updates, value=1 - beta2)
    if as_tensors:
        inv_sqrt_bc = torch._foreach_rsqrt(_one_minus_power(steps, beta2))
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
            updates[i] = _dtensor.placed_as(orthogonalize(u, ns_steps), u)
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
                 steps: List[Tensor], *, master_params: Optional[List[Tensor]] = None,
                 rounding_seeds: Optional[List[int]] = None, exp_avg_sqs: Optional[List[Tensor]] = None,
                 **hyper) -> None:
    """One SGDF step with foreach ops; steps are incremented here. `hyper`: lr, beta1, beta2, eps, gamma,
    weight_decay, decoupled_weight_decay, sign, orthogonalize_matrices, ns_steps, maximize, capturable, and
    AdaSGDF's preconditioner.

    `master_params`: float32 copies of bfloat16 / float16 params, updated instead of them; each param then
    receives its master rounded to nearest. `rounding_seeds` (stochastic rounding): per param, the seed of the
    counter-based generator that rounds the float32 results stochastically into low-precision storage (params
    without master copies, and exp_avg / exp_var). `preconditioner` "second_moment" (with `exp_avg_sqs`) or
    "variance": AdaSGDF's step (_precondition_). On the CPU the tensors go a few at a time (about
    _CPU_CHUNK_ELEMENTS elements): the ~15 passes of a step then find them, and the two temporaries, in cache."""
    bounds, total = [0], 0
    if not (torch.compiler.is_compiling() or hyper["capturable"]) and params and params[0].device.type == "cpu":
        for i, p in enumerate(params[:-1]):
            total += p.numel()
            if total >= _CPU_CHUNK_ELEMENTS:
                bounds.append(i + 1)
                total = 0
    for a, b in zip(bounds, bounds[1:] + [len(params)]):
        _foreach_sgdf(params[a:b], grads[a:b], exp_avgs[a:b], exp_vars[a:b], steps[a:b],
                      None if master_params is None else master_params[a:b],
                      None if rounding_seeds is None else rounding_seeds[a:b],
                      None if exp_avg_sqs is None else exp_avg_sqs[a:b], **hyper)


_FLOAT32_TINY = torch.finfo(torch.float32).tiny
_CPU_CHUNK_ELEMENTS = 1 << 18  # about 1 MB per float32 list: with the two temporaries, within a core's L2 cache


def _foreach_sgdf(params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds, exp_avg_sqs, *, lr, beta1,
                  beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign, orthogonalize_matrices, ns_steps,
                  maximize, capturable, preconditioner="none") -> None:
    if not params:
        return
    matrix_mask = [is_matrix_shaped(p) for p in params]
    params, grads, exp_avgs, exp_vars = map(_real, (params, grads, exp_avgs, exp_vars))
    exp_avg_sqs = _real(exp_avg_sqs) if exp_avg_sqs is not None else None
    torch._foreach_add_(steps, 1)
    compiling = torch.compiler.is_compiling()
    if isinstance(lr, Tensor):  # (one element of any shape and float dtype: the foreach ops take a 0-dim tensor,
        # and 1 - lr * weight_decay in a 16-bit lr's dtype would round to 1; float32, as the kernel reads it)
        lr = lr.to(params[0].device, torch.float32).reshape(()) if capturable or compiling else lr.float().item()

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
            if isinstance(lr, Tensor) and torch.float64 in dtypes:  # (float64 params: in double, as the kernel)
                factors = {d: 1 - (lr.double() if d == torch.float64 else lr) * weight_decay for d in set(dtypes)}
                torch._foreach_mul_(p, [factors[d] for d in dtypes])
            else:
                torch._foreach_mul_(p, 1 - lr * weight_decay)
        else:
            g = torch._foreach_add(g, p, alpha=weight_decay)
    # Two temporaries and in-place passes (each fresh buffer of the size of the params costs page faults on the
    # CPU): r holds g - m, then the residual g - m^; u holds the gain's denominator, the gain, then the update
    # u = m^ + K r = g + (K - 1) r.
    torch._foreach_lerp_(m, g, 1 - beta1)
    r = torch._foreach_sub(g, m)
    torch._foreach_mul_(s, beta2)
    torch._foreach_addcmul_(s, r, r, value=1 - beta2)

    as_tensors = capturable or compiling
    # (for float64 params from float64 step counts, as the kernel computes them)
    counts = [t.double() if d == torch.float64 else t for t, d in zip(steps, dtypes)] if as_tensors else steps
    inv_bc1, bc2 = _bias_corrections(counts, beta1, beta2, as_tensors)
    if isinstance(inv_bc1[0], float) and len(set(inv_bc1)) == 1 and len(set(bc2)) == 1:
        torch._foreach_add_(r, m, alpha=1 - inv_bc1[0])  # g - m^ = (g - m) + (1 - 1/bc1) m
        u = torch._foreach_addcmul(s, r, r, value=bc2[0])
    else:  # steps that differ between tensors, or held as tensors (capturable, compiling)
        torch._foreach_sub_(r, torch._foreach_mul(m, torch._foreach_sub(inv_bc1, 1) if isinstance(inv_bc1[0], Tensor)
                                                  else [x - 1 for x in inv_bc1]))
        u = torch._foreach_mul(r, r)
        torch._foreach_mul_(u, bc2)
        torch._foreach_add_(u, s)
    torch._foreach_add_(u, eps)
    if eps >= _FLOAT32_TINY:  # the gain K = s / (bc2 r^2 + s + eps), in place
        torch._foreach_reciprocal_(u)
        torch._foreach_mul_(u, s)
    else:  # (a denominator below float32's smallest normal may have no finite reciprocal: 0 * inf is NaN)
        u = torch._foreach_div(s, u)
    if gamma == 0.5:
        torch._foreach_sqrt_(u)
    elif gamma != 1:
        torch._foreach_pow_(u, gamma)
    torch._foreach_sub_(u, 1)
    torch._foreach_mul_(u, r)
    torch._foreach_add_(u, g)
    updates = u
    if preconditioner != "none":
        _precondition_(updates, s, v, counts, beta2, eps, as_tensors)

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


def fused_sgdf(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_vars: List[Tensor],
               steps: List[Tensor], *, lr: Union[float, Tensor], beta1: float, beta2: float, eps: float,
               gamma: float, weight_decay: float, decoupled_weight_decay: bool, sign: bool,
               orthogonalize_matrices: bool, ns_steps: int, maximize: bool, capturable: bool,
               grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
               master_params: Optional[List[Tensor]] = None, rounding_seeds: Optional[List[int]] = None,
               preconditioner: str = "none", exp_avg_sqs: Optional[List[Tensor]] = None) -> None:
    """One SGDF step with the compiled kernel: one launch per (device, param dtype, state dtype, orthogonalised or
    not). `master_params`, `rounding_seeds`, `preconditioner` and `exp_avg_sqs` as in foreach_sgdf.

    The kernel walks each tuple (param, grad, state) as flat buffers in one layout, the state's: a param that is a
    view with gaps steps on a dense copy, and a gradient in another layout (or a conjugate view) is copied; the
    copies are written back afterwards (a gradient's only when the kernel unscales it), so every tensor steps
    exactly as the same values in a dense tensor would, under every storage option. Complex tensors step as their
    real views, DTensors as each rank's shards."""
    if not params:
        return
    none = [None] * len(params)
    dtensor = _dtensor.dtensor_type() or ()  # isinstance(p, ()) is False
    copies = []  # (tensor, the copy the kernel steps): params', and gradients' where the kernel unscales them

    def copied(t: Tensor, copy: Tensor, written_back: bool = True) -> Tensor:
        if written_back:
            copies.append((t, copy))
        return copy

    # per launch: params, grads, exp_avgs, exp_vars, steps, master copies, seeds, the number of each tensor's first
    # element in its random numbers, the DTensor each param is a shard of, and the second moments (AdaSGDF)
    launches = defaultdict(lambda: ([], [], [], [], [], [], [], [], [], []))
    for p, g, m, s, t, w, seed, v in zip(params, grads, exp_avgs, exp_vars, steps, master_params or none,
                                         rounding_seeds or none, exp_avg_sqs or none):
        sharded = p if isinstance(p, dtensor) else None
        # (numbered as in the whole tensor where rounded: the path choice sends other shards to foreach)
        first_index = (_dtensor.shard_first_index(p) or 0) if sharded is not None and seed is not None else 0
        if sharded is not None:  # the kernel is elementwise: it steps each rank's shards
            p, g, m, s, w, v = (None if x is None else _dtensor.local_shard(x, sharded) for x in (p, g, m, s, w, v))
        if g.dtype.is_complex and g.is_conj():  # (dtype first: torch.compile does not trace is_conj)
            g = copied(g, g.resolve_conj(), grad_scale is not None)
        if p.dtype.is_complex:
            p, g, m, s, v = (None if x is None else torch.view_as_real(x) for x in (p, g, m, s, v))
        if not is_dense(p):
            p = copied(p, torch.empty_like(m, dtype=p.dtype).copy_(p))
        if g.stride() != p.stride():
            g = copied(g, torch.empty_like(p).copy_(g), grad_scale is not None)
        key = (p.device, p.dtype, m.dtype, orthogonalize_matrices and is_matrix_shaped(p))
        for launch, value in zip(launches[key], (p, g, m, s, t, w, seed, first_index, sharded, v)):
            launch.append(value)

    moved = {}  # lr / grad_scale / found_inf moved once per device
    for (device, _, _, orth), launch in launches.items():
        l_params, l_grads, l_exp_avgs, l_exp_vars, l_steps, l_masters, l_seeds, l_first, l_sharded, l_v = launch
        l_masters = l_masters if master_params else []
        l_v = l_v if exp_avg_sqs else []
        l_seeds = l_seeds if rounding_seeds else []
        l_first = l_first if l_seeds and any(l_first) else []
        # zero-filled so that a step skipped for inf/NaN gradients orthogonalises to a zero update
        updates = [torch.zeros_like(p) for p in l_params] if orth else []
        lr_tensor = _fused_call(device, l_params, l_grads, l_exp_avgs, l_exp_vars, updates, l_steps, l_masters,
                                l_seeds, l_first, moved, lr=lr, beta1=beta1, beta2=beta2, eps=eps, gamma=gamma,
                                weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
                                sign=sign and not orth, maximize=maximize, grad_scale=grad_scale,
                                found_inf=found_inf, exp_avg_sqs=l_v, preconditioner=preconditioner)
        if orth:  # orthogonalisation is refused for complex parameters
            directions = [orthogonalize(u, ns_steps) if sharded is None else
                          _dtensor.orthogonalize_shard(u, sharded, ns_steps) for u, sharded in zip(updates, l_sharded)]
            _apply_orthogonalized(l_params, directions, l_steps, l_masters, l_seeds, l_first,
                                  lr_tensor.reshape(()) if lr_tensor is not None else float(lr),
                                  weight_decay if decoupled_weight_decay else 0.0,
                                  scalar_on(device, found_inf, moved))
    for t, copy in reversed(copies):  # (a layout copy of a resolved gradient first)
        t.copy_(copy)


def scalar_on(device: torch.device, t: Optional[Tensor], moved: dict) -> Optional[Tensor]:
    """`t` (lr, grad_scale or found_inf) as the one-element float32 tensor the kernel takes on `device`, moved once
    per device and call (`moved` remembers)."""
    if t is None:
        return None
    if (device, id(t)) not in moved:
        # Only a copy *to* a CUDA device may be non-blocking (it is ordered on the stream before the kernel); a
        # non-blocking copy to the CPU returns before the value has arrived, and the CPU kernel reads it at once.
        # (a lazily negated one resolved: the kernel reads its memory, and torch's negation fallback skips the
        # kernel's list of optional lr tensors)
        moved[(device, id(t))] = t.to(device=device, dtype=torch.float32,
                                      non_blocking=device.type == "cuda").resolve_neg().reshape(1)
    return moved[(device, id(t))]


def _fused_call(device, params, grads, exp_avgs, exp_vars, updates, steps, master_params, rounding_seeds,
                rounding_offsets, moved, *, lr, beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign,
                maximize, grad_scale, found_inf, exp_avg_sqs=(), preconditioner="none") -> Optional[Tensor]:
    """One kernel call over tensors of one device, param dtype and state dtype, laid out alike; it also advances
    the step counts, unless found_inf is set (then it changes nothing). Returns the lr tensor the kernel was given
    (None for a float lr). The kernel checks every argument before it writes anything."""
    lr_tensor = scalar_on(device, lr, moved) if isinstance(lr, Tensor) else None
    ops.fused_sgdf_(params, grads, exp_avgs, exp_vars, updates, steps, 0.0 if lr_tensor is not None else float(lr),
                    lr_tensor, beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign, maximize,
                    scalar_on(device, grad_scale, moved), scalar_on(device, found_inf, moved), master_params,
                    rounding_seeds, rounding_offsets, exp_avg_sqs, preconditioner)
    return lr_tensor


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
