"""Checks of what the SGDF optimizer is given: hyperparameters, params, gradients, state and checkpoints.

Each raises a clear exception that names the argument and the fix, and none changes anything, so the optimizer can
run them all before it touches a tensor.
"""

import math
import numbers
import struct
from collections import defaultdict
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor

from .. import _native
from ._dtensor import dtensor_type, is_dtensor, shard_first_index

STATE_KEYS = ("step", "exp_avg", "exp_var")
# AdaSGDF's preconditioners (its param groups' "preconditioner"; SGDF's groups have none)
PRECONDITIONERS = ("second_moment", "variance")
# dtypes the state may be stored in (state_dtype=); the arithmetic stays float32 (float64 for float64 params)
STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
LOW_PRECISION = (torch.bfloat16, torch.float16)
# every key of an SGDF param group besides 'params'
GROUP_KEYS = ("lr", "betas", "eps", "gamma", "weight_decay", "decoupled_weight_decay", "sign", "orthogonalize",
              "ns_steps", "maximize", "foreach", "fused", "capturable", "stochastic_rounding", "state_dtype",
              "master_weights", "differentiable")


def moment_keys(group: dict) -> Tuple[str, ...]:
    """The state tensors of a group's update besides `step` (and the storage options' entries), each of the
    parameter's shape in the group's state dtype: exp_avg, exp_var, and AdaSGDF's exp_avg_sq with the
    "second_moment" preconditioner."""
    if group.get("preconditioner") == "second_moment":
        return (*STATE_KEYS[1:], "exp_avg_sq")
    return STATE_KEYS[1:]


# torch's tracing tensors (make_fx, torch.export, torch.optim.swap_in_optimizer_params_and_state): they run every op,
# the kernel's included, through its registered fake / functional implementation, as plain tensors would
_TRACING_TENSORS = (FakeTensor, FunctionalTensor)


def dispatches_itself(kind: type) -> bool:
    """Whether tensors of this type run every op themselves (a __torch_dispatch__ of their own: DTensor, torchao's
    quantized tensors, ...): they may implement torch's ops but not the kernel's. Not torch's tracing tensors."""
    return kind.__torch_dispatch__ is not Tensor.__torch_dispatch__ and not issubclass(kind, _TRACING_TENSORS)


def real_dtype(p: Tensor) -> torch.dtype:
    return p.real.dtype if p.is_complex() else p.dtype


def is_dense(t: Tensor) -> bool:
    """Whether `t` covers its memory without gaps or overlaps (what the fused kernel walks as one flat buffer)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _address(t: Tensor) -> int:
    """The data address, 0 where there is none: meta tensors and tensor subclasses without storage are left to
    their own checks."""
    try:
        return t.data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


def _storage_address(t: Tensor) -> int:
    """The address of `t`'s storage, 0 where it has no memory (meta, freed, tensor subclasses without storage: left
    to their own checks). From the data address and offset: asking for the storage object costs ~1 us a tensor."""
    address = _address(t)
    return address - t.storage_offset() * t.element_size() if address else 0


def _span(t: Tensor):
    """[first byte, one past the last byte) of `t`'s elements, or None where it has no memory."""
    start = _address(t) if t.numel() else 0
    if not start:
        return None
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return start, start + extent * t.element_size()


def _describe(t: Tensor) -> str:
    layout = "" if t.layout is torch.strided else f" ({t.layout})"
    return f"{t.dtype}{layout} on {t.device} with shape {tuple(t.shape)}"


