"""Float64 transcription of the ERD authors' per-sample MSE weights, `compute_mse_loss_weight` in
tools/gaussian_diffusion.py of LilYau350/Elucidated-Representation-Diffusion, written from its formulas (not its
code) for the (prediction, weighting) pairs this library also defines. It never calls sgdf_erd.

Their names: prediction EPSILON / START_X / VELOCITY / VECTOR (our eps / x0 / v / flow); weighting 'lambda' (our
"erd"), 'min_snr_<k>', 'p2' (p2_k, p2_gamma), 'debias', 'constant'. With snr = (alpha / sigma)^2 they compute

    eps:  lambda sigma,  min_snr min(snr, k) / snr,  p2 1 / (k + snr)^gamma,  debias sigma / alpha
    x0:   lambda alpha,  min_snr min(snr, k)
    v:    lambda alpha * sigma,  min_snr min(snr, k) / (snr + 1)
    flow: lambda 1
    any:  constant 1

as written (so sigma = 0 gives the formula's IEEE value), then set the weight to 1 wherever snr == 0: their only
special case. The minimum is torch's, which propagates NaN.
"""

import torch

F64 = torch.float64

# (prediction, weighting) pairs both define, in our names
PAIRS = ([(p, "erd") for p in ("eps", "x0", "v", "flow")] + [(p, "constant") for p in ("eps", "x0", "v", "flow")]
         + [(p, "min_snr") for p in ("eps", "x0", "v")] + [("eps", "p2"), ("eps", "debias")])


def authors_weight(alpha, sigma, prediction, weighting, k=5.0, gamma=1.0):
    alpha, sigma = torch.as_tensor(alpha).to(F64), torch.as_tensor(sigma).to(F64)
    if weighting == "constant":
        return torch.ones_like(alpha)
    snr = (alpha / sigma) ** 2
    clipped = torch.minimum(snr, torch.full_like(snr, k))
    formulas = {
        ("eps", "erd"): lambda: sigma,
        ("eps", "min_snr"): lambda: clipped / snr,
        ("eps", "p2"): lambda: 1 / (k + snr) ** gamma,
        ("eps", "debias"): lambda: sigma / alpha,
        ("x0", "erd"): lambda: alpha,
        ("x0", "min_snr"): lambda: clipped,
        ("v", "erd"): lambda: alpha * sigma,
        ("v", "min_snr"): lambda: clipped / (snr + 1),
        ("flow", "erd"): lambda: torch.ones_like(alpha),
    }
    return torch.where(snr == 0, torch.ones_like(alpha), formulas[(prediction, weighting)]())
