"""Derivatives and batching rules of the ERD loss ops, so that autograd, torch.func transforms (grad, vjp, jvp,
vmap, hessian) and torch.compile all see them; the maths stays in the fused kernels.

- ``erd_loss_forward``: gradients for ``output`` and ``target`` only (alpha, sigma and given weights are constants
  of the loss); ``mse``, ``weight`` and ``bin_sums`` are not differentiable.
- ``erd_loss_backward``: its outputs are ``d`` and (for the target) ``-d`` with ``d = (output - target) * grad * c``
  (``c_i = 2 w_i / numel``), linear in ``output - target`` and in ``grad``, so its own derivatives are calls of
  itself: derivatives of any order (``create_graph=True``, forward mode) run the fused kernel too.

The rules are registered twice from one definition: on the ops with ``torch.library.register_autograd`` (plain
autograd, opcheck, torch.compile of a direct op call) and as :class:`LossForward` / :class:`LossBackward`
(``torch.autograd.Function``), which :func:`sgdf_erd.erd.erd_loss` calls. torch.func transforms need the latter:
they accept an autograd.Function only with a separate ``setup_context``, and the Function torch.library generates
for an op has none (torch 2.14: "In order to use an autograd.Function with functorch transforms ...").

vmap: both ops loop over the vmapped dimension, one kernel call per slice. The loss, its per-bin sums and the
gradient's scale are per-call quantities (means over the call's batch), so folding the vmapped dimension into the
batch would need them recomputed outside the kernels; the loop gives exactly the unbatched results.
"""

import torch
from torch.autograd import forward_ad

from .._kernel_errors import raising_marked_types
from ..ops.erd import ERD_LOSS_BACKWARD_OP as _BACKWARD, ERD_LOSS_FORWARD_OP as _FORWARD

__all__ = ["loss_forward", "LossForward", "LossBackward", "EagerLossForward", "EagerLossBackward"]

# the calls inside the Functions below, with the kernels' errors as the Python types they mean
_forward = raising_marked_types(_FORWARD)
_backward = raising_marked_types(_BACKWARD)


def _difference(u_plus, u_minus):
    """u_plus - u_minus, either possibly None (zero); None when both are."""
    if u_plus is None:
        return None if u_minus is None else -u_minus
    return u_plus if u_minus is None else u_plus - u_minus


def _setup_forward(ctx, inputs, output):
    _, mse, weight, bin_sums = output
    ctx.save_for_backward(inputs[0], inputs[1], weight)
    ctx.save_for_forward(inputs[0], inputs[1], weight)
    ctx.mark_non_differentiable(mse, weight, bin_sums)
    ctx.set_materialize_grads(False)


def _legacy_batched(t) -> bool:
    """Whether `t` is batched by autograd's own vmap (torch.autograd.grad(is_grads_batched=True),
    autograd.functional's vectorize=True, gradcheck's check_batched_grad), which cannot run the ops (it has no
    batching rules from Python); the derivatives are linear in the cotangent, so they scale an unbatched call's."""
    return t is not None and torch._C._functorch.is_legacy_batchedtensor(t)


def _forward_backward(ctx, grad_loss, *_):
    grads = [None] * len(ctx.needs_input_grad)
    need_output, need_target = ctx.needs_input_grad[:2]
    if grad_loss is None or not (need_output or need_target):
        return tuple(grads)
    output, target, weight = ctx.saved_tensors
    if _legacy_batched(grad_loss):
        per_unit = _loss_backward(torch.ones((), dtype=output.dtype, device=output.device), output, target,
                                  weight, False)[0]
        d = per_unit * grad_loss
        result = (d, -d)
    else:
        result = _loss_backward(grad_loss, output, target, weight, need_target)
    grads[0] = result[0] if need_output else None
    grads[1] = result[1] if need_target else None
    return tuple(grads)


def _forward_jvp(ctx, output_tangent, target_tangent, *_):
    # d loss = sum(d loss / d output * (output_tangent - target_tangent)), the gradient at grad_loss = 1
    output, target, weight = ctx.saved_tensors
    u = _difference(output_tangent, target_tangent)
    if u is None:
        return None, None, None, None
    per_unit = _loss_backward(torch.ones((), dtype=output.dtype, device=output.device), output, target,
                                  weight, False)[0]
    return (per_unit * u).sum(), None, None, None


def _with_derivative(op, transform_function, eager_function, args):
    """`op(*args)` with its derivative, by the cheapest way that keeps it: inside a torch.func transform the
    setup_context-style Function it needs; where no derivative can be taken, no Function at all (grad mode off and no
    forward-mode AD level open: an evaluation under no_grad or inference_mode, a backward without create_graph; dual
    tensors carry their tangents through the autograd key, which the direct call skips); else the cheaper-to-call
    eager Function (see EagerLossForward)."""
    if torch._C._are_functorch_transforms_active():
        return transform_function.apply(*args)
    if not torch.is_grad_enabled() and forward_ad._current_level < 0:
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)
    return eager_function.apply(*args)


def loss_forward(*args):
    """erd_loss_forward with its derivative (_with_derivative). Dynamo cannot trace an autograd.Function with a jvp,
    so compiled code calls the op, which has the same derivative registered."""
    if torch.compiler.is_compiling():
        return _FORWARD(*args)
    return _with_derivative(_forward, LossForward, EagerLossForward, args)


