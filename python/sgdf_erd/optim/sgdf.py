"""SGDF: SGD with a Wiener-filtered first moment, as a drop-in ``torch.optim.Optimizer``."""

import itertools
from collections import OrderedDict, defaultdict
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from .. import _native, ops
from . import _dtensor
from . import sgdf_checks as checks
from .sgdf_functional import foreach_sgdf, fused_sgdf, scalar_on, single_tensor_sgdf

# Path and storage settings belong to the optimizer that runs, not to the checkpoint it loads (the loaded state is
# converted to the storage settings).
_PATH_KEYS = ("foreach", "fused", "capturable", "stochastic_rounding", "state_dtype", "master_weights")
# State entries loaded as saved (torch's load would cast them to the parameter's dtype); converted by SGDF.
_UNCAST_KEYS = ("exp_avg", "exp_var", "exp_avg_sq", "master_param")
# Update options the grouped kernel takes once per call (AdaSGDF's preconditioner): only groups that agree on them
# (and on the device) share the one kernel call; the others are checked in Python and step on their own.
_PER_CALL_OPTIONS = ("preconditioner",)
# Option names of the authors' release (SGDF.py), translated when one of its checkpoints is loaded.
_RELEASE_KEYS = {"weight_decouple": "decoupled_weight_decay", "use_sign": "sign", "use_muon": "orthogonalize"}


