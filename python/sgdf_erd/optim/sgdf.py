"""SGDF: SGD with a Wiener-filtered first moment, as a drop-in ``torch.optim.Optimizer``."""

from typing import Iterable, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from .. import _native
from .sgdf_functional import foreach_sgdf, fused_sgdf, single_tensor_sgdf

# Path settings belong to the optimizer that runs, not to the checkpoint it loads.
_PATH_KEYS = ("foreach", "fused", "capturable")
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
        lr: learning rate (float, or a tensor; a CUDA tensor with ``capturable=True`` or ``fused=True`` keeps
            the step free of host synchronisation). Release default 0.5.
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
        foreach: use the ``torch._foreach_*`` implementation.
        fused: use the compiled multi-tensor kernel (CPU and, when built with CUDA, CUDA; float32, float64,
            float16 and bfloat16). Default: fused where the build supports every parameter, else foreach.
        capturable: keep step counts (and a tensor ``lr``) on the device so a step can be captured in a CUDA graph.

    State per parameter: ``step`` (float32 tensor), ``exp_avg``, ``exp_var`` (the release's names). Checkpoints of
    the authors' release (int ``step``, ``use_*`` option names) load, and so do checkpoints of any of the paths.
    With fused kernels the optimizer works with ``torch.amp.GradScaler`` as torch's fused optimizers do.
    """

    def __init__(self, params: Iterable, lr: Union[float, Tensor] = 0.5, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, gamma: float = 0.5, weight_decay: float = 0.0, *,
                 decoupled_weight_decay: bool = False, sign: bool = False, orthogonalize: bool = False,
                 ns_steps: int = 5, maximize: bool = False, foreach: Optional[bool] = None,
                 fused: Optional[bool] = None, capturable: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, gamma=gamma, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, sign=sign, orthogonalize=orthogonalize,
                        ns_steps=ns_steps, maximize=maximize, foreach=foreach, fused=fused, capturable=capturable)
        if fused and foreach:
            raise RuntimeError("SGDF: `fused` and `foreach` cannot both be True; choose one")
        super().__init__(params, defaults)
        self._resolve_paths(fused, foreach)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        _check_hyperparameters(self.param_groups[-1])
        _check_group_params(self.param_groups[-1])
        if hasattr(self, "_step_supports_amp_scaling"):  # after __init__: the new params join the path choice
            self._resolve_paths(self.defaults["fused"], self.defaults["foreach"])

    # ------------------------------------------------------------------ paths
    def _resolve_paths(self, fused: Optional[bool], foreach: Optional[bool]) -> None:
        params = [p for g in self.param_groups for p in g["params"]]
        if fused:
            for p in params:
                _native.require(p.device, "SGDF(fused=True)")
                if not _native.supports(p.device, _real_dtype(p)):
                    raise RuntimeError(f"SGDF(fused=True): no fused kernel for {p.dtype} on {p.device.type}; the "
                                       "fused kernels take float32, float64, float16 and bfloat16 (and complex "
                                       "as real views); use foreach=True for other dtypes")
        elif fused is None and not foreach:
            fused = bool(params) and all(_native.supports(p.device, _real_dtype(p)) for p in params)
        fused = bool(fused)
        foreach = not fused if foreach is None else bool(foreach)
        for group in self.param_groups:
            group["fused"], group["foreach"] = fused, foreach and not fused
        # torch.amp.GradScaler hands grad_scale / found_inf to step() instead of unscaling with a host sync.
        self._step_supports_amp_scaling = fused

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for release_key, key in _RELEASE_KEYS.items():
                if release_key in group:
                    group.setdefault(key, group.pop(release_key))
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict) -> None:
        paths = [{k: g[k] for k in _PATH_KEYS} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, path in zip(self.param_groups, paths):
            group.update(path)
            _check_hyperparameters(group)
            on_device = group["fused"] or group["capturable"]
            for p in group["params"]:
                state = self.state.get(p)
                if not state or "step" not in state:
                    continue
                # the release stores an int step; a checkpoint of another path may hold it on another device
                step = torch.as_tensor(state["step"], dtype=torch.float32)
                state["step"] = step.to(p.device if on_device else "cpu").reshape(())
                for key in ("exp_avg", "exp_var"):
                    state[key] = state[key].to(device=p.device, dtype=p.dtype)

    # ------------------------------------------------------------------ step
    def _init_group(self, group: dict):
        params, grads, exp_avgs, exp_vars, steps = [], [], [], [], []
        on_device = group["fused"] or group["capturable"]
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("SGDF does not support sparse gradients; use a dense gradient (for example "
                                   "nn.Embedding(sparse=False)) or torch.optim.SparseAdam for that parameter")
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_var"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_vars.append(state["exp_var"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_vars, steps

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimisation step; `closure` re-evaluates the model and returns the loss."""
        if not any(g["capturable"] or g["fused"] for g in self.param_groups) and _is_capturing():
            raise RuntimeError("SGDF: a step is being captured in a CUDA graph but neither capturable=True nor "
                               "fused=True was set; construct SGDF(..., capturable=True)")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Gather (and validate) every group before any tensor changes, so a bad group leaves nothing half-updated.
        work = [(group, self._init_group(group)) for group in self.param_groups]
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group, (params, grads, exp_avgs, exp_vars, steps) in work:
            if not params:
                continue
            beta1, beta2 = group["betas"]
            hyper = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], gamma=group["gamma"],
                         weight_decay=group["weight_decay"], decoupled_weight_decay=group["decoupled_weight_decay"],
                         sign=group["sign"], orthogonalize_matrices=group["orthogonalize"],
                         ns_steps=group["ns_steps"], maximize=group["maximize"], capturable=group["capturable"])
            if group["fused"]:
                fused_sgdf(params, grads, exp_avgs, exp_vars, steps, grad_scale=grad_scale, found_inf=found_inf,
                           **hyper)
            elif group["foreach"]:
                foreach_sgdf(params, grads, exp_avgs, exp_vars, steps, **hyper)
            else:
                single_tensor_sgdf(params, grads, exp_avgs, exp_vars, steps, **hyper)
        return loss