def _loss_backward(*args):
    """erd_loss_backward with its derivative (_with_derivative)."""
    return _with_derivative(_backward, LossBackward, EagerLossBackward, args)


def _setup_backward(ctx, inputs, output):
    grad, out, target, weight, target_requires_grad = inputs
    ctx.save_for_backward(grad, out, target, weight)
    ctx.save_for_forward(grad, out, target, weight)
    ctx.target_requires_grad = target_requires_grad
    ctx.set_materialize_grads(False)


def _backward_backward(ctx, *cotangents):
    grad, output, target, weight = ctx.saved_tensors
    need_grad, need_output, need_target = ctx.needs_input_grad[:3]
    # only u = u_d - u_(-d) matters
    u = _difference(cotangents[0], cotangents[1] if len(cotangents) > 1 else None)
    if u is None or not (need_grad or need_output or need_target):
        return None, None, None, None, None
    d_output = d_target = d_grad = None
    if (need_output or need_target) and _legacy_batched(u):
        d_output = _loss_backward(grad, torch.ones_like(output), torch.zeros_like(output), weight, False)[0] * u
        d_target = -d_output if need_target else None
    elif need_output or need_target:
        d_output = _loss_backward(grad, u, torch.zeros_like(u), weight, False)[0]
        d_target = -d_output if need_target else None
    if need_grad:
        d_per_unit_grad = _loss_backward(torch.ones_like(grad), output, target, weight, False)[0]
        d_grad = (d_per_unit_grad * u).sum().reshape(grad.shape).to(grad.dtype)
    return d_grad, d_output if need_output else None, d_target, None, None


def _backward_jvp(ctx, grad_tangent, output_tangent, target_tangent, *_):
    grad, output, target, weight = ctx.saved_tensors
    u = _difference(output_tangent, target_tangent)
    d = None if u is None else _loss_backward(grad, u, torch.zeros_like(u), weight, False)[0]
    if grad_tangent is not None:
        from_grad = _loss_backward(grad_tangent, output, target, weight, False)[0]
        d = from_grad if d is None else d + from_grad
    if not ctx.target_requires_grad:
        return (d,)
    return d, None if d is None else -d


class LossForward(torch.autograd.Function):
    """``erd_loss_forward`` with its derivative, usable under torch.func transforms."""

    generate_vmap_rule = True  # vmap runs forward and backward on batched tensors: the ops' rules below

    @staticmethod
    def forward(*args):
        # This Function is the derivative: the op's own registered autograd below would only re-check and
        # re-dispatch (binding the schema in Python, ~2/3 of a small batch's loss time).
        with torch._C._AutoDispatchBelowAutograd():
            return _forward(*args)
    setup_context = staticmethod(_setup_forward)
    backward = staticmethod(_forward_backward)
    jvp = staticmethod(_forward_jvp)


class EagerLossForward(torch.autograd.Function):
    """LossForward in the older ctx-in-forward style, for plain autograd outside torch.func: torch binds a
    setup_context-style Function's arguments through Python signature inspection on every call, which costs more
    than the kernels on small batches. Same derivatives (its backward and jvp are LossForward's)."""

    @staticmethod
    def forward(ctx, *args):
        with torch._C._AutoDispatchBelowAutograd():
            result = _forward(*args)
        _setup_forward(ctx, args, result)
        return result

    backward = staticmethod(_forward_backward)
    jvp = staticmethod(_forward_jvp)


class LossBackward(torch.autograd.Function):
    """``erd_loss_backward`` (outputs as a tuple) with its derivative, usable under torch.func transforms."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, output, target, weight, target_requires_grad):
        with torch._C._AutoDispatchBelowAutograd():  # as in LossForward
            return tuple(_backward(grad, output, target, weight, target_requires_grad))

    setup_context = staticmethod(_setup_backward)
    backward = staticmethod(_backward_backward)
    jvp = staticmethod(_backward_jvp)


class EagerLossBackward(torch.autograd.Function):
    """LossBackward in the ctx-in-forward style (see EagerLossForward)."""

    @staticmethod
    def forward(ctx, *args):
        result = LossBackward.forward(*args)
        _setup_backward(ctx, args, result)
        return result

    backward = staticmethod(_backward_backward)
    jvp = staticmethod(_backward_jvp)


torch.library.register_autograd(_FORWARD, _forward_backward, setup_context=_setup_forward)
torch.library.register_autograd(_BACKWARD, lambda ctx, cotangents: _backward_backward(ctx, *cotangents),
                                setup_context=_setup_backward)


def _loop_over_vmapped_dim(op):
    """A batching rule calling ``op`` once per index of the vmapped dimension and stacking the results."""

    def rule(info, in_dims, *args):
        per_index = []
        for i in range(info.batch_size):
            per_index.append(op(*(a if dim is None else a.select(dim, i) for a, dim in zip(args, in_dims))))
        stacked = [torch.stack(parts) for parts in zip(*per_index)]
        return (tuple(stacked) if isinstance(per_index[0], tuple) else stacked), 0

    return rule


torch.library.register_vmap(_FORWARD, _loop_over_vmapped_dim(_FORWARD))
torch.library.register_vmap(_BACKWARD, _loop_over_vmapped_dim(_BACKWARD))