# ------------------------------------------------------------------------------------------ hyperparameters
def _is_real_number(value) -> bool:
    """A Python or numpy real number (numpy registers its scalars as numbers.Real), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, Tensor))


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond a float's range
        return False


def check_group_params(group, where: str) -> None:
    """(`where`, here and in check_hyperparameters: the optimizer and the group, e.g. "SGDF (param group 0)".)
    A param group as the optimizer keeps it (param_groups may be edited by hand): a dict whose 'params' is a list
    (or a tuple: a tensor there would be walked as its rows, none of which has a gradient, a generator consumed)."""
    if not isinstance(group, dict):
        raise TypeError(f"{where}: a param group is a dict, got {type(group).__name__}; param_groups was "
                        "edited by hand: put back a dict with 'params' and the options")
    if type(group.get("params")) not in (list, tuple):
        found = f"'params' as {type(group['params']).__name__}" if "params" in group else "no 'params'"
        raise TypeError(f"{where}: the param group holds {found}; 'params' is a list of tensors (edited by "
                        "hand? group['params'] = [tensors])")


def check_hyperparameters(group: dict, where: str, keys: Iterable[str] = GROUP_KEYS,
                          read_device_lr: bool = True) -> None:
    """`keys`: those a group of the optimizer has (its defaults'). `read_device_lr=False` (inside step()) leaves a
    tensor `lr` on an accelerator unread: that would sync."""
    missing = [key for key in keys if key not in group]
    if missing:
        raise ValueError(f"{where}: the param group lacks {', '.join(map(repr, missing))} (deleted by hand?); "
                         "set it again, or rebuild the optimizer and load its state_dict")
    if group["differentiable"] is not False:
        raise ValueError(f"{where}: differentiable={group['differentiable']!r} is not supported (autograd "
                         "through step(): the kernels and the in-place state updates record no graph); leave it "
                         "False")
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.layout is not torch.strided:
            raise ValueError(f"{where}: a tensor `lr` must be dense, got {lr.layout}; pass a 0-dim tensor or "
                             "a float")
        if lr.numel() != 1:
            raise ValueError(f"{where}: a tensor `lr` must hold one element, got shape {tuple(lr.shape)}; "
                             "pass a 0-dim tensor or a float")
        if not lr.is_floating_point():
            raise TypeError(f"{where}: a tensor `lr` must be floating point, got {lr.dtype}")
        # (neither has memory the kernel could read; traced tensors, torch.compile's, have none to ask about)
        if lr.device.type == "meta" or (not torch.compiler.is_compiling() and lr._is_zerotensor()):
            kind = "on the meta device" if lr.is_meta else "that is an efficient zero tensor"
            raise ValueError(f"{where}: a tensor `lr` {kind} holds no value in memory; pass a float or a tensor on "
                             "the CPU or the parameters' device (torch.zeros(()) for a zero lr)")
        if lr.device.type == "cpu" or read_device_lr:
            _check_lr_value(float(lr), where)
    elif not _is_real_number(lr):
        raise TypeError(f"{where}: `lr` must be a float or a one-element tensor, got {type(lr).__name__}")
    else:
        _check_lr_value(lr, where)
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"{where}: `betas` must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        # (the kernels' arithmetic is float32, where a beta within 3e-8 of 1 is 1)
        if not _is_real_number(b) or not 0.0 <= b < 1.0 or struct.unpack("f", struct.pack("f", b))[0] == 1.0:
            raise ValueError(f"{where}: invalid betas[{i}]={b!r}; each beta must be a float in [0, 1) that "
                             "stays below 1 in float32 (at most 0.99999994)")
    _check_number(group, "eps", where, *_IN_FLOAT32_RANGE)
    _check_number(group, "gamma", where, lambda v: v > 0.0, "a finite float > 0 (0.5 is the release default)")
    _check_number(group, "weight_decay", where, *_IN_FLOAT32_RANGE)
    for key in ("decoupled_weight_decay", "sign", "orthogonalize", "maximize", "capturable", "stochastic_rounding",
                "master_weights"):
        if not isinstance(group[key], bool):
            raise TypeError(f"{where}: `{key}` must be True or False, got {group[key]!r}")
    for key in ("foreach", "fused"):
        if group[key] is not None and not isinstance(group[key], bool):
            raise TypeError(f"{where}: `{key}` must be True, False or None (the default path), got "
                            f"{group[key]!r}")
    if group["fused"] and group["foreach"]:
        raise RuntimeError(f"{where}: `fused` and `foreach` cannot both be True; choose one")
    ns = group["ns_steps"]
    if not isinstance(ns, int) or isinstance(ns, bool) or (group["orthogonalize"] and ns < 2):
        raise ValueError(f"{where}: invalid ns_steps={ns!r}; it must be an int >= 2 when orthogonalize=True")
    if "preconditioner" in group:  # AdaSGDF
        if "preconditioner" not in keys:
            raise ValueError(f"{where}: the param group has AdaSGDF's option 'preconditioner' (an adaptive "
                             "step), which SGDF has not; remove it from the group, or use sgdf_erd.AdaSGDF (an "
                             "AdaSGDF checkpoint loads into AdaSGDF)")
        if group["preconditioner"] not in PRECONDITIONERS:
            raise ValueError(f"{where}: invalid preconditioner={group['preconditioner']!r}; it must be one "
                             f"of {', '.join(map(repr, PRECONDITIONERS))}")
        for key in ("sign", "orthogonalize"):
            if group[key] is not False:
                raise ValueError(f"{where}: {key}={group[key]!r}; `{key}` is an SGDF option that AdaSGDF "
                                 "has not (leave it False, or use sgdf_erd.SGDF)")
    state_dtype = group["state_dtype"]
    if state_dtype is not None and not isinstance(state_dtype, torch.dtype):
        raise TypeError(f"{where}: `state_dtype` must be a torch.dtype or None, got {state_dtype!r}")
    if state_dtype is not None and state_dtype not in STATE_DTYPES:
        raise ValueError(f"{where}: invalid state_dtype={state_dtype}; exp_avg and exp_var are stored in a "
                         "floating dtype: torch.bfloat16, torch.float16, torch.float32 or torch.float64 (None: the "
                         "parameter's dtype)")


# lr, weight_decay and eps enter the float32 arithmetic of every path (the foreach ops take lr and weight_decay as
# float32 scalars and refuse larger ones, midway through a step; eps beyond it is inf there)
_FLOAT32_MAX = torch.finfo(torch.float32).max
# _check_number's test and requirement for eps and weight_decay (the lr's test too)
_IN_FLOAT32_RANGE = (lambda v: 0.0 <= v <= _FLOAT32_MAX,
                     f"a float >= 0 and <= {_FLOAT32_MAX!r} (float32's largest value)")


def _check_lr_value(lr, where: str) -> None:
    if not (_finite(lr) and _IN_FLOAT32_RANGE[0](lr)):
        raise ValueError(f"{where}: invalid learning rate lr={lr}; it must be finite, >= 0 and <= "
                         f"{_FLOAT32_MAX!r} (float32's largest value)")


def _check_number(group: dict, key: str, where: str, valid, requirement: str) -> None:
    value = group[key]
    if not _is_real_number(value) or not _finite(value) or not valid(value):
        raise ValueError(f"{where}: invalid {key}={value!r}; it must be {requirement}")


# ------------------------------------------------------------------------------------------ params and paths
def check_amp_scalars(grad_scale, found_inf, who: str = "SGDF") -> None:
    """What torch.amp.GradScaler sets on an optimizer whose step unscales (fused=True): one-element float tensors,
    the scale finite and > 0 (read where that costs no synchronisation: on the CPU)."""
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None and not (isinstance(t, Tensor) and t.numel() == 1 and t.is_floating_point()
                                  and not t.is_meta and t.layout is torch.strided and not t._is_zerotensor()):
            found = _describe(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{who}: the optimizer's `{name}` (set by torch.amp.GradScaler for fused=True) must be a "
                             f"one-element float tensor with its value in memory, got {found}; let the GradScaler set "
                             "it (scaler.step(opt)), or delete the attribute")
    scale = float(grad_scale) if grad_scale is not None and grad_scale.device.type == "cpu" else 1.0
    if not (math.isfinite(scale) and scale > 0):  # (0 or NaN would turn the weights into NaN, < 0 flip the step)
        raise ValueError(f"{who}: the optimizer's `grad_scale` is {scale}; a loss scale is finite and > 0: let "
                         "torch.amp.GradScaler set it (scaler.step(opt)), or delete the attribute")


def check_param_kinds(params: Sequence, group: dict, where: str, stepping_only: bool = False,
                      who: str = "SGDF") -> None:
    """`stepping_only`: of the tensors, only those a step reads (with a gradient, not empty) are checked."""
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{who} ({where}): params must be tensors, got {type(p).__name__} at position {i}")
        if stepping_only and (p.grad is None or not p.numel()):
            continue
        if not (p.is_leaf or p.retains_grad):
            raise ValueError(f"{who} ({where}): parameter {i} is not a leaf tensor (it is computed from other "
                             "tensors, so its .grad is never filled); optimize the tensors it is computed from")
        if not (p.is_floating_point() or p.is_complex()):
            raise TypeError(f"{who} ({where}): parameters must be floating point or complex, got {p.dtype} at "
                            f"position {i}")
        if p.is_complex() and group["orthogonalize"]:
            raise ValueError(f"{who} ({where}): orthogonalize=True is not defined for complex parameters; put them "
                             "in a param group with orthogonalize=False")
        _check_storage_options(p, i, group, where, who)


def _check_storage_options(p: Tensor, i: int, group: dict, where: str, who: str) -> None:
    if group["master_weights"] and p.dtype not in LOW_PRECISION:
        raise ValueError(f"{who} ({where}): master_weights=True keeps float32 copies of bfloat16 / float16 "
                         f"parameters, but parameter {i} is {p.dtype}; put it in a param group with "
                         "master_weights=False (it is its own master copy)")
    state_dtype = group["state_dtype"]
    if p.is_complex() and state_dtype is not None and state_dtype != real_dtype(p):
        raise ValueError(f"{who} ({where}): state_dtype={state_dtype} is not supported for complex parameters "
                         f"(parameter {i} is {p.dtype}); put them in a param group with state_dtype=None")


def state_dtype(p: Tensor, group: dict) -> torch.dtype:
    """The dtype of a parameter's exp_avg / exp_var under its group's options (complex parameters: their own)."""
    state = group["state_dtype"]
    return p.dtype if state is None or p.dtype.is_complex else state


def fused_storage_unsupported(params: Sequence[Tensor], group: dict) -> Optional[str]:
    """Why the fused kernels cannot step these params as their group's options ask, or None: they step plain
    tensors and DTensors' shards (not other subclasses that run torch's ops themselves, which may not know the
    kernel's, unless frozen), keep float32, bfloat16 or float16 state for float32 / bfloat16 / float16 params and
    float64 state for float64 params, and round DTensor shards stochastically where each shard's elements are
    consecutive in the whole tensor."""
    for i, p in enumerate(params):
        # (a frozen one, such as a quantized base weight beside adapters, never reaches the kernel: every path skips
        # a parameter without a gradient; one that gets a gradient is refused at that step, before any write)
        if dispatches_itself(type(p)) and not is_dtensor(p) and (p.requires_grad or p.grad is not None):
            return (f"{type(p).__name__} parameters (parameter {i}), a tensor subclass that runs torch's ops itself: "
                    "the fused kernels step plain tensors and DTensors' shards")
        dtype = real_dtype(p)
        state = dtype if p.is_complex() else state_dtype(p, group)  # (complex: its own, stepped as real views)
        if (dtype == torch.float64) != (state == torch.float64):
            return (f"state_dtype={state} for {dtype} parameters (parameter {i}): the fused kernels keep float32, "
                    "bfloat16 or float16 state for float32 / bfloat16 / float16 parameters and float64 state for "
                    "float64 parameters; choose another state_dtype")
        if group["stochastic_rounding"] and is_dtensor(p) and shard_first_index(p) is None:
            return (f"stochastic rounding of DTensor parameter {i}, whose shards are not consecutive in the whole "
                    f"tensor (placements {tuple(p.placements)}): the fused kernels number a shard's elements from "
                    "one offset, the foreach path by their positions in the whole tensor")
    return None


def check_distinct(groups: Sequence[Sequence[Tensor]], who: str = "SGDF") -> None:
    """Each parameter once, and no two parameters sharing memory: either would be stepped twice per call."""
    seen = {}
    for gi, params in enumerate(groups):
        for i, p in enumerate(params):
            if id(p) in seen:
                gj, j = seen[id(p)]
                raise ValueError(f"{who}: parameter {i} of param group {gi} is the same tensor as parameter {j} of "
                                 f"param group {gj}; each parameter may appear only once (it would be stepped twice "
                                 "per call): remove the repeat")
            seen[id(p)] = (gi, i)
    check_no_shared_memory([(p, True, f"parameter {i} of param group {gi}") for gi, params in enumerate(groups)
                            for i, p in enumerate(params)], who)


def check_fused_support(params: Sequence[Tensor], group: dict, where: str, joining: bool = False,
                        who: str = "SGDF") -> None:
    """A group on the fused path (`joining`: one with fused=True joining the optimizer, whose meta parameters wait
    for the step): storage the kernels keep, parameters on a device and in a dtype the build has kernels for, and
    when joining no view with gaps (the default path steps those on a dense copy)."""
    unsupported = fused_storage_unsupported(params, group)
    if unsupported:
        raise NotImplementedError(f"{who}(fused=True) ({where}): no fused kernel for {unsupported}; leave `fused` "
                                  "unset or pass foreach=True for this param group")
    for i, p in enumerate(params):
        if joining and p.is_meta:  # (deferred initialisation: checked at the step, once materialised)
            continue
        _native.require(p.device, f"{who}(fused=True)")
        if not _native.supports(p.device, real_dtype(p)):
            raise RuntimeError(f"{who}(fused=True): no fused kernel for {p.dtype} on {p.device.type} (parameter {i}); "
                               "the fused kernels take float32, float64, float16 and bfloat16 (and complex as real "
                               "views); use foreach=True for other dtypes")
        if joining and p.numel() and not is_dense(p):
            raise ValueError(f"{who}(fused=True): parameter {i} is a view with gaps or overlaps (shape "
                             f"{tuple(p.shape)}, strides {p.stride()}), which the fused kernel cannot walk in place; "
                             "leave `fused` unset (the default steps such tensors on a dense copy) or pass "
                             "foreach=True")


# ------------------------------------------------------------------------------------------ step inputs
def check_grad(p: Tensor, grad: Tensor, where: str, written: bool = False, fused: bool = False,
               who: str = "SGDF") -> None:
    """`written`: the step writes the gradient (the fused kernel unscales it in place for a GradScaler); `fused`:
    the fused kernel takes it."""
    if grad.layout is not torch.strided:
        raise RuntimeError(f"{who}: the gradient of {where} is {grad.layout}; {who} does not support sparse "
                           "gradients: use a dense gradient (for example nn.Embedding(sparse=False)) or "
                           "torch.optim.SparseAdam for that parameter")
    if grad.dtype is not p.dtype or grad.shape != p.shape or grad.device != p.device:
        raise ValueError(f"{who}: the gradient of {where} is {_describe(grad)} but the parameter is {_describe(p)}; "
                         "a gradient must match its parameter (was the parameter's .data replaced after backward? "
                         "zero_grad() and run backward again)")
    if dispatches_itself(type(grad)) and not dispatches_itself(type(p)):
        raise ValueError(f"{who}: the gradient of {where} is a {type(grad).__name__}, a tensor subclass that runs "
                         f"torch's ops itself (__torch_dispatch__), but the parameter is a {type(p).__name__}: each "
                         "in-place op of the step would run once per tensor the subclass holds; give the parameter a "
                         "plain tensor gradient (or make the parameter the same subclass)")
    _check_distributed_layout(p, grad, f"the gradient of {where}",
                              " (the fused kernel unscales it in place for the GradScaler)" if written else "",
                              "set the gradient as autograd makes it: "
                              "a DTensor on the parameter's mesh (distribute_tensor(g, p.device_mesh, p.placements))",
                              who)
    _check_written(p, where, "give the parameter data of its own (p.data = p.data.clone())", who=who)
    if _lacks_memory(grad):
        raise ValueError(f"{who}: the gradient of {where} has elements but no memory (its storage was freed: "
                         "untyped_storage().resize_(0)); zero_grad() and run backward again")
    if grad.is_neg():
        raise ValueError(f"{who}: the gradient of {where} has the negative bit set (a lazily negated view, such as "
                         "torch._neg_view gives); pass grad.resolve_neg()")
    if fused and grad._is_zerotensor():  # (torch's dispatch refuses it as an argument the kernel may write)
        raise ValueError(f"{who}: the gradient of {where} is an efficient zero tensor (torch._efficientzerotensor), "
                         "which the fused kernel cannot take; materialize it (p.grad = torch.zeros_like(p)), or "
                         "use foreach=True for this group")
    if written:  # (a conjugate one is resolved into a copy, written back through the view)
        _check_written(grad, f"the gradient of {where}", "give it memory of its own (p.grad = p.grad.clone())",
                       conjugate_ok=True, who=who)


def check_state(p: Tensor, state: dict, group: dict, on_device: bool, where: str, who: str = "SGDF") -> None:
    """The state of a parameter that stepped before still fits it (its .data may have been replaced since) and its
    group's storage options (which may have been edited since), every entry as the fused kernel checks them (a
    state edited by hand would otherwise fail in the middle of a step)."""
    if not isinstance(state, dict):
        raise ValueError(f"{who}: the state of {where} is {type(state).__name__}, not a dict (edited by hand?); delete "
                         "it (del opt.state[p]) to start the parameter afresh, or restore the optimizer's state_dict")
    if not state:
        return
    moments = moment_keys(group)
    missing = [key for key in ("step", *moments) if key not in state]
    if missing == ["exp_avg_sq"]:
        raise ValueError(f"{who}: the state of {where} lacks 'exp_avg_sq': the group's preconditioner was switched to "
                         "'second_moment' after the parameter stepped with 'variance', which keeps no second moment; "
                         "switch it back, or delete the parameter's state (del opt.state[p]) to start it afresh")
    if missing:
        raise ValueError(f"{who}: the state of {where} lacks {', '.join(map(repr, missing))}; the state was edited "
                         "by hand: restore it from the optimizer's state_dict (or delete the parameter's whole "
                         "state to start it afresh)")
    first = state[moments[0]]
    expected = state_dtype(p, group)
    if isinstance(first, Tensor) and (first.dtype is not expected or first.shape != p.shape or
                                      first.device != p.device):
        raise ValueError(f"{who}: the state of {where} is {_describe(first)} but the parameter is now "
                         f"{_describe(p)} (state in {expected}): the parameter or the group's state_dtype changed "
                         "after the optimizer stepped, or the state was edited by hand. Cast or move the model before "
                         "building the optimizer, or save and load the optimizer's state_dict, which converts the "
                         "state to the parameters and options")
    if group["master_weights"] != ("master_param" in state) or group["stochastic_rounding"] != ("rounding_seed" in
                                                                                                state):
        raise ValueError(f"{who}: the state of {where} was made with other master_weights / stochastic_rounding "
                         "settings than the group has now; set them when building the optimizer, or save and load "
                         "the optimizer's state_dict, which creates or drops master copies and seeds as the options "
                         "require")
    tensors = [(key, expected) for key in moments] + [("master_param", torch.float32)] * group["master_weights"]
    for key, dtype in tensors:
        t = state[key]
        if not isinstance(t, Tensor) or t.dtype is not dtype or t.shape != p.shape or t.device != p.device:
            found = _describe(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{who}: the state of {where} holds '{key}' as {found}, but the parameter is "
                             f"{_describe(p)} and '{key}' must be {dtype} of its shape on its device; the state was "
                             "edited by hand: restore it from the optimizer's state_dict")
        _check_written(t, f"'{key}' of {where}", who=who)
        _check_distributed_layout(p, t, f"'{key}' of {where}", " (the step writes it in place)",
                                  "restore the state from the optimizer's state_dict", who)
    step = state["step"]
    if not (isinstance(step, Tensor) and step.numel() == 1 and step.dtype is torch.float32 and
            (step.device == p.device or (not on_device and step.device.type == "cpu")) and
            step.device.type != "meta" and not is_dtensor(step)):
        found = _describe(step) if isinstance(step, Tensor) else type(step).__name__
        found = f"a DTensor ({found})" if is_dtensor(step) else found
        places = p.device if on_device or p.device.type == "cpu" else f"the CPU or {p.device}"
        raise ValueError(f"{who}: the state of {where} holds 'step' as {found}; it must be a one-element float32 "
                         f"tensor on {places}: restore it from the optimizer's state_dict")
    _check_written(step, f"'step' of {where}", who=who)
    # a step count of NaN, inf or below 0 would turn the weights into NaN; read where that costs no synchronisation
    count = float(step) if step.device.type == "cpu" else 0.0
    if not (math.isfinite(count) and count >= 0.0):
        raise ValueError(f"{who}: the state of {where} holds 'step' {count}; a step count is finite and >= 0: "
                         "restore it from the optimizer's state_dict")
    seed = state.get("rounding_seed")
    if group["stochastic_rounding"] and (isinstance(seed, bool) or not isinstance(seed, int) or
                                         not 0 <= seed <= 0xFFFFFFFF):
        raise ValueError(f"{who}: the state of {where} holds 'rounding_seed' {seed!r}; it must be an int in "
                         "[0, 2**32): restore it from the optimizer's state_dict")


def _check_distributed_layout(p: Tensor, t: Tensor, what: str, placed: str, fix: str, who: str) -> None:
    """A DTensor parameter's gradient or state tensor (`what`) is a DTensor on its mesh and, where the step writes
    it (`placed`: why, for the message; empty where it is only read), with its placements: one placed otherwise
    would be updated as a redistributed copy, and torch's ops refuse other meshes and a mix with plain tensors
    midway through a step. A plain parameter's is plain."""
    sharded, sharded_param = is_dtensor(t), is_dtensor(p)
    if sharded != sharded_param:
        problem = "a DTensor, but the parameter is a plain tensor" if sharded else "a plain tensor, but the " \
            f"parameter is a DTensor (placements {tuple(p.placements)})"
    elif not sharded_param:
        return
    elif t.device_mesh != p.device_mesh:  # (by their ranks: meshes of the same shape print alike)
        problem = (f"a DTensor on the device mesh of ranks {t.device_mesh.mesh.tolist()}, but the parameter is on "
                   f"ranks {p.device_mesh.mesh.tolist()}")
    elif placed and tuple(t.placements) != tuple(p.placements):
        problem = f"placed as {tuple(t.placements)}, but the parameter as {tuple(p.placements)}{placed}"
    else:
        return
    raise ValueError(f"{who}: {what} is {problem}; {fix}")