def _real_dtype(p: Tensor) -> torch.dtype:
    return p.real.dtype if p.is_complex() else p.dtype


def _is_capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _check_hyperparameters(h: dict) -> None:
    lr = h["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"SGDF: a tensor `lr` must hold one element, got shape {tuple(lr.shape)}")
        if not lr.is_floating_point():
            raise TypeError(f"SGDF: a tensor `lr` must be floating point, got {lr.dtype}")
    elif not isinstance(lr, (int, float)) or isinstance(lr, bool):
        raise TypeError(f"SGDF: `lr` must be a float or a one-element tensor, got {type(lr).__name__}")
    elif not lr >= 0.0:
        raise ValueError(f"SGDF: invalid learning rate lr={lr}; it must be >= 0")
    betas = h["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"SGDF: `betas` must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        if isinstance(b, Tensor) or not isinstance(b, (int, float)) or not 0.0 <= b < 1.0:
            raise ValueError(f"SGDF: invalid betas[{i}]={b!r}; each beta must be a float in [0, 1)")
    if not (isinstance(h["eps"], (int, float)) and h["eps"] >= 0.0):
        raise ValueError(f"SGDF: invalid eps={h['eps']!r}; it must be >= 0")
    if not (isinstance(h["gamma"], (int, float)) and h["gamma"] > 0.0):
        raise ValueError(f"SGDF: invalid gamma={h['gamma']!r}; it must be > 0 (0.5 is the release default)")
    if not (isinstance(h["weight_decay"], (int, float)) and h["weight_decay"] >= 0.0):
        raise ValueError(f"SGDF: invalid weight_decay={h['weight_decay']!r}; it must be >= 0")
    ns = h["ns_steps"]
    if not isinstance(ns, int) or isinstance(ns, bool) or (h["orthogonalize"] and ns < 2):
        raise ValueError(f"SGDF: invalid ns_steps={ns!r}; it must be an int >= 2 when orthogonalize=True")


def _check_group_params(group: dict) -> None:
    for p in group["params"]:
        if not (p.is_floating_point() or p.is_complex()):
            raise TypeError(f"SGDF: parameters must be floating point or complex, got {p.dtype}")
        if p.is_complex() and group["orthogonalize"]:
            raise ValueError("SGDF: orthogonalize=True is not defined for complex parameters; put them in a "
                             "param group with orthogonalize=False")