class SGDF(Optimizer):
    r"""SGD with Filter (Yao, Yu et al., arXiv 2311.02818; CVPR 2026, arXiv 2603.06120).

    For each tensor, with ``g`` the gradient (negated when ``maximize``) and ``t`` the step::

        m  = b1 m + (1 - b1) g                 s = b2 s + (1 - b2) (g - m)^2
        m^ = m / (1 - b1^t)                    bc2 = (1 + b1)(1 - b2^t) / ((1 - b1)(1 - b1^(2t)))
        r  = g - m^                            K = (s / (bc2 r^2 + s + eps)) ** gamma
        p  = p - lr * (m^ + K r)

    ``eps`` sits outside the ``bc2`` scaling as in the authors' latest SGDF.py (the paper's algorithm box puts it
    inside; the two differ only when s and r^2 are near eps).

    Args:
        params: parameters or param groups.
        lr: learning rate, in [0, 3.4e38] (float32's range; float, or a one-element tensor; a CUDA tensor with
            ``capturable=True`` or ``fused=True`` keeps the step free of host synchronisation). Release default
            0.5. A CPU tensor is checked at every step; a CUDA tensor only at construction, ``add_param_group`` and
            ``load_state_dict``, since reading it in ``step()`` would synchronise with the device.
        betas: (b1, b2), each in [0, 1).
        eps: added to the gain's denominator (>= 0).
        gamma: exponent of the gain, > 0 (0.5: square root, the release default; 1: plain Wiener gain).
        weight_decay: L2 coefficient in [0, 3.4e38], added to the gradient, or with ``decoupled_weight_decay=True``
            applied as ``p *= 1 - lr * weight_decay``.
        sign: apply ``sign`` to the filtered update (the release's ``use_sign``).
        orthogonalize: Muon-style Newton-Schulz orthogonalisation of the update of every matrix-shaped tensor
            (conv weights flattened to [out, -1]), ``ns_steps`` iterations; takes precedence over ``sign`` for
            those tensors (the release's ``use_muon``).
        maximize: maximise the objective instead of minimising.
        foreach: True: the ``torch._foreach_*`` implementation; False: one tensor at a time (as in torch.optim).
        fused: the compiled multi-tensor kernel (CPU and, when built with CUDA, CUDA; float32, float64, float16,
            bfloat16, complex as real views; every storage option below); refuses views with gaps, state dtypes
            it does not keep (float64 state for non-float64 parameters, or the reverse) and trainable parameters of
            tensor subclasses that run their own ops (``__torch_dispatch__``) other than DTensor. Default (both
            None): at each step, per param group, fused where the build supports the parameters as they are then
            and the storage, else foreach; views with gaps then step on a dense copy.
        capturable: keep step counts (and a tensor ``lr``) on the device so a step can be captured in a CUDA graph.
        stochastic_rounding: round float32 results into bfloat16 / float16 storage (parameters without master
            copies, and low-precision state) stochastically and reproducibly (seeded from torch's default
            generator), so that updates far below a bfloat16 spacing still move the parameter on average.
        state_dtype: dtype of the moments (bfloat16, float16, float32, float64; None: the parameter's). The
            arithmetic stays float32 (float64 for float64 parameters).
        master_weights: for bfloat16 / float16 parameters, a float32 copy (state ``master_param``) is updated and
            the parameter receives it rounded to nearest. Refused for other dtypes.
        differentiable: accepted as False, as torch's optimizers take it; True is refused (no graph is recorded).

    State per parameter: ``step`` (float32 tensor), ``exp_avg``, ``exp_var`` (the release's names), and with the
    options ``master_param`` and ``rounding_seed``. Checkpoints of every path and of the authors' release load;
    the loading optimizer's path and storage options stay, and the state is converted to them. With ``fused=True``
    the kernel unscales gradients for ``torch.amp.GradScaler`` as torch's fused optimizers do. ``torch.compile``,
    CUDA graphs and DTensor (FSDP2) parameters work on every path. A parameter may appear only once, no two tensors
    a step reads or writes may share memory, and a ``step``, ``add_param_group`` or ``load_state_dict`` that raises
    changes nothing. docs/sgdf.md has the details.
    """

    def __init__(self, params: Iterable, lr: Union[float, Tensor] = 0.5, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, gamma: float = 0.5, weight_decay: float = 0.0, *,
                 decoupled_weight_decay: bool = False, sign: bool = False, orthogonalize: bool = False,
                 ns_steps: int = 5, maximize: bool = False, foreach: Optional[bool] = None,
                 fused: Optional[bool] = None, capturable: bool = False, stochastic_rounding: bool = False,
                 state_dtype: Optional[torch.dtype] = None, master_weights: bool = False,
                 differentiable: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, gamma=gamma, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, sign=sign, orthogonalize=orthogonalize,
                        ns_steps=ns_steps, maximize=maximize, foreach=foreach, fused=fused, capturable=capturable,
                        stochastic_rounding=stochastic_rounding, state_dtype=state_dtype,
                        master_weights=master_weights, differentiable=differentiable)
        self._init_with_defaults(params, defaults)

    # What an optimizer of this family (SGDF's filter with another update) supplies: its defaults, the options of
    # its update (_update_options) and its state's moment tensors (checks.moment_keys of a group); the checks,
    # the state and the paths are this class's.
    def _init_with_defaults(self, params: Iterable, defaults: dict) -> None:
        # before the params, as torch's optimizers do
        checks.check_hyperparameters(defaults, f"{type(self).__name__} (defaults)", defaults)
        Optimizer.__init__(self, params, defaults)

    def _update_options(self, group: dict) -> dict:
        """The options of the update itself, as every path's keyword arguments."""
        return _update_options(group)

    def _check_hyperparameters(self, group: dict, where: str, read_device_lr: bool = True) -> None:
        """A group's params list and options, against the keys this optimizer's groups have (its defaults')."""
        where = f"{type(self).__name__} ({where})"  # (messages name the optimizer: AdaSGDF's say AdaSGDF)
        checks.check_group_params(group, where)
        checks.check_hyperparameters(group, where, self.defaults, read_device_lr)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether torch.amp.GradScaler hands grad_scale / found_inf to step(), for the kernel to unscale the
        gradients in place without a host synchronisation: where the user asked for fused=True, as for torch's
        fused optimizers. The default (fused too) leaves unscaling to the scaler, so that gradients can be
        unscaled and clipped before the step (Lightning refuses clipping with an optimizer that unscales)."""
        return self.defaults.get("fused") is True and all(g.get("fused") is True for g in self.param_groups)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group; it is checked whole (hyperparameters, params, repeats, path) before it joins."""
        if not isinstance(param_group, dict):
            raise TypeError(f"{type(self).__name__}: a param group must be a dict with a 'params' entry, got "
                            f"{type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{type(self).__name__}: a param group needs a 'params' entry (the tensors to optimize)")
        group = dict(param_group)  # the caller's dict stays as it was
        group["params"] = _as_list(group["params"], type(self).__name__)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        who = type(self).__name__
        params = [_unnamed(p, i, len(self.param_groups), who) for i, p in enumerate(group["params"])]
        where = f"param group {len(self.param_groups)}"
        checks.check_param_kinds(params, group, where, who=who)
        self._check_hyperparameters(group, where)
        checks.check_distinct([g["params"] for g in self.param_groups] + [params], who)
        if group["fused"]:  # (an explicit choice; a default is decided at each step)
            checks.check_fused_support(params, group, where, joining=True, who=who)
        super().add_param_group(group)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for key in ("_step_supports_amp_scaling", "_one_call_waits"):  # (pickled by older versions)
            self.__dict__.pop(key, None)
        for group in self.param_groups:
            for release_key, key in _RELEASE_KEYS.items():
                if release_key in group:
                    group.setdefault(key, group.pop(release_key))
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a checkpoint of any path or of the authors' release; it is checked whole (hyperparameters, state
        shapes against the params, step counts) and on error nothing changes. Pre-hooks run before anything is
        loaded, post-hooks after the state is converted, as for torch's optimizers."""
        state_dict = state_dict.copy() if isinstance(state_dict, dict) else state_dict  # (as torch's load)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            state_dict = state_dict if result is None else result
        checks.check_checkpoint_layout(state_dict, self.param_groups, type(self).__name__)
        kept = self.state, self.param_groups  # torch's load builds new state and groups; these stay untouched
        paths = [{k: g[k] for k in _PATH_KEYS} for g in self.param_groups]
        # torch's load casts floating state to the parameter's dtype, which would round a float32 master copy (or
        # float32 state of bfloat16 params) to bfloat16: these entries bypass it and are converted afterwards.
        stripped, raw = {}, {}
        for key, entries in state_dict["state"].items():
            if isinstance(entries, dict):
                raw[key] = {k: v for k, v in entries.items() if k in _UNCAST_KEYS}
                entries = {k: v for k, v in entries.items() if k not in _UNCAST_KEYS}
            stripped[key] = entries
        saved_ids = {saved: p for s, g in zip(state_dict["param_groups"], self.param_groups)
                     for saved, p in zip(s["params"], g["params"])}
        hooks = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks = self._optimizer_load_state_dict_post_hooks = OrderedDict()
        try:  # torch's load without the hooks: they run here, around the whole load
            super().load_state_dict({**state_dict, "state": stripped})
            for key, entries in raw.items():
                self.state[saved_ids.get(key, key)].update(entries)
            for group, path in zip(self.param_groups, paths):
                group.update(path)
            self._adopt_loaded_state()
        except BaseException:
            self.state, self.param_groups = kept
            raise
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = hooks
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _adopt_loaded_state(self) -> None:
        """Check the freshly loaded groups and state, then give the state the layout the paths need and the dtypes
        and entries the group's storage options need. Everything is checked before anything is converted (or a
        seed drawn)."""
        who = type(self).__name__
        checks.check_state_keys(self.state, (p for g in self.param_groups for p in g["params"]), who)
        steps = {}
        for gi, group in enumerate(self.param_groups):
            where = f"param group {gi} of the checkpoint"
            self._check_hyperparameters(group, where)
            checks.check_param_kinds(group["params"], group, where, who=who)
            for i, p in enumerate(group["params"]):
                if self.state.get(p):
                    steps[p] = checks.checked_loaded_step(p, self.state[p], f"parameter {i} of param group {gi}",
                                                          ("step", *checks.moment_keys(group)), who)
        for group in self.param_groups:
            on_device = group["capturable"] or self._path(group) == "fused"
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                # the release stores an int step; a checkpoint of another path may hold it on another device
                state["step"] = torch.tensor(steps[p], dtype=torch.float32, device=p.device if on_device else "cpu")
                for key in checks.moment_keys(group):  # own copies in the parameter's layout (e.g. channels_last)
                    state[key] = _like(p, checks.state_dtype(p, group)).copy_(state[key])
                if "exp_avg_sq" not in checks.moment_keys(group):  # (AdaSGDF saved with "second_moment")
                    state.pop("exp_avg_sq", None)
                _adopt_storage_entries(p, state, group)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimisation step; `closure` re-evaluates the model and returns the loss.

        One way for every group: check everything, writing nothing (_check_step), then write. The groups whose
        state exists and whose tensors the kernel walks as they are are checked by one kernel call (memory shared
        by any two of their tensors included), which steps the fused ones; the other groups are checked in Python
        with the same rules (and against the kernel's groups' tensors), before that call. Their missing state is
        made after it, then each group the kernel did not step steps on its path."""
        compiling, who = torch.compiler.is_compiling(), type(self).__name__
        if not compiling and _is_capturing() and not any(g["capturable"] or self._path(g) == "fused"
                                                         for g in self.param_groups):
            raise RuntimeError(f"{who}: a step is being captured in a CUDA graph but neither capturable=True nor "
                               f"fused=True was set; construct {who}(..., capturable=True)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if not compiling:
            checks.check_amp_scalars(grad_scale, found_inf, who)
        if compiling and (grad_scale is not None or found_inf is not None) and any(
                self._path(g) == "fused" and _has_dtensor(g["params"]) for g in self.param_groups):
            raise NotImplementedError(f"{who}: a torch.compile'd step with a GradScaler is not supported for DTensor "
                                      "(FSDP2) parameters: torch miscompiles the fused kernel's op on their shards, "
                                      "so such steps take the foreach path, which does not unscale; step eagerly, "
                                      "or unscale with scaler.unscale_(opt) before the step")
        # Under torch.compile the checks run in _init_group, which Dynamo runs eagerly while tracing (reading data
        # pointers or a CPU `lr` in the traced code would break the graph), and no group is left to the kernel's.
        in_one_call = {} if compiling else self._check_step()
        if in_one_call:
            try:
                self._step_in_one_call(in_one_call, grad_scale, found_inf)
            except (RuntimeError, ValueError, TypeError):  # refused before any write: the Python checks name the
                self._check_groups(list(in_one_call), {})  # parameter, where they can
                raise
        for gi, group in enumerate(self.param_groups):
            if gi in in_one_call and _kernel_path(group):
                continue
            lists = params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds, exp_avg_sqs = (
                [], [], [], [], [], [], [], [])
            # (every list positionally: Dynamo writes back into the traced lists only the positional ones)
            path = self._init_group(group, *lists, check_all_groups=compiling and gi == 0)
            if params:
                self._step_lists(group, path, lists, grad_scale, found_inf, compiling)
        return loss

    def _path(self, group: dict) -> str:
        """'fused', 'foreach' or 'single' for the group's params as they are now."""
        if group["fused"]:
            return "fused"
        if group["fused"] is None and group["foreach"] is None:
            params = [p for p in group["params"] if isinstance(p, Tensor)]
            if (all(_native.supports(p.device, checks.real_dtype(p)) for p in params)
                    and checks.fused_storage_unsupported(params, group) is None):
                return "fused"
        return "single" if group["foreach"] is False else "foreach"

    def _check_step(self) -> Dict[int, dict]:
        """Check every group, writing nothing. Returns the groups one kernel call checks (index -> their lists),
        stepping the fused ones: that call comes after these checks and before any write."""
        in_one_call, others, call_key = {}, [], None
        for gi, group in enumerate(self.param_groups):
            self._check_step_options(group, gi)
            lists = self._one_call_lists(group)
            key = None if lists is None else (lists["params"][0].device, *map(group.get, _PER_CALL_OPTIONS))
            if lists is not None and (call_key is None or key == call_key):
                in_one_call[gi] = lists
                call_key = key
            else:
                others.append(gi)
        if others:
            self._check_groups(others, in_one_call)
        return in_one_call

    def _check_step_options(self, group: dict, gi: int) -> None:
        """A group's options as a step reads them (the eager step's and the compiled one's checks): hyperparameters,
        and a path that unscales where grad_scale / found_inf are set."""
        self._check_hyperparameters(group, f"param group {gi}", read_device_lr=False)
        unscaling = getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None
        if unscaling and self._path(group) != "fused":  # (only the kernel unscales and skips)
            raise ValueError(f"{type(self).__name__}: grad_scale / found_inf are set on the optimizer (torch.amp."
                             f"GradScaler sets them where every group has fused=True), but param group {gi} "
                             f"steps on the {self._path(group)} path, which neither unscales nor skips; pass "
                             "fused=True for every group, or delete the attributes and unscale with "
                             "scaler.unscale_(opt)")

    def _one_call_lists(self, group: dict) -> Optional[Dict[str, list]]:
        """The group's params (those with a gradient, not empty), grads, moments, steps, master copies and rounding
        seeds, by the kernel's argument names, for the one kernel call that checks them (and steps them where the
        group's path is the kernel's); or None where the group is checked in Python: its tensors need what the
        kernel does not do (state to create, several dtypes or devices, complex, DTensor, views with gaps or grads
        in another layout, orthogonalisation, storage it does not keep, step counts on the host for CUDA params), or
        its state does not match its storage options, which the kernel does not know. Runs at every step:
        whole-list passes, each asking one thing of every tensor."""
        if group["orthogonalize"]:
            return None
        params = group["params"]
        try:
            grads = [p.grad for p in params]
            states = list(map(self.state.get, params))
        except (AttributeError, TypeError):  # not a tensor (appended by hand): the Python checks say so
            return None
        if not set(map(type, states)) <= {dict, type(None)}:
            return None  # (a state edited by hand into something else: the Python checks name it)
        if not all(states) or any(g is None for g in grads) or not all(map(Tensor.numel, params)):
            kept = [i for i, (p, g) in enumerate(zip(params, grads)) if g is not None and p.numel()]  # (those that
            if not all(states[i] for i in kept):  # step: every path skips the others, whatever their state)
                return None
            params, grads, states = ([x[i] for i in kept] for x in (params, grads, states))
        if not params:
            return None
        if params[0].device.type != "cpu" and not (_kernel_path(group) or group["capturable"]):
            return None  # (its step counts may be on the host, as the Python checks accept, which the kernel refuses)
        keys = ("step", *checks.moment_keys(group), *("master_param",) * group["master_weights"],
                *("rounding_seed",) * group["stochastic_rounding"])
        try:
            if set(map(len, states)) != {len(keys)}:
                return None
            lists = [[state[key] for state in states] for key in keys]
            if _has_dtensor(params):  # (FSDP2, tensor parallelism: the kernel, elementwise, steps each rank's shards)
                shards = None if group["stochastic_rounding"] else _dtensor.local_shards(params, grads, lists[1:])
                if shards is None:
                    return None
                params, grads, moments = shards
                lists = [lists[0], *moments]
            if not self._kernel_takes(group, params, grads, lists, keys):
                return None
        except (KeyError, TypeError, IndexError, AttributeError):  # state edited by hand (not a dict, a number
            return None  # where a tensor belongs): the Python checks say how
        named = dict(zip((key + "s" for key in keys), lists))
        return dict(params=params, grads=grads, master_params=named.pop("master_params", []),
                    rounding_seeds=named.pop("rounding_seeds", []), **named)

    @staticmethod
    def _kernel_takes(group: dict, params: List[Tensor], grads: List[Tensor], lists: List[list],
                      keys: Tuple[str, ...]) -> bool:
        """Whether the kernel walks the group's tensors as they are (the rest of _one_call_lists' question)."""
        first, moment = params[0], lists[1]
        # (the kernel checks that the moments share the first's dtype and layout, and the rest; a refusal of its
        # argument parser, e.g. for a number where a state tensor belongs, is named by the Python checks: step)
        if (first.dtype.is_complex or not _native.supports(first.device, first.dtype)
                or (group["fused"] is not True and checks.fused_storage_unsupported([first], group))
                or lists[0][0].device != first.device  # (the kernel takes them there; a host-side step: Python)
                or moment[0].dtype is not checks.state_dtype(first, group)
                # (a subclass running torch's ops itself: DTensor, whose shards fused_sgdf steps; others, which may
                # know torch's ops but not the kernel's; such a gradient of a plain parameter, which is refused)
                or _dispatches_itself([*params, *grads])
                or len(Optimizer._group_tensors_by_device_and_dtype([params])) != 1  # (torch's, in C++)
                # (a seed edited by hand: the kernel's int[] would take a bool)
                or (group["stochastic_rounding"] and any(type(seed) is not int for seed in lists[-1]))):
            return False  # (a negated exp_avg_sq is taken: the op's Python face refuses it, then step's checks name it)
        tensors = [params, grads, *lists[1:len(lists) - group["stochastic_rounding"]]]  # (moments, master copies)
        if not _kernel_path(group) and (  # the foreach / single-tensor ops take these otherwise than the kernel:
                any(map(Tensor._is_zerotensor, grads))  # they read efficient zeros, which torch refuses the kernel
                or (not torch.is_inference_mode_enabled()  # they refuse to write inference tensors, as the Python
                    and any(any(map(Tensor.is_inference, ts)) for ts in (*tensors, lists[0])))):  # checks; the
            return False  # kernel cannot tell
        if all(map(Tensor.is_contiguous, itertools.chain(*tensors))):
            return True
        # another dense layout (e.g. channels_last) the kernel walks as well, if the grad and state share it
        return all(checks.is_dense(p) and all(t.stride() == p.stride() for t in ts)
                   for p, *ts in zip(*tensors))

    def _check_groups(self, group_indices: List[int], in_one_call: Dict[int, dict]) -> None:
        """The checks of the groups the kernel call does not check: hyperparameters (checked by the caller), params,
        grads and state of each group, then memory shared by any two tensors a step reads or writes, in all
        groups. Nothing changes here."""
        who = type(self).__name__
        unscaling = getattr(self, "grad_scale", None) is not None  # (the fused kernel then writes the gradients)
        # (tensor, written, what it is); the kernel reads grad_scale, found_inf and a tensor lr with every group
        operands = [(t, False, f"the optimizer's `{name}`") for name in ("grad_scale", "found_inf")
                    for t in [getattr(self, name, None)] if isinstance(t, Tensor)]
        operands += [(self.param_groups[gi]["lr"], False, f"the `lr` of param group {gi}")
                     for gi in (*group_indices, *in_one_call) if isinstance(self.param_groups[gi]["lr"], Tensor)]
        for gi in group_indices:
            group = self.param_groups[gi]
            path = self._path(group)
            checks.check_param_kinds(group["params"], group, f"param group {gi}", stepping_only=True, who=who)
            stepping = [p for p in group["params"] if p.grad is not None and p.numel()]  # (the others are not read)
            if path == "fused":
                checks.check_fused_support(stepping, group, f"param group {gi}", who=who)
            elif path == "foreach" and len({_dtensor.is_dtensor(p) for p in stepping}) > 1:
                raise ValueError(f"{who} (param group {gi}): the group mixes DTensor and plain parameters, which "
                                 "torch's foreach ops take in no one list; put them in separate param groups, or "
                                 "step this one with foreach=False or the default path")
            on_device = path == "fused" or group["capturable"]
            for i, p in enumerate(group["params"]):
                grad = p.grad
                if grad is None or p.numel() == 0:
                    continue
                where = f"parameter {i} of param group {gi}"
                checks.check_grad(p, grad, where, written=unscaling and path == "fused", fused=path == "fused",
                                  who=who)
                state = self.state.get(p, {})
                checks.check_state(p, state, group, on_device, where, who)  # (an empty one is made after the checks)
                # the fused kernel unscales gradients in place: none may serve two params there
                operands += [(p, True, where), (grad, path == "fused", ("the gradient of {}", where))]
                operands += _state_operands(state, where)
        for gi, lists in in_one_call.items():  # (by their lists: a DTensor's are its shards)
            where = f"a parameter of param group {gi}"
            stepped = _kernel_path(self.param_groups[gi])  # (else its gradients are only read)
            operands += [(p, True, where) for p in lists["params"]]
            operands += [(g, stepped, ("the gradient of {}", where)) for g in lists["grads"]]
            operands += [(t, True, ("'{}' of {}", name[:-1], where)) for name, ts in lists.items()
                         if name not in ("params", "grads", "rounding_seeds") for t in ts]
        checks.check_no_shared_memory(operands, who)

    def _step_in_one_call(self, in_one_call: Dict[int, dict], grad_scale: Optional[Tensor],
                          found_inf: Optional[Tensor]) -> None:
        """Check the groups of `in_one_call` (index -> _one_call_lists) by one kernel call, which steps those whose
        path is the kernel's after checking them all. Groups checked otherwise take part as empty groups, so that
        the kernel's messages number the groups as param_groups does."""
        moved = {}  # lr / grad_scale / found_inf moved once to the call's device
        device = next(iter(in_one_call.values()))["params"][0].device
        scalar = lambda t: scalar_on(device, t, moved)  # noqa: E731
        lr_options = lambda lr: dict(lr=0.0, lr_tensor=scalar(lr)) if isinstance(lr, Tensor) else dict(  # noqa: E731
            lr=lr, lr_tensor=None)
        if len(self.param_groups) == 1 and _kernel_path(self.param_groups[0]):  # fused_sgdf_: fewer arguments
            options = self._update_options(self.param_groups[0])
            ops.fused_sgdf_(**in_one_call[0], updates=[], **lr_options(options.pop("lr")), **options,
                            grad_scale=scalar(grad_scale), found_inf=scalar(found_inf), rounding_offsets=[])
            return
        lists, per_group, per_call, check_only = defaultdict(list), defaultdict(list), {}, []
        for gi, group in enumerate(self.param_groups):
            options = self._update_options(group)
            call_options = {key: options.pop(key) for key in _PER_CALL_OPTIONS if key in options}
            group_lists = in_one_call.get(gi)
            if group_lists is None:  # an empty group, with the options (checked) of this one
                group_lists = dict.fromkeys(next(iter(in_one_call.values())), ())
                options["lr"] = 0.0
            else:  # (the same in every group of the call: _check_step)
                per_call.update(call_options)
            for key, values in group_lists.items():
                lists[key].extend(values)
            options.update(lr_options(options.pop("lr")), group_sizes=len(group_lists["params"]),
                           master_weights=bool(group_lists["master_params"]),
                           stochastic_rounding=bool(group_lists["rounding_seeds"]))
            for key, value in options.items():
                per_group[key].append(value)
            check_only.append(not _kernel_path(group))
        ops.fused_sgdf_grouped_(**lists, **per_group, **per_call, grad_scale=scalar(grad_scale),
                                found_inf=scalar(found_inf), check_only=check_only)

    def _init_group(self, group: dict, params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                    exp_vars: List[Tensor], steps: List[Tensor], master_params: List[Tensor],
                    rounding_seeds: List[int], exp_avg_sqs: List[Tensor], check_all_groups: bool = False) -> str:
        """torch.optim's convention, which torch.compile relies on (Dynamo runs this eagerly while it traces and
        expects the lists filled in and a constant returned): collects the group's params that step now, their
        grads and states (master copies and rounding seeds where the options use them; AdaSGDF's second moments
        where its preconditioner keeps them), creating missing state; returns the group's path. Runs after the
        checks (`check_all_groups`: runs them first, for every group)."""
        if check_all_groups:
            for gi, g in enumerate(self.param_groups):
                self._check_step_options(g, gi)
            self._check_groups(list(range(len(self.param_groups))), {})
        path = self._path(group)
        fused, master_weights = path == "fused", group["master_weights"]
        stochastic_rounding = group["stochastic_rounding"]
        second_moment = "exp_avg_sq" in checks.moment_keys(group)
        for p in group["params"]:
            if p.grad is None or p.numel() == 0:
                continue
            state = self.state.setdefault(p, {})  # (opt.state may have been replaced by a plain dict)
            if not state:
                device = p.device if fused or group["capturable"] else "cpu"
                state["step"] = torch.zeros((), dtype=torch.float32, device=device)
                for key in checks.moment_keys(group):
                    state[key] = _like(p, checks.state_dtype(p, group)).zero_()
                _adopt_storage_entries(p, state, group)
            elif fused:
                _match_layout(p, state, checks.moment_keys(group))
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_vars.append(state["exp_var"])
            steps.append(state["step"])
            if master_weights:
                master_params.append(state["master_param"])
            if stochastic_rounding:
                rounding_seeds.append(state["rounding_seed"])
            if second_moment:
                exp_avg_sqs.append(state["exp_avg_sq"])
        return path

    def _step_lists(self, group: dict, path: str, lists: tuple, grad_scale: Optional[Tensor],
                    found_inf: Optional[Tensor], compiling: bool) -> None:
        """Step a group's checked lists (from _init_group) on its path."""
        params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds, exp_avg_sqs = lists
        hyper = dict(self._update_options(group), orthogonalize_matrices=group["orthogonalize"],
                     ns_steps=group["ns_steps"], capturable=group["capturable"])
        storage = dict(master_params=master_params if group["master_weights"] else None,
                       rounding_seeds=rounding_seeds if group["stochastic_rounding"] else None)
        if "exp_avg_sq" in checks.moment_keys(group):
            storage["exp_avg_sqs"] = exp_avg_sqs
        if path == "fused" and not (compiling and _has_dtensor(params)):
            fused_sgdf(params, grads, exp_avgs, exp_vars, steps, grad_scale=grad_scale, found_inf=found_inf,
                       **storage, **hyper)
        else:  # (compiled with DTensor params, torch miscompiles the kernel's op: see _has_dtensor)
            step_path = single_tensor_sgdf if path == "single" else foreach_sgdf
            step_path(params, grads, exp_avgs, exp_vars, steps, **storage, **hyper)