def _check_written(t: Tensor, what: str, fix: str = "restore the state from the optimizer's state_dict (outside "
                   "torch.inference_mode())", conjugate_ok: bool = False, who: str = "SGDF") -> None:
    """What a step writes in place must take an in-place write: torch would refuse it in the middle of a step."""
    if t.layout is torch.strided and _lacks_memory(t):  # (`fix` would copy it: a clone reads the freed memory too)
        raise ValueError(f"{who}: {what} has elements but no memory (its storage was freed: untyped_storage()."
                         "resize_(0)), so the step can neither read nor write it; step while its storage is allocated "
                         "(FSDP frees unsharded parameters after use: build the optimizer over the sharded ones), or "
                         "load the values from a checkpoint into a tensor with memory")
    problem = ("is sparse" if t.layout is not torch.strided else
               "is a conjugate view" if t.is_conj() and not conjugate_ok else
               "has the negative bit set (a lazily negated view)" if t.is_neg() else
               "is an inference tensor, which cannot be written outside torch.inference_mode()"
               if t.is_inference() and not torch.is_inference_mode_enabled() else
               "has elements that share memory (an expanded view)" if _overlaps_itself(t) else
               None)
    if problem:
        raise ValueError(f"{who}: {what} {problem}, so the step cannot update it in place; {fix}")


