"""SGDF: SGD with a Wiener-filtered first moment, as a drop-in ``torch.optim.Optimizer``."""

from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from .. import ops
from . import _dtensor
from . import sgdf_checks as checks
from .sgdf_functional import foreach_sgdf, fused_sgdf, fused_sgdf_groups_in_one_call, single_tensor_sgdf

# Path and storage settings belong to the optimizer that runs, not to the checkpoint it loads (the loaded state is
# converted to the storage settings).
_PATH_KEYS = ("foreach", "fused", "capturable", "stochastic_rounding", "state_dtype", "master_weights")
# Steps a param group goes the general way after the kernel refused to step it in one call, before the next try.
_ONE_CALL_RETRY_STEPS = 100
# State entries loaded as saved (torch's load would cast them to the parameter's dtype); converted by SGDF.
_UNCAST_KEYS = ("exp_avg", "exp_var", "exp_avg_sq", "master_param")
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
        lr: learning rate, finite and >= 0 (float, or a one-element tensor; a CUDA tensor with
            ``capturable=True`` or ``fused=True`` keeps the step free of host synchronisation). Release default
            0.5. A CPU tensor is checked at every step; a CUDA tensor only at construction, ``add_param_group`` and
            ``load_state_dict``, since reading it in ``step()`` would synchronise with the device.
        betas: (b1, b2), each in [0, 1).
        eps: added to the gain's denominator (>= 0).
        gamma: exponent of the gain, > 0 (0.5: square root, the release default; 1: plain Wiener gain).
        weight_decay: L2 coefficient (>= 0), added to the gradient, or with ``decoupled_weight_decay=True``
            applied as ``p *= 1 - lr * weight_decay``.
        sign: apply ``sign`` to the filtered update (the release's ``use_sign``).
        orthogonalize: Muon-style Newton-Schulz orthogonalisation of the update of every matrix-shaped tensor
            (conv weights flattened to [out, -1]), ``ns_steps`` iterations; takes precedence over ``sign`` for
            those tensors (the release's ``use_muon``).
        maximize: maximise the objective instead of minimising.
        foreach: True: the ``torch._foreach_*`` implementation; False: one tensor at a time (as in torch.optim).
        fused: use the compiled multi-tensor kernel (CPU and, when built with CUDA, CUDA; float32, float64,
            float16 and bfloat16, with every storage option below). ``fused=True`` refuses parameters the kernel
            cannot walk in place (views with gaps) and state dtypes it does not keep (float64 state for other than
            float64 parameters, or the reverse). Default (both None): per param group, fused where the build
            supports every parameter and the storage, else foreach; views with gaps then step on a dense copy
            within the same launch.
        capturable: keep step counts (and a tensor ``lr``) on the device so a step can be captured in a CUDA graph.
        stochastic_rounding: round float32 results into bfloat16 / float16 storage (parameters without master
            copies, and low-precision state) stochastically: up or down to the neighbouring representable values
            with probabilities proportional to the distance, so that updates far below a bfloat16 spacing still
            move the parameter on average (a plain bfloat16 ``p - lr*u`` at p = 1 drops every update below
            ~0.002). The random numbers are a counter-based hash of (a per-parameter seed drawn from torch's
            default CPU generator when the state is created, so it follows ``torch.manual_seed``; the step count;
            the element's index): reproducible, without host synchronisation, capturable in CUDA graphs.
        state_dtype: dtype of ``exp_avg`` / ``exp_var`` (bfloat16, float16, float32, float64; None: the
            parameter's dtype). The arithmetic stays float32 (float64 for float64 parameters).
        master_weights: for bfloat16 / float16 parameters, keep a float32 copy (state ``master_param``) that is
            updated in float32; the parameter receives it rounded to nearest. Refused for other dtypes.
        differentiable: accepted as False, as torch's optimizers take it; True (autograd through ``step()``) is
            refused: the kernels and the in-place state updates do not record a graph.

    State per parameter: ``step`` (float32 tensor), ``exp_avg``, ``exp_var`` (the release's names), and with the
    options ``master_param`` (float32) and ``rounding_seed`` (int). Checkpoints of the authors' release (int
    ``step``, ``use_*`` option names) load, and so do checkpoints of any of the paths. ``load_state_dict`` gives the
    state each parameter's device, dtype and memory layout; the path and storage options (``fused``, ``foreach``,
    ``capturable``, ``stochastic_rounding``, ``state_dtype``, ``master_weights``) stay those of the optimizer
    that loads: state is cast to its ``state_dtype``, a missing master copy is made from the parameter (load the
    model first) and a missing seed is drawn, and master copies or seeds the options do not use are dropped. With
    ``fused=True`` the kernel unscales the gradients for ``torch.amp.GradScaler`` as torch's fused optimizers do;
    on the default path the scaler unscales them before the step (so they can be clipped).

    ``torch.compile`` traces ``step`` whole (pass a tensor ``lr`` so that a scheduler changing it compiles nothing
    new). DTensor parameters (FSDP2's ``fully_shard``) work on every path: the fused kernel steps each rank's shards,
    and orthogonalisation acts on the whole matrix.

    Zero-size parameters are skipped. A parameter may appear only once. Every check runs before anything changes:
    a ``step``, ``add_param_group`` or ``load_state_dict`` that raises leaves params, grads, state and param
    groups as they were.
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

    def _init_with_defaults(self, params: Iterable, defaults: dict) -> None:
        """The construction from the defaults of every param group (AdaSGDF passes its own)."""
        checks.check_hyperparameters(defaults, "defaults")  # before the params, as torch's optimizers do
        # param group index -> steps it still goes the general way after the kernel refused its one-call step
        self._one_call_waits: Dict[int, int] = {}
        Optimizer.__init__(self, params, defaults)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether torch.amp.GradScaler hands grad_scale / found_inf to step(), for the kernel to unscale the
        gradients in place without a host synchronisation: where the user asked for fused=True, as for torch's
        fused optimizers. The default (fused too) leaves unscaling to the scaler, so that gradients can be
        unscaled and clipped before the step (Lightning refuses clipping with an optimizer that unscales)."""
        return self.defaults.get("fused") is True and all(g.get("fused") for g in self.param_groups)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group; it is checked whole (hyperparameters, params, repeats, path) before it joins."""
        if not isinstance(param_group, dict):
            raise TypeError(f"SGDF: a param group must be a dict with a 'params' entry, got "
                            f"{type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("SGDF: a param group needs a 'params' entry (the tensors to optimize)")
        group = dict(param_group)  # the caller's dict stays as it was
        group["params"] = _as_list(group["params"])
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        params = [_unnamed(p, i, len(self.param_groups)) for i, p in enumerate(group["params"])]
        where = f"param group {len(self.param_groups)}"
        checks.check_param_kinds(params, group, where)
        checks.check_hyperparameters(group, where)
        checks.check_distinct([g["params"] for g in self.param_groups] + [params])
        group["fused"], group["foreach"] = checks.choose_path(params, group["fused"], group["foreach"], group)
        super().add_param_group(group)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_one_call_waits", {})
        self.__dict__.pop("_step_supports_amp_scaling", None)  # (pickled by older versions; now a property)
        for group in self.param_groups:
            for release_key, key in _RELEASE_KEYS.items():
                if release_key in group:
                    group.setdefault(key, group.pop(release_key))
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a checkpoint of any path or of the authors' release; it is checked whole (hyperparameters, state
        shapes against the params, step counts) and on error nothing changes."""
        checks.check_checkpoint_layout(state_dict, self.param_groups)
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
        try:
            super().load_state_dict({**state_dict, "state": stripped})
            for key, entries in raw.items():
                self.state[saved_ids.get(key, key)].update(entries)
            for group, path in zip(self.param_groups, paths):
                group.update(path)
            self._adopt_loaded_state()
        except BaseException:
            self.state, self.param_groups = kept
            raise

    def _adopt_loaded_state(self) -> None:
        """Check the freshly loaded groups and state, then give the state the layout the paths need and the dtypes
        and entries the group's storage options need. Everything is checked before anything is converted (or a
        seed drawn)."""
        checks.check_state_keys(self.state, (p for g in self.param_groups for p in g["params"]))
        steps = {}
        for gi, group in enumerate(self.param_groups):
            where = f"param group {gi} of the checkpoint"
            checks.check_hyperparameters(group, where)
            checks.check_param_kinds(group["params"], group, where)
            for i, p in enumerate(group["params"]):
                if self.state.get(p):
                    steps[p] = checks.checked_loaded_step(p, self.state[p], f"parameter {i} of param group {gi}",
                                                          ("step",) + checks.moment_keys(group))
        for group in self.param_groups:
            on_device = group["fused"] or group["capturable"]
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
    def _check_step_inputs(self, checked_by_kernel: Optional[Dict[int, tuple]] = None) -> None:
        """Check every group (hyperparameters, params, grads, state) against what the paths would refuse; nothing
        changes here, so step() can run it before any tensor or state does. `checked_by_kernel`: the groups one
        kernel call steps (index -> their _one_call_lists), which checks their params, grads and state itself."""
        checked_by_kernel = checked_by_kernel or {}
        fused_grads = []
        for gi, group in enumerate(self.param_groups):
            if gi not in checked_by_kernel:  # (whose hyperparameters _one_call_plan checked)
                checks.check_hyperparameters(group, f"param group {gi}", read_device_lr=False)
                fused_grads += self._check_params(gi, group)
        if fused_grads:  # the kernel call sees only its own groups' gradients
            for lists in checked_by_kernel.values():
                fused_grads.extend(lists[1])
        checks.check_fused_grads_distinct([fused_grads])
        if len(checked_by_kernel) < len(self.param_groups):  # (the kernel checks its own groups' state)
            self._check_state_distinct(range(len(self.param_groups)))

    def _check_params(self, gi: int, group: dict) -> List[Tensor]:
        """Check the params of group `gi` that step now, their grads and their state; returns the grads when the group
        is fused (the kernel unscales them in place, so none may serve two params)."""
        if group["orthogonalize"]:
            checks.check_param_kinds(group["params"], group, f"param group {gi}")
        fused_grads = []
        for i, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None or p.numel() == 0:
                continue
            checks.check_grad(p, grad, gi, i)
            state = self.state.get(p)
            if state:
                checks.check_state(p, state, group, gi, i)
            if group["fused"]:
                fused_grads.append(grad)
        return fused_grads

    def _check_state_distinct(self, group_indices: Iterable[int]) -> None:
        checks.check_state_distinct((p, self.state[p], gi, i) for gi in group_indices
                                    for i, p in enumerate(self.param_groups[gi]["params"]) if self.state.get(p))

    def _one_call_plan(self) -> Dict[int, tuple]:
        """The fused groups (without orthogonalisation, on one device) that one kernel call can step together, with
        state made by earlier steps: index -> their _one_call_lists, in order. That call is their check: the kernel
        checks everything it is given before it writes anything (what check_grad and check_state test of grads
        and state, and more), so their per-parameter checks in Python are left out; only what the kernel cannot
        know is tested, in _one_call_lists: the state against the group's storage options. A group whose one-call
        step was refused lately is left to the general path for a while (_one_call_refused)."""
        plan, device = {}, None
        for gi, group in enumerate(self.param_groups):
            if not group.get("fused") or group.get("orthogonalize"):  # (a key deleted by hand: checked below)
                continue
            if self._one_call_waits.get(gi):
                self._one_call_waits[gi] -= 1
                continue
            checks.check_hyperparameters(group, f"param group {gi}", read_device_lr=False)  # before reading options
            lists = self._one_call_lists(group)
            if lists is not None and lists[0] and (device is None or lists[0][0].device == device):
                plan[gi] = lists
                device = lists[0][0].device
        return plan

    def _one_call_refused(self, gi: int) -> None:
        """The kernel refused to step group `gi` as it is (a view with gaps among its params, grads in another memory
        layout, several devices: reasons that mostly last), changing nothing: the group goes the general way for the
        next _ONE_CALL_RETRY_STEPS steps before the next try, since a refusal costs the gathering and the checks."""
        self._one_call_waits[gi] = _ONE_CALL_RETRY_STEPS

    def _step_in_one_call(self, plan: Dict[int, tuple], grad_scale: Optional[Tensor],
                          found_inf: Optional[Tensor]) -> bool:
        """Step the groups of `plan` (index -> _one_call_lists) by one kernel call; False, having changed nothing,
        where the kernel refused its arguments (the Python checks then say why, or the general path regroups or
        copies what the kernel cannot take)."""
        try:
            groups = [(lists, self._update_options(self.param_groups[gi])) for gi, lists in plan.items()]
            fused_sgdf_groups_in_one_call(groups, grad_scale=grad_scale, found_inf=found_inf)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            if str(exc).startswith(ops.FUSED_SGDF_REFUSED):
                return False  # refused before anything was written
            raise
        return True

    def _step_refused_plan(self, plan: Dict[int, tuple], grad_scale: Optional[Tensor],
                           found_inf: Optional[Tensor], compiling: bool) -> None:
        """The kernel refused to step `plan`'s groups together, changing nothing. The Python checks, of every group
        now, say why, else each group is tried alone, and a group the kernel refuses again goes the general way
        (which copies or regroups what the kernel cannot take) for a while."""
        self._check_step_inputs()
        for gi, lists in plan.items():
            if len(plan) == 1 or not self._step_in_one_call({gi: lists}, grad_scale, found_inf):
                self._one_call_refused(gi)
                self._step_group(gi, self.param_groups[gi], grad_scale, found_inf, compiling)

    def _one_call_lists(self, group: dict) -> Optional[tuple]:
        """The group's params (those with a gradient, not empty), grads, exp_avgs, exp_vars, steps, master copies and
        rounding seeds for one kernel call, or None where the general path must step it: a parameter without state
        (created there, after the checks), state made under other storage options, params of several dtypes,
        complex or DTensor. Runs at every step for every parameter, so it reads as little as it can."""
        master_weights, stochastic_rounding = group["master_weights"], group["stochastic_rounding"]
        second_moment = "exp_avg_sq" in checks.moment_keys(group)
        entries = len(checks.STATE_KEYS) + second_moment + master_weights + stochastic_rounding
        dtensor = _dtensor.dtensor_type() or ()  # isinstance(p, ()) is False
        lists = params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds, exp_avg_sqs = (
            [], [], [], [], [], [], [], [])
        dtype = state_dtype = None
        for p in group["params"]:
            grad = p.grad
            if grad is None or p.numel() == 0:
                continue
            if dtype is None:
                dtype = p.dtype
                state_dtype = checks.state_dtype(p, group)
                if dtype.is_complex:
                    return None
            state = self.state.get(p)
            if not state or len(state) != entries or p.dtype is not dtype or isinstance(p, dtensor):
                return None
            exp_avg = state["exp_avg"]
            if exp_avg.dtype is not state_dtype:
                return None
            if master_weights:
                master = state.get("master_param")
                if master is None:
                    return None
                master_params.append(master)
            if stochastic_rounding:
                seed = state.get("rounding_seed")
                if type(seed) is not int:  # (missing, or edited by hand: the kernel's int[] would take a bool)
                    return None
                rounding_seeds.append(seed)
            params.append(p)
            grads.append(grad)
            exp_avgs.append(exp_avg)
            exp_vars.append(state["exp_var"])
            steps.append(state["step"])
            if second_moment:
                exp_avg_sq = state.get("exp_avg_sq")
                if exp_avg_sq is None:
                    return None
                exp_avg_sqs.append(exp_avg_sq)
        return lists

    def _init_group(self, group: dict, params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                    exp_vars: List[Tensor], steps: List[Tensor], master_params: List[Tensor],
                    rounding_seeds: List[int], check_all_groups: bool = False,
                    exp_avg_sqs: Optional[List[Tensor]] = None) -> None:
        """torch.optim's convention, which torch.compile relies on (Dynamo runs this eagerly while it traces and
        expects the lists filled in and a constant returned): collects the group's params that step now, their
        grads and states (master copies and rounding seeds where the options use them; AdaSGDF's second moments
        into `exp_avg_sqs` where its preconditioner keeps them), creating missing state.

        `check_all_groups` runs the step's checks here, where they cost the compiled step nothing."""
        if check_all_groups:
            self._check_step_inputs()
        on_device = group["fused"] or group["capturable"]
        fused, master_weights = group["fused"], group["master_weights"]
        stochastic_rounding = group["stochastic_rounding"]
        for p in group["params"]:
            if p.grad is None or p.numel() == 0:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
                for key in checks.moment_keys(group):
                    state[key] = _like(p, checks.state_dtype(p, group)).zero_()
                _adopt_storage_entries(p, state, group)
            elif fused:
                _match_layout(p, state)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_vars.append(state["exp_var"])
            steps.append(state["step"])
            if master_weights:
                master_params.append(state["master_param"])
            if stochastic_rounding:
                rounding_seeds.append(state["rounding_seed"])
            if exp_avg_sqs is not None:
                exp_avg_sqs.append(state["exp_avg_sq"])

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimisation step; `closure` re-evaluates the model and returns the loss."""
        compiling = torch.compiler.is_compiling()
        if not compiling and _is_capturing() and not any(g["capturable"] or g["fused"] for g in self.param_groups):
            raise RuntimeError("SGDF: a step is being captured in a CUDA graph but neither capturable=True nor "
                               "fused=True was set; construct SGDF(..., capturable=True)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Check every group before any tensor or state changes, so a bad input leaves nothing half-updated; the
        # groups stepped by one kernel call are checked by that call, which comes after the others' checks. Under
        # torch.compile the checks run in _init_group, which Dynamo runs eagerly while tracing: reading data
        # pointers or a CPU `lr` there would break the graph.
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if compiling and (grad_scale is not None or found_inf is not None) and any(
                g.get("fused") and _has_dtensor(g["params"]) for g in self.param_groups):
            raise NotImplementedError("SGDF: a torch.compile'd step with a GradScaler is not supported for DTensor "
                                      "(FSDP2) parameters: torch miscompiles the fused kernel's op on their shards, "
                                      "so such steps take the foreach path, which does not unscale; step eagerly, "
                                      "or unscale with scaler.unscale_(opt) before the step")
        plan = {}  # param groups stepped by one kernel call
        if not compiling:
            plan = self._one_call_plan()
            self._check_step_inputs(plan)
            if plan and not self._step_in_one_call(plan, grad_scale, found_inf):  # refused: nothing changed
                self._step_refused_plan(plan, grad_scale, found_inf, compiling)
        for gi, group in enumerate(self.param_groups):
            if gi not in plan:
                self._step_group(gi, group, grad_scale, found_inf, compiling)
        return loss

    def _step_group(self, gi: int, group: dict, grad_scale: Optional[Tensor], found_inf: Optional[Tensor],
                    compiling: bool) -> None:
        """The general way to step a group (checked already): its state made where missing, then its path."""
        params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds = [], [], [], [], [], [], []
        exp_avg_sqs = [] if "exp_avg_sq" in checks.moment_keys(group) else None
        # (every list positionally: Dynamo writes back into the traced lists only the positional ones)
        self._init_group(group, params, grads, exp_avgs, exp_vars, steps, master_params, rounding_seeds,
                         compiling and gi == 0, exp_avg_sqs)
        if not params:
            return
        hyper = dict(self._update_options(group), orthogonalize_matrices=group["orthogonalize"],
                     ns_steps=group["ns_steps"], capturable=group["capturable"])
        storage = dict(master_params=master_params if group["master_weights"] else None,
                       rounding_seeds=rounding_seeds if group["stochastic_rounding"] else None)
        if exp_avg_sqs is not None:
            storage["exp_avg_sqs"] = exp_avg_sqs
        if group["fused"] and not (compiling and _has_dtensor(params)):
            _fused_step(params, grads, exp_avgs, exp_vars, steps, hyper, storage, grad_scale, found_inf)
        else:  # (compiled with DTensor params, torch miscompiles the kernel's op: see _has_dtensor)
            step_path = foreach_sgdf if group["foreach"] else single_tensor_sgdf
            step_path(params, grads, exp_avgs, exp_vars, steps, **storage, **hyper)

    def _update_options(self, group: dict) -> dict:
        """The options of the update itself, as every path's keyword arguments (AdaSGDF adds its preconditioner)."""
        return _update_options(group)


def _update_options(group: dict) -> dict:
    """A param group's options of the update itself, as every path's keyword arguments (numbers as Python floats:
    a group may hold numpy scalars)."""
    beta1, beta2 = group["betas"]
    lr = group["lr"]
    return dict(lr=lr if isinstance(lr, Tensor) else float(lr), beta1=float(beta1), beta2=float(beta2),
                eps=float(group["eps"]), gamma=float(group["gamma"]), weight_decay=float(group["weight_decay"]),
                decoupled_weight_decay=group["decoupled_weight_decay"], sign=group["sign"],
                maximize=group["maximize"])


def _fused_step(params, grads, exp_avgs, exp_vars, steps, hyper, storage, grad_scale, found_inf) -> None:
    """The fused kernel walks each tensor as one flat buffer: a param that is a view with gaps steps on a dense
    copy in its own dtype and its state's (dense) layout, written back afterwards (with its unscaled gradient), so
    it steps exactly as the same values in a dense tensor would, under every storage option."""
    params, grads = list(params), list(grads)
    copies = []
    for i, p in enumerate(params):
        if not checks.is_dense(p):
            dense_param = torch.empty_like(exp_avgs[i], dtype=p.dtype).copy_(p)
            dense_grad = torch.empty_like(exp_avgs[i], dtype=grads[i].dtype).copy_(grads[i])
            copies.append((p, dense_param, grads[i], dense_grad))
            params[i], grads[i] = dense_param, dense_grad
    fused_sgdf(params, grads, exp_avgs, exp_vars, steps, grad_scale=grad_scale, found_inf=found_inf, **storage,
               **hyper)
    for p, dense_param, grad, dense_grad in copies:
        p.copy_(dense_param)
        if grad_scale is not None:
            grad.copy_(dense_grad)


def _has_dtensor(params: List[Tensor]) -> bool:
    """Whether a DTensor is among `params`. Under torch.compile such a group takes the foreach path, fused or not:
    torch 2.14.1 fails to compile a custom op that writes into FSDP2 parameter shards from their gradient shards
    (an IndexError while guarding shard sizes, or "graph node count mismatch" in inductor; reported too: "sources
    must not be empty for symbol", and after torch._dynamo.reset() a graph that updates wrong values), where the
    same update in torch ops compiles correctly. docs/sgdf.md has a reproducer without SGDF."""
    dtensor = _dtensor.dtensor_type()
    return dtensor is not None and any(isinstance(p, dtensor) for p in params)


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
            state["rounding_seed"] = int(torch.randint(0, 2**32, (), dtype=torch.int64))
    else:
        state.pop("rounding_seed", None)


def _match_layout(p: Tensor, state: dict) -> None:
    """The fused kernel needs the state in the param's layout (dense for a view with gaps); a model converted
    after its first steps (e.g. to channels_last) gets its state converted likewise, values and dtypes unchanged
    (each entry on its own: one edited by hand may differ from the others)."""
    dense = None  # whether p is dense, asked only when an entry's strides differ from p's
    for key in ("exp_avg", "exp_var", "exp_avg_sq", "master_param"):
        t = state.get(key)
        if t is None or t.stride() == p.stride():
            continue
        dense = checks.is_dense(p) if dense is None else dense
        if dense or not checks.is_dense(t):
            state[key] = _like(p, t.dtype).copy_(t)


def _unnamed(p, index: int, group_index: int):
    """The tensor of a (name, tensor) pair, as torch's optimizers take named parameters; anything else as given (its
    kind is checked after)."""
    if not isinstance(p, tuple):
        return p
    if len(p) == 2 and isinstance(p[0], str):
        return p[1]
    raise TypeError(f"SGDF (param group {group_index}): entry {index} of 'params' is a tuple of "
                    f"{', '.join(type(x).__name__ for x in p) or 'nothing'}; a named parameter is a (str, tensor) pair, "
                    "as model.named_parameters() yields")


def _as_list(params) -> list:
    if isinstance(params, Tensor):
        return [params]
    if isinstance(params, set):
        raise TypeError("SGDF: optimizer params must be an ordered collection (a list or a generator such as "
                        "model.parameters()), not a set, whose order changes between runs")
    try:
        return list(params)
    except TypeError:
        raise TypeError(f"SGDF: 'params' must be a tensor or an iterable of tensors, got "
                        f"{type(params).__name__}") from None


def _is_capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
