"""``fused_sgdf_``: one fused SGDF (or AdaSGDF) step over a group of tensors, and ``fused_sgdf_grouped_``: over
several param groups in one call (the kernels: csrc/sgdf); each beside its fake."""

import numbers
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .. import _native
from ._fake_checks import check_one_device

__all__ = ["fused_sgdf_", "fused_sgdf_grouped_"]

# What every refusal of either op's arguments starts with: the kernels' checks ("sgdf_erd::fused_sgdf_: ...",
# "sgdf_erd::fused_sgdf_grouped_ (param group 1): ...") and the dispatcher's own ("sgdf_erd::fused_sgdf_() Expected a
# value of type ..."), all raised before anything is written. An error that starts otherwise (a failed CUDA launch,
# say) may come after writes.
FUSED_SGDF_REFUSED = "sgdf_erd::fused_sgdf_"


def fused_sgdf_(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_vars: List[Tensor],
                updates: List[Tensor], steps: List[Tensor], lr: float, lr_tensor: Optional[Tensor], beta1: float,
                beta2: float, eps: float, gamma: float, weight_decay: float, decoupled_weight_decay: bool,
                sign: bool, maximize: bool, grad_scale: Optional[Tensor], found_inf: Optional[Tensor],
                master_params: Sequence[Tensor] = (), rounding_seeds: Sequence[int] = (),
                rounding_offsets: Sequence[int] = (), exp_avg_sqs: Optional[Sequence[Tensor]] = (),
                preconditioner: str = "none") -> None:
    """One SGDF step, in place, over same-device tensors of one param dtype and one state dtype (the fused path
    of :class:`sgdf_erd.SGDF`, which groups the tensors and checks the hyperparameters first).

    Advances each step count by one unless ``found_inf`` is nonzero (then nothing changes). With ``updates``
    non-empty the filtered update is written there and the weights are left as they are (the caller decays and
    updates them). ``lr_tensor``, when given, replaces ``lr``. ``exp_avgs`` / ``exp_vars`` may be float32,
    bfloat16 or float16 whatever the params' dtype (float64 with float64 params). ``master_params``: float32
    copies of bfloat16 / float16 params, updated by the filter; the params receive them rounded to nearest.
    ``rounding_seeds``: one per param, in [0, 2**32): 16-bit results (params without master copies, state) are
    rounded stochastically with the counter-based numbers of (seed, step, element index). ``rounding_offsets``:
    one per seeded param (default all 0), the index of its first element: a shard of a larger tensor, numbered by
    its elements' positions in the whole tensor, draws what the whole tensor would. ``preconditioner``: "none"
    (SGDF), or AdaSGDF's "second_moment" (the update divided by sqrt(v / (1 - b2^t)) + eps, with ``exp_avg_sqs``
    the EMA v of the filtered gradient's square, one per param in the state dtype) or "variance" (divided by
    sqrt(exp_var / (1 - b2^t)) + eps; no exp_avg_sqs). The kernels check every
    argument before writing anything and raise RuntimeError (ValueError for a seed out of range). A call without
    any tensor does nothing.
    """
    op = "sgdf_erd::fused_sgdf_"
    rounding_seeds = _int_list(op, "rounding_seeds", rounding_seeds)
    rounding_offsets = _int_list(op, "rounding_offsets", rounding_offsets)
    _check_not_negated(op, lr_tensor=[lr_tensor], grad_scale=[grad_scale], found_inf=[found_inf],
                       exp_avg_sqs=exp_avg_sqs or ())
    if _no_tensors(params, grads, exp_avgs, exp_vars, updates, steps, master_params, exp_avg_sqs, lr_tensor,
                   grad_scale, found_inf):
        return
    _native.ops.fused_sgdf_(params, grads, exp_avgs, exp_vars, updates, steps, lr, lr_tensor, beta1, beta2, eps,
                            gamma, weight_decay, decoupled_weight_decay, sign, maximize, grad_scale, found_inf,
                            list(master_params), rounding_seeds, rounding_offsets, list(exp_avg_sqs or ()) or None,
                            preconditioner)


def _int_list(op: str, name: str, values: Sequence) -> List[int]:
    """`values` as Python ints, each checked to be an integer within int64: the dispatcher would take True as 1 and
    a one-element tensor as its value, and refuses an int beyond int64 with a message about the list's type. The
    kernels check the ranges."""
    values = list(values)
    for i, v in enumerate(values):
        if type(v) is not int and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
            raise TypeError(f"{op}: '{name}[{i}]' must be an int, got {type(v).__name__} ({v!r})")
        if not -(2**63) <= v < 2**63:
            raise ValueError(f"{op}: '{name}[{i}]'={v} is out of range (beyond int64)")
    return [int(v) for v in values]


def _check_not_negated(op: str, indexed: Sequence[str] = ("exp_avg_sqs",),
                       **lists: Sequence[Optional[Tensor]]) -> None:
    """The optional arguments (single tensors, and optional lists) reach the kernels as they are stored: torch's
    fallback for lazily negated tensors resolves the others, and the kernels cannot see the negative bit. Such a
    tensor holds the opposite of its values in memory. Not asked under torch.compile, where it would break the graph
    (the optimizer resolves the scalars it passes, and refuses negated state)."""
    if torch.compiler.is_compiling():
        return
    for name, tensors in lists.items():
        for i, t in enumerate(tensors):
            if isinstance(t, Tensor) and t.is_neg():
                where = f"{name}[{i}]" if name in indexed else name
                raise ValueError(f"{op}: '{where}' has the negative bit set (a lazily negated view, whose memory "
                                 "holds the opposite values, which the kernel would read); pass t.resolve_neg()")