def _lacks_memory(t: Tensor) -> bool:
    """Whether `t` has elements but no memory: a storage freed by hand (FSDP frees unsharded parameters with
    untyped_storage().resize_(0)), which a step would read and write through a null pointer; the kernels refuse the
    same. One address read in the common case. Only a storage of 0 bytes counts: other tensors without an address
    keep their data elsewhere or not at all (meta, efficient zeros, subclasses that run their own ops, torch's
    tracing tensors, backends such as XLA or torch's lazy tensors, which the foreach path steps). Asked under
    torch.compile too: Dynamo runs the checks on the real tensors (_init_group), and a compiled step segfaults on a
    freed one as an eager one does."""
    if _address(t) or not t.numel():
        return False
    if t.is_meta or t._is_zerotensor() or dispatches_itself(type(t)) or isinstance(t, _TRACING_TENSORS):
        return False
    try:
        return t.untyped_storage().nbytes() == 0
    except (RuntimeError, NotImplementedError):  # (no storage to ask: nothing freed)
        return False


def _overlaps_itself(t: Tensor) -> bool:
    """Whether two elements of `t` may share memory (an expanded or as_strided view). Where torch cannot tell, by
    the strides: each dimension's stride must pass the furthest element the smaller-strided ones reach."""
    overlap = torch._debug_has_internal_overlap(t)  # 0: no, 1: yes, 2: too hard for torch to tell
    if overlap != 2:
        return overlap == 1
    reach = 0
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz > 1):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def check_no_shared_memory(operands: Iterable[Tuple[Tensor, bool, str]], who: str = "SGDF") -> None:
    """No two of a step's tensors share memory where one of them is written: `operands` are (tensor, written,
    what it is: a string, or a format string and its arguments, formatted only for a message). The same tensor
    twice, or overlapping views of one buffer, would be stepped twice or read after being overwritten. Byte ranges
    are compared only within a storage that holds several operands (the common case, every tensor in a storage of
    its own, costs one address per tensor)."""
    by_storage = defaultdict(list)
    dtensor = dtensor_type() or ()  # (isinstance(t, ()) is False)
    for operand in operands:
        t = operand[0]
        if isinstance(t, dtensor):  # (by this rank's shard, which the step writes)
            t = t.to_local()
            operand = (t, *operand[1:])
        address = _storage_address(t)
        if address:  # (a CPU address cannot be a device's; devices of one kind by their index)
            by_storage[(address, t.is_cpu, t.get_device())].append(operand)
    for shared in by_storage.values():
        if len(shared) < 2:
            continue
        ranges = sorted(((*span, written, what) for t, written, what in shared for span in [_span(t)] if span),
                        key=lambda r: r[:3])  # (ties in the order given)
        furthest = furthest_written = None  # (end, what) among earlier ranges, all and written ones
        for start, end, written, what in ranges:
            clash = furthest_written if furthest_written and start < furthest_written[0] else None
            if clash is None and written and furthest and start < furthest[0]:
                clash = furthest
            if clash is not None:
                first, second = (x if isinstance(x, str) else x[0].format(*x[1:]) for x in (clash[1], what))
                raise ValueError(f"{who}: {first} and {second} share memory (the same tensor, or overlapping views "
                                 "of one buffer), so a step would write one while reading or writing the other; give "
                                 "each its own tensor (e.g. p.grad = g.clone()), or optimize the tensor they view once")
            if furthest is None or end > furthest[0]:
                furthest = (end, what)
            if written and (furthest_written is None or end > furthest_written[0]):
                furthest_written = (end, what)