def _update_options(group: dict) -> dict:
    """A param group's options of the update itself, as every path's keyword arguments (numbers as Python floats:
    a group may hold numpy scalars)."""
    beta1, beta2 = group["betas"]
    lr = group["lr"]
    return dict(lr=lr if isinstance(lr, Tensor) else float(lr), beta1=float(beta1), beta2=float(beta2),
                eps=float(group["eps"]), gamma=float(group["gamma"]), weight_decay=float(group["weight_decay"]),
                decoupled_weight_decay=group["decoupled_weight_decay"], sign=group["sign"],
                maximize=group["maximize"])


def _kernel_path(group: dict) -> bool:
    """Whether the group steps on the kernel when the kernel takes its tensors: fused, or by default."""
    return group["fused"] or (group["fused"] is None and group["foreach"] is None)


def _state_operands(state: Optional[dict], where: str) -> list:
    """The state's tensors, as operands of checks.check_no_shared_memory (each written by a step)."""
    return [(t, True, ("'{}' of {}", key, where)) for key, t in (state or {}).items() if isinstance(t, Tensor)]


def _has_dtensor(params: List[Tensor]) -> bool:
    """Whether a DTensor is among `params`. Under torch.compile such a group takes the foreach path, fused or not:
    torch 2.14.1 fails to compile a custom op that writes into FSDP2 parameter shards from their gradient shards
    (an IndexError while guarding shard sizes, or "graph node count mismatch" in inductor; reported too: "sources
    must not be empty for symbol", and after torch._dynamo.reset() a graph that updates wrong values), where the
    same update in torch ops compiles correctly. docs/sgdf.md has a reproducer without SGDF."""
    dtensor = _dtensor.dtensor_type()
    return dtensor is not None and any(issubclass(kind, dtensor) for kind in set(map(type, params)))


