"""Per-sample loss weights: the ERD recoverability weight and the baselines the authors compare against.

The formulas live once, in the native kernels (csrc/erd/erd_math.h); this module checks arguments and calls them.
"""


import torch
from torch import Tensor

from .. import ops
from .._native import require
from .schedules import as_real, as_tensor

__all__ = ["erd_weight", "loss_weight", "PREDICTIONS", "WEIGHTINGS", "DIFFUSERS_PREDICTIONS"]

PREDICTIONS = ("eps", "x0", "v", "flow")
# diffusers' names (scheduler.config.prediction_type; "flow_prediction" is its flow-matching target, noise - x0)
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow_prediction": "flow"}
WEIGHTINGS = ("erd", "constant", "min_snr", "p2", "debias")

# The (prediction, weighting) pairs the spec defines besides erd and constant, which take every prediction.
_BASELINE_PREDICTIONS = {"min_snr": ("eps", "x0", "v"), "p2": ("eps",), "debias": ("eps",)}


def prediction_name(prediction) -> str:
    """Our name of a prediction type given by ours or by diffusers' (``"epsilon"`` -> ``"eps"``); ValueError for
    an unknown one."""
    if isinstance(prediction, str):
        prediction = DIFFUSERS_PREDICTIONS.get(prediction, prediction)
        if prediction in PREDICTIONS:
            return prediction
    raise ValueError(f"unknown prediction {prediction!r}; use one of {PREDICTIONS} or diffusers' "
                     f"{tuple(DIFFUSERS_PREDICTIONS)}")


def check_weighting(prediction: str, weighting: str) -> None:
    """ValueError for an unknown prediction or weighting, or a pair the spec does not define."""
    prediction = prediction_name(prediction)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; use one of {WEIGHTINGS} or a callable "
                         "(alpha, sigma) -> weights")
    allowed = _BASELINE_PREDICTIONS.get(weighting)
    if allowed is not None and prediction not in allowed:
        raise ValueError(f"weighting {weighting!r} is defined for prediction {' / '.join(allowed)} only, not "
                         f"{prediction!r}; use 'erd', 'constant' or a callable")


def loss_weight(alpha, sigma, prediction: str = "eps", weighting: str = "erd", *, alpha_prime=None,
                sigma_prime=None, k: float = 5.0, gamma: float = 1.0) -> Tensor:
    """Per-sample weights of a built-in weighting, with snr = alpha^2 / sigma^2:

    - ``"erd"``: see :func:`erd_weight`;
    - ``"min_snr"`` (Min-SNR-k): eps: min(snr, k) / snr, x0: min(snr, k), v: min(snr, k) / (snr + 1);
    - ``"p2"``: eps: 1 / (k + snr)^gamma;
    - ``"debias"``: eps: sigma / |alpha|;
    - ``"constant"``: 1.

    Where snr is 0 the weight is 1, as in the authors' code, except Min-SNR (zero-terminal-SNR schedules), which
    takes its formulas' limits there: eps 1, x0 0, v 0, the values of diffusers' ``snr_gamma`` loss for x0
    ("sample") and v (for eps its bare formula is 0 / 0). Where snr is infinite (sigma = 0: clean data, t = 0) the
    formulas stand, as in the authors' code: ``"erd"`` eps 0, x0 1, v 0, flow |alpha'|; ``"min_snr"`` eps 0, x0 k,
    v 0; ``"p2"`` 0 (gamma > 0, 1 at gamma = 0); ``"debias"`` 0, each also the formula's limit as sigma -> 0.
    NaN alpha or sigma, or alpha = sigma = 0, give NaN (the constant weighting excepted). ``prediction`` also takes
    diffusers' names ("epsilon", "sample", "v_prediction", "flow_prediction"). alpha and sigma broadcast against each
    other; the result has their broadcast shape and promoted floating dtype. Weights carry no gradient: they are
    functions of the schedule, constants of the loss.
    """
    prediction = prediction_name(prediction)
    check_weighting(prediction, weighting)
    k, gamma = as_real(k, "k", "loss_weight"), as_real(gamma, "gamma", "loss_weight")
    alpha = as_tensor(alpha, "'alpha'", "loss_weight")
    names, tensors = ["alpha", "sigma"], [alpha, as_tensor(sigma, "'sigma'", "loss_weight", device=alpha.device)]
    if prediction == "flow" and (alpha_prime is None) != (sigma_prime is None):
        raise ValueError("pass both alpha_prime and sigma_prime, or neither (the linear path: -1 and 1)")
    if alpha_prime is not None or sigma_prime is not None:
        if prediction != "flow":
            raise ValueError(f"alpha_prime/sigma_prime are read by prediction 'flow' only, not {prediction!r}")
        names += ["alpha_prime", "sigma_prime"]
        tensors += [as_tensor(alpha_prime, "'alpha_prime'", "loss_weight", device=alpha.device),
                    as_tensor(sigma_prime, "'sigma_prime'", "loss_weight", device=alpha.device)]
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if dtype.is_complex:
        raise TypeError(f"loss_weight: alpha, sigma (and alpha_prime, sigma_prime) must be real, got {dtype}; a "
                        "schedule's coefficients are real numbers")
    if dtype == torch.bool:
        raise TypeError("loss_weight: alpha, sigma (and alpha_prime, sigma_prime) must be numbers, got torch.bool; "
                        "pass the schedule's coefficients as floating-point tensors")
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    try:
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    except RuntimeError:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in zip(names, tensors))
        raise ValueError(f"loss_weight: {shapes} must broadcast together (one value per sample, or scalars)") from None
    tensors = [t.detach().to(dtype).expand(shape) for t in tensors]
    require(alpha.device, "sgdf_erd.loss_weight")
    flat = [t.reshape(-1) for t in tensors] + [None] * (4 - len(tensors))
    return ops.erd_weights(*flat, prediction, weighting, k, gamma).reshape(shape)


def erd_weight(alpha, sigma, prediction: str = "eps", alpha_prime=None, sigma_prime=None) -> Tensor:
    """ERD recoverability weights w = sqrt((c_x alpha)^2 + (c_e sigma)^2) / sqrt(alpha^2 + sigma^2), where the
    target is y = c_x * x0 + c_e * eps. Per prediction (n = sqrt(alpha^2 + sigma^2)):

    - ``"eps"`` (c_x = 0, c_e = 1): sigma / n;
    - ``"x0"`` (c_x = 1, c_e = 0): |alpha| / n;
    - ``"v"`` (c_x = -sigma, c_e = alpha): |alpha| sigma / n, the rule's sqrt(2) dropped as the authors do;
    - ``"flow"`` (c_x = alpha', c_e = sigma'): sqrt((alpha' alpha)^2 + (sigma' sigma)^2) / n, with the time
      derivatives alpha_prime, sigma_prime defaulting to the linear path (-1, 1).

    For variance-preserving schedules (n = 1) these are the authors' values: eps -> sigma, x0 -> alpha,
    v -> alpha * sigma, and flow on the linear path alpha = 1 - t, sigma = t -> 1. Where snr = alpha^2 / sigma^2 is
    0 the weight is pinned to 1 (the authors' code); where it is infinite (sigma = 0) the formula stands (eps 0,
    x0 1, v 0, flow |alpha'|). Accepts tensors (or numbers) that broadcast together.
    """
    return loss_weight(alpha, sigma, prediction, "erd", alpha_prime=alpha_prime, sigma_prime=sigma_prime)
