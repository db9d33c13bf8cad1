"""The compiled kernels' errors reach users as the Python type they mean (ValueError, TypeError, RuntimeError) on
every supported torch, with clean messages: the kernels mark the type in the message (csrc/common/stable.h) and
sgdf_erd/_kernel_errors.py raises it, since torch 2.15 raises RuntimeError for any exception of a stable-ABI kernel
where torch 2.14 raised ValueError for std::invalid_argument."""

import pytest
import torch

import sgdf_erd
from sgdf_erd._kernel_errors import MARKERS, raising_marked_types
from sgdf_erd._native import ops
from sgdf_erd.ops import FUSED_SGDF_REFUSED, fused_sgdf_


def _raising(exc):
    def op(*args, **kwargs):
        raise exc
    return op


@pytest.mark.parametrize("raised", [ValueError, RuntimeError])  # as torch up to 2.14 / from 2.15 raises them
@pytest.mark.parametrize("marker,meant", MARKERS.items())
def test_a_marked_kernel_error_is_raised_as_its_type_without_the_marker(raised, marker, meant):
    with pytest.raises(meant) as info:
        raising_marked_types(_raising(raised(marker + "sgdf_erd::op: 'x' is wrong")))()
    assert type(info.value) is meant
    assert str(info.value) == "sgdf_erd::op: 'x' is wrong"


@pytest.mark.parametrize("exc", [RuntimeError("sgdf_erd::op: failed"), ValueError("sgdf_erd::op: bad"),
                                 RuntimeError("sgdf_erd::op: says ValueError: later"), IndexError("ValueError: x"),
                                 TypeError("sgdf_erd::op() Expected a value of type 'int'")])
def test_an_unmarked_error_passes_unchanged(exc):
    with pytest.raises(type(exc)) as info:
        raising_marked_types(_raising(exc))()
    assert info.value is exc


def test_every_operator_of_the_op_face_translates():
    names = {n.split("::", 1)[1].split(".", 1)[0] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("sgdf_erd::")}
    assert names and all(getattr(ops, name).__code__ is raising_marked_types(None).__code__ for name in names)


F, IDS = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("args,meant", [((F, IDS, 3), ValueError), ((F.half(), IDS, 3), TypeError)])
def test_the_kernels_mark_their_checks(args, meant):
    """A direct torch.ops call shows the kernel's own message, which names the type it means."""
    with pytest.raises((ValueError, RuntimeError)) as info:
        torch.ops.sgdf_erd.binned_gram_eigvalsh(*args)
    assert str(info.value).startswith(f"{meant.__name__}: sgdf_erd::binned_gram_eigvalsh: ")
    with pytest.raises(meant) as info:
        ops.binned_gram_eigvalsh(*args)
    assert type(info.value) is meant and str(info.value).startswith("sgdf_erd::binned_gram_eigvalsh: ")


def _loss(output, **changes):
    kwargs = dict(alpha=torch.ones(4), sigma=torch.ones(4), prediction="eps", weighting="erd")
    kwargs.update(changes)
    return sgdf_erd.erd_loss(output, torch.zeros(4, 5), **kwargs)


# each user-facing path from a kernel check to the user: the autograd Functions (plain and under torch.func),
# the weights op, and the fused step's refusals, which the optimizer recognises by their start
PATHS = {
    "loss": (lambda: _loss(torch.zeros(4, 5), sigma=-torch.ones(4)), ValueError, "sgdf_erd::erd_loss_forward: sigma"),
    "loss_grad_mode": (lambda: _loss(torch.zeros(4, 5, requires_grad=True), sigma=-torch.ones(4)), ValueError,
                       "sgdf_erd::erd_loss_forward: sigma"),
    "loss_type": (lambda: _loss(torch.zeros(4, 5), alpha=torch.ones(4, dtype=torch.long)), TypeError,
                  "sgdf_erd::erd_loss_forward: 'alpha' must be a floating-point tensor"),
    "loss_func_grad": (lambda: torch.func.grad(lambda o: _loss(o, sigma=-torch.ones(4)))(torch.zeros(4, 5)),
                       ValueError, "sgdf_erd::erd_loss_forward: sigma"),
    "weights": (lambda: ops.erd_weights(torch.ones(3), -torch.ones(3), None, None, "eps", "erd", 5.0, 1.0),
                ValueError, "sgdf_erd::erd_weights: sigma"),
    "fused_step_seed": (lambda: fused_sgdf_([torch.zeros(3)], [torch.ones(3)], [torch.zeros(3)], [torch.zeros(3)],
                                            [], [torch.zeros(())], 1e-3, None, 0.9, 0.999, 1e-8, 0.5, 0.0, True,
                                            False, False, None, None, rounding_seeds=[2**32]),
                        ValueError, FUSED_SGDF_REFUSED),
}


@pytest.mark.parametrize("name", PATHS)
def test_each_path_to_the_user_raises_the_meant_type_with_a_clean_message(name):
    call, meant, start = PATHS[name]
    with pytest.raises(meant) as info:
        call()
    assert type(info.value) is meant
    assert str(info.value).startswith(start), str(info.value)