def _dispatches_itself(tensors: List[Tensor]) -> bool:
    """Whether a tensor subclass that runs torch's ops itself is among `tensors` (checks.dispatches_itself)."""
    return any(map(checks.dispatches_itself, set(map(type, tensors))))


def _like(p: Tensor, dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor in p's shape and memory layout."""
    return torch.empty_like(p, dtype=dtype, memory_format=torch.preserve_format)


def _adopt_storage_entries(p: Tensor, state: dict, group: dict) -> None:
    """The state entries the storage options use, and only those: a float32 master copy of the parameter (a loaded
    one is kept, in the parameter's layout) and the stochastic-rounding seed (drawn from torch's default
    generator, so torch.manual_seed fixes it)."""
    if group["master_weights"]:
        state["master_param"] = _like(p, torch.float32).copy_(state.get("master_param", p))
    else:
        state.pop("master_param", None)
    if group["stochastic_rounding"]:
        if "rounding_seed" not in state:
            # (on the CPU whatever the default device: a meta one would give no value)
            state["rounding_seed"] = int(torch.randint(0, 2**32, (), dtype=torch.int64, device="cpu"))
    else:
        state.pop("rounding_seed", None)


def _match_layout(p: Tensor, state: dict, moment_keys: Tuple[str, ...]) -> None:
    """The fused kernel needs the state in one layout: the param's, or for a view with gaps the dense one its state
    is made in (its dense copy's). A model converted after its first steps (e.g. to channels_last), or state edited
    by hand, gets its state converted likewise, values and dtypes unchanged (each entry on its own)."""
    layout = None
    for key in (*moment_keys, "master_param"):
        t = state.get(key)
        if t is None:
            continue
        if layout is None:  # (a view with gaps: the strides its dense state is made with, from a meta tensor)
            layout = p.stride() if checks.is_dense(p) else torch.empty_like(p, device="meta").stride()
        if t.stride() != layout:
            state[key] = _like(p, t.dtype).copy_(t)


def _unnamed(p, index: int, group_index: int, who: str):
    """The tensor of a (name, tensor) pair, as torch's optimizers take named parameters; anything else as given (its
    kind is checked after)."""
    if not isinstance(p, tuple):
        return p
    if len(p) == 2 and isinstance(p[0], str):
        return p[1]
    raise TypeError(f"{who} (param group {group_index}): entry {index} of 'params' is a tuple of "
                    f"{', '.join(type(x).__name__ for x in p) or 'nothing'}; a named parameter is a (str, tensor) "
                    "pair, as model.named_parameters() yields")


def _as_list(params, who: str) -> list:
    if isinstance(params, Tensor):
        return [params]
    if isinstance(params, set):
        raise TypeError(f"{who}: optimizer params must be an ordered collection (a list or a generator such as "
                        "model.parameters()), not a set, whose order changes between runs")
    try:
        return list(params)
    except TypeError:
        raise TypeError(f"{who}: 'params' must be a tensor or an iterable of tensors, got "
                        f"{type(params).__name__}") from None


def _is_capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