def _no_tensors(*args) -> bool:
    """Whether a call is given no tensor at all (empty lists, no optional tensors): nothing to step, and nothing the
    dispatcher could choose a kernel by."""
    return all(len(a) == 0 if isinstance(a, (list, tuple)) else a is None for a in args)


@torch.library.register_fake("sgdf_erd::fused_sgdf_")
def _fused_sgdf_fake(params, grads, exp_avgs, exp_vars, updates, steps, lr, lr_tensor, beta1, beta2, eps, gamma,
                     weight_decay, decoupled_weight_decay, sign, maximize, grad_scale, found_inf, master_params,
                     rounding_seeds=(), rounding_offsets=(), exp_avg_sqs=None, preconditioner="none"):
    # the op only writes its inputs, so under torch.compile and FakeTensor it returns nothing
    _check_fake_devices("fused_sgdf_", dict(params=params, grads=grads, exp_avgs=exp_avgs, exp_vars=exp_vars,
                                            updates=updates, steps=steps, master_params=master_params,
                                            exp_avg_sqs=exp_avg_sqs or ()),
                        dict(lr_tensor=lr_tensor, grad_scale=grad_scale, found_inf=found_inf))


def _check_fake_devices(op: str, lists: dict, singles: dict) -> None:
    """The mixed-device check over an op's list arguments (elements named `name[i]`) and single tensors."""
    named = [(f"{name}[{i}]", t) for name, ts in lists.items() for i, t in enumerate(ts)] + list(singles.items())
    check_one_device(op, named, RuntimeError)  # RuntimeError, as the kernels' checks raise


def fused_sgdf_grouped_(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], exp_vars: List[Tensor],
                        steps: List[Tensor], master_params: List[Tensor], rounding_seeds: List[int],
                        group_sizes: List[int], lr: List[float], lr_tensor: List[Optional[Tensor]],
                        beta1: List[float], beta2: List[float], eps: List[float], gamma: List[float],
                        weight_decay: List[float],
                        decoupled_weight_decay: List[bool], sign: List[bool], maximize: List[bool],
                        master_weights: List[bool], stochastic_rounding: List[bool], grad_scale: Optional[Tensor],
                        found_inf: Optional[Tensor], exp_avg_sqs: Optional[Sequence[Tensor]] = (),
                        preconditioner: str = "none", check_only: Sequence[bool] = ()) -> None:
    """One SGDF step over several param groups of one device, in place: fused_sgdf_ for each group (without update
    buffers or rounding offsets), in one call that checks every group before it writes anything.

    The groups' tensors follow each other in the lists; ``group_sizes`` gives each group's number of params. The
    hyperparameters ``lr`` ... ``maximize`` and the options ``master_weights`` / ``stochastic_rounding`` hold one
    value per group; ``lr_tensor`` one entry per group, a tensor replacing the group's ``lr`` or None.
    ``master_params`` and ``rounding_seeds`` hold one entry per param of the groups whose option is set, in group
    order. ``preconditioner`` (one for the call) and ``exp_avg_sqs`` (with "second_moment", one per param) as in
    fused_sgdf_. ``check_only`` (empty, or one value per group): groups checked with the others and left
    unchanged, for a caller that steps them otherwise; their gradients count as only read there (they may share
    memory with each other, not with a tensor the call or such a step writes). Refusals raise RuntimeError
    (ValueError for a seed out of range) with messages starting with FUSED_SGDF_REFUSED. A call without any tensor
    does nothing.
    """
    op = "sgdf_erd::fused_sgdf_grouped_"
    rounding_seeds = _int_list(op, "rounding_seeds", rounding_seeds)
    group_sizes = _int_list(op, "group_sizes", group_sizes)
    _check_not_negated(op, ("lr_tensor", "exp_avg_sqs"), lr_tensor=lr_tensor, grad_scale=[grad_scale],
                       found_inf=[found_inf], exp_avg_sqs=exp_avg_sqs or ())
    if _no_tensors(params, grads, exp_avgs, exp_vars, steps, master_params, exp_avg_sqs, grad_scale, found_inf,
                   [t for t in lr_tensor if t is not None]):
        return
    _native.ops.fused_sgdf_grouped_(params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds,
                                    group_sizes, lr, lr_tensor, beta1, beta2, eps, gamma, weight_decay,
                                    decoupled_weight_decay, sign, maximize, master_weights, stochastic_rounding,
                                    grad_scale, found_inf, list(exp_avg_sqs or ()) or None, preconditioner,
                                    list(check_only))


@torch.library.register_fake("sgdf_erd::fused_sgdf_grouped_")
def _fused_sgdf_grouped_fake(params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds, group_sizes,
                             lr, lr_tensor, beta1, beta2, eps, gamma, weight_decay, decoupled_weight_decay, sign,
                             maximize, master_weights, stochastic_rounding, grad_scale, found_inf, exp_avg_sqs=None,
                             preconditioner="none", check_only=()):
    _check_fake_devices("fused_sgdf_grouped_", dict(params=params, grads=grads, exp_avgs=exp_avgs, exp_vars=exp_vars,
                                                    steps=steps, master_params=master_params, lr_tensor=lr_tensor,
                                                    exp_avg_sqs=exp_avg_sqs or ()),
                        dict(grad_scale=grad_scale, found_inf=found_inf))