# ------------------------------------------------------------------------------------------ checkpoints
def check_checkpoint_layout(state_dict, groups: List[dict], who: str = "SGDF") -> None:
    """The parts torch.optim would otherwise reject with a bare KeyError or an unclear message."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"{who}.load_state_dict: expected the dict returned by state_dict(), got "
                        f"{type(state_dict).__name__}")
    for key, kind in (("state", dict), ("param_groups", list)):
        if key not in state_dict:
            raise ValueError(f"{who}.load_state_dict: the checkpoint lacks '{key}'; pass the dict returned by "
                             "state_dict()")
        if not isinstance(state_dict[key], kind):
            raise TypeError(f"{who}.load_state_dict: the checkpoint's '{key}' is {type(state_dict[key]).__name__}, "
                            f"not a {kind.__name__}; pass the dict returned by state_dict()")
    saved = state_dict["param_groups"]
    if len(saved) != len(groups):
        raise ValueError(f"{who}.load_state_dict: the checkpoint has {len(saved)} param groups but this optimizer "
                         f"has {len(groups)}; build the optimizer with the param groups of the one that saved it")
    for gi, (s, g) in enumerate(zip(saved, groups)):
        if not (isinstance(s, dict) and "params" in s):
            raise ValueError(f"{who}.load_state_dict: param group {gi} of the checkpoint is not a dict with a "
                             "'params' entry; pass the dict returned by state_dict()")
        if len(s["params"]) != len(g["params"]):
            raise ValueError(f"{who}.load_state_dict: param group {gi} has {len(s['params'])} parameters in the "
                             f"checkpoint but {len(g['params'])} here; build the optimizer with the param groups of "
                             "the one that saved it")
    for key, entries in state_dict["state"].items():  # (torch's load copies them to the params' devices first)
        for name, t in entries.items() if isinstance(entries, dict) else ():
            if isinstance(t, Tensor) and t.is_meta:
                raise ValueError(f"{who}.load_state_dict: '{name}' of the state of parameter id {key!r} is a meta "
                                 "tensor (no values); load a checkpoint saved by state_dict()")


def checked_loaded_step(p: Tensor, state: dict, where: str, keys: Sequence[str] = STATE_KEYS,
                        who: str = "SGDF") -> float:
    """Check one parameter's loaded state against the parameter (`keys`: the entries it needs); returns its step
    count."""
    if p.is_meta:  # (torch's load would move the state to the meta device, dropping its values)
        raise ValueError(f"{who}.load_state_dict: {where} is on the meta device (no values), so its loaded state "
                         "would lose its values; materialize the model first (to_empty() and its weights), build the "
                         "optimizer over the materialized parameters, then load the optimizer's checkpoint")
    missing = [key for key in keys if key not in state]
    if missing == ["exp_avg_sq"]:  # (AdaSGDF's "second_moment" group, an SGDF or "variance" state)
        raise ValueError(f"{who}.load_state_dict: the state of {where} lacks exp_avg_sq, which AdaSGDF's "
                         "preconditioner='second_moment' resumes: the checkpoint is an SGDF one or was saved with "
                         "preconditioner='variance' (no second moment to resume); set 'preconditioner': 'variance' in "
                         "its param_groups (an SGDF checkpoint: construct AdaSGDF(preconditioner='variance'))")
    if missing:
        raise ValueError(f"{who}.load_state_dict: the state of {where} lacks {', '.join(missing)}; the checkpoint "
                         f"is incomplete or from another optimizer (each parameter needs {', '.join(keys)})")
    step = state["step"]
    if isinstance(step, Tensor):
        if step.numel() != 1 or step.is_complex() or step.is_meta or step.layout is not torch.strided:
            raise ValueError(f"{who}.load_state_dict: 'step' of {where} must be a real one-element dense tensor with a "
                             f"value (or a number), got {_describe(step)}")
        value = float(step)
    elif _is_real_number(step):  # (numpy's too)
        value = step
    else:
        raise TypeError(f"{who}.load_state_dict: 'step' of {where} must be a number or a one-element tensor, got "
                        f"{type(step).__name__}")
    if not (_finite(value) and 0 <= value <= _FLOAT32_MAX):  # (step counts are kept in float32)
        raise ValueError(f"{who}.load_state_dict: 'step' of {where} is {value}; a step count is finite, >= 0 and <= "
                         f"{_FLOAT32_MAX!r} (float32's largest value)")
    value = float(value)
    for key in keys[1:]:
        t = state[key]
        if not isinstance(t, Tensor):
            raise TypeError(f"{who}.load_state_dict: '{key}' of {where} must be a tensor, got {type(t).__name__}")
        if t.is_meta or t.layout is not torch.strided:
            found = "a meta tensor (no values)" if t.is_meta else t.layout
            raise ValueError(f"{who}.load_state_dict: '{key}' of {where} is {found}; the state is dense tensors with "
                             "values: load a checkpoint saved by state_dict()")
        if not (t.is_floating_point() or t.is_complex()) or (t.is_complex() and not p.is_complex()):
            raise ValueError(f"{who}.load_state_dict: '{key}' of {where} is {t.dtype} but the parameter is "
                             f"{p.dtype}; the state of a real parameter is real (a cast would drop the imaginary "
                             "part): the checkpoint belongs to another model")
        if t.shape != p.shape:
            raise ValueError(f"{who}.load_state_dict: '{key}' of {where} has shape {tuple(t.shape)} but the "
                             f"parameter has shape {tuple(p.shape)}; the checkpoint's parameters are in another "
                             "order or belong to another model")
    master = state.get("master_param")
    if master is not None and not (isinstance(master, Tensor) and master.shape == p.shape and
                                   master.is_floating_point()):
        raise ValueError(f"{who}.load_state_dict: 'master_param' of {where} must be a floating-point tensor of the "
                         f"parameter's shape {tuple(p.shape)}, got "
                         f"{_describe(master) if isinstance(master, Tensor) else type(master).__name__}")
    seed = state.get("rounding_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 0xFFFFFFFF):
        raise ValueError(f"{who}.load_state_dict: 'rounding_seed' of {where} must be an int in [0, 2**32), got "
                         f"{seed!r}")
    return value


def check_state_keys(state: dict, params: Iterable[Tensor], who: str = "SGDF") -> None:
    known = {id(p) for p in params}
    for key, entries in state.items():
        if not isinstance(key, Tensor) or id(key) not in known:
            raise ValueError(f"{who}.load_state_dict: the checkpoint holds state for parameter id {key!r}, which no "
                             "param group lists; the checkpoint belongs to another optimizer or model")
        if not isinstance(entries, dict):
            raise ValueError(f"{who}.load_state_dict: the checkpoint holds {type(entries).__name__} as the state of a "
                             "parameter; each parameter's state is a dict (leave out a parameter without state)")
