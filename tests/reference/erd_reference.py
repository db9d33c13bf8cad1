"""Float64 reference for the ERD loss, written from docs/erd.md with plain torch ops. It never calls
sgdf_erd, so the tests compare the library against an independent reading of the spec."""

import math

import torch

F64 = torch.float64


def _f64(x):
    return torch.as_tensor(x).to(F64)


def target_coefficients(alpha, sigma, prediction, alpha_prime=None, sigma_prime=None):
    """(c_x, c_e) of the spec's table: the target is y = c_x * x0 + c_e * eps."""
    alpha, sigma = _f64(alpha), _f64(sigma)
    one, zero = torch.ones_like(alpha), torch.zeros_like(alpha)
    if prediction == "eps":
        return zero, one
    if prediction == "x0":
        return one, zero
    if prediction == "v":
        return -sigma, alpha
    if prediction == "flow":
        ap = -one if alpha_prime is None else _f64(alpha_prime)
        sp = one if sigma_prime is None else _f64(sigma_prime)
        return ap, sp
    raise ValueError(prediction)


def _pin(weight, alpha, sigma):
    """1 where the SNR is 0 (the authors' only special case); where it is infinite (sigma = 0) the formula's value
    stands."""
    snr = alpha.square() / sigma.square()
    return torch.where(snr == 0, torch.ones_like(weight), weight)


def erd_weight(alpha, sigma, prediction, alpha_prime=None, sigma_prime=None):
    """w = sqrt((c_x alpha)^2 + (c_e sigma)^2) / sqrt(alpha^2 + sigma^2); for v the constant sqrt(2) is dropped;
    pinned to 1 where the SNR is 0."""
    alpha, sigma = _f64(alpha), _f64(sigma)
    cx, ce = target_coefficients(alpha, sigma, prediction, alpha_prime, sigma_prime)
    w = torch.sqrt((cx * alpha) ** 2 + (ce * sigma) ** 2) / torch.sqrt(alpha**2 + sigma**2)
    if prediction == "v":
        w = w / math.sqrt(2.0)
    return _pin(w, alpha, sigma)


def baseline_weight(alpha, sigma, prediction, weighting, k=5.0, gamma=1.0):
    """The spec's baselines: constant; Min-SNR-k (eps: min(snr, k)/snr, x0: min(snr, k), v: min(snr, k)/(snr+1));
    P2 (eps: 1/(k + snr)^gamma); debias (eps: sigma/alpha). Pinned to 1 where snr is 0, except Min-SNR, which takes
    its formulas' limits there (docs/erd.md); where snr is infinite the formulas stand."""
    alpha, sigma = _f64(alpha), _f64(sigma)
    snr = alpha**2 / sigma**2
    if weighting == "constant":
        return torch.ones_like(snr)
    if weighting == "erd":
        return erd_weight(alpha, sigma, prediction)
    if weighting == "min_snr":
        clipped = torch.minimum(snr, torch.full_like(snr, k))
        w = {"eps": lambda: clipped / snr, "x0": lambda: clipped, "v": lambda: clipped / (snr + 1)}[prediction]()
    elif weighting == "p2" and prediction == "eps":
        w = 1.0 / (k + snr) ** gamma
    elif weighting == "debias" and prediction == "eps":
        w = sigma / alpha.abs()
    else:
        raise ValueError((prediction, weighting))
    w = _pin(w, alpha, sigma)
    if weighting == "min_snr":  # at snr = 0 the formulas' limits: eps 1, x0 0, v 0
        w = torch.where(snr == 0, torch.full_like(w, 1.0 if prediction == "eps" else 0.0), w)
    return w


def per_sample_mse(output, target):
    d = (_f64(target) - _f64(output)).reshape(output.shape[0], -1)
    return (d * d).mean(dim=1)


def loss(output, target, weights):
    """Batch mean of w_i * mean((target_i - output_i)^2)."""
    return (_f64(weights) * per_sample_mse(output, target)).mean()


def bin_index(alpha, sigma, num_bins, lo, hi):
    """Uniform bins over [lo, hi) in log-SNR; out-of-range samples clamp into the end bins."""
    logsnr = torch.log(_f64(alpha) ** 2 / _f64(sigma) ** 2)
    idx = torch.floor((logsnr - lo) / (hi - lo) * num_bins)
    idx = torch.nan_to_num(idx, nan=0.0, posinf=num_bins - 1, neginf=0.0)
    return idx.clamp(0, num_bins - 1).long()


def batch_statistics(mse, weights, alpha, sigma, num_bins, lo, hi):
    """Per-bin statistics of one batch, straight from the per-sample values: count, mean and population
    variance of the MSE, mean weighted loss, share of the total weighted loss. Empty bins: NaN (share 0)."""
    mse, w = _f64(mse), _f64(weights)
    loss_i = w * mse
    idx = bin_index(alpha, sigma, num_bins, lo, hi)
    out = {key: torch.full((num_bins,), float("nan"), dtype=F64) for key in ("mse_mean", "mse_var", "loss_mean")}
    out["count"] = torch.zeros(num_bins, dtype=F64)
    out["loss_share"] = torch.zeros(num_bins, dtype=F64)
    for b in range(num_bins):
        sel = idx == b
        if not bool(sel.any()):
            continue
        out["count"][b] = float(sel.sum())
        out["mse_mean"][b] = mse[sel].mean()
        out["mse_var"][b] = mse[sel].var(unbiased=False)
        out["loss_mean"][b] = loss_i[sel].mean()
        out["loss_share"][b] = loss_i[sel].sum() / loss_i.sum()
    out["bin_edges"] = torch.linspace(lo, hi, num_bins + 1, dtype=F64)
    return out


def running_statistics(history, decay, num_bins, lo, hi):
    """Moving-average statistics after the steps in `history` (a list of (mse, weights, alpha, sigma)).

    Step s of n gets weight c_s = (1 - decay) decay^(n - s). The running count is sum_s c_s count_s / sum_s c_s;
    running means are sample-weighted: sum_s c_s (sum of the values in the bin at step s) / sum_s c_s count_s;
    the variance is the running mean of mse^2 minus the squared running mean; the share is the bin's running
    loss sum over all bins' running loss sums."""
    n = len(history)
    c = torch.tensor([(1 - decay) * decay ** (n - 1 - s) for s in range(n)], dtype=F64)
    count = torch.zeros(num_bins, dtype=F64)
    s_mse, s_sq, s_loss = (torch.zeros(num_bins, dtype=F64) for _ in range(3))
    for cs, (mse, w, alpha, sigma) in zip(c, history):
        mse, w = _f64(mse), _f64(w)
        idx = bin_index(alpha, sigma, num_bins, lo, hi)
        for b in range(num_bins):
            sel = idx == b
            count[b] += cs * sel.sum()
            s_mse[b] += cs * mse[sel].sum()
            s_sq[b] += cs * (mse[sel] ** 2).sum()
            s_loss[b] += cs * (w[sel] * mse[sel]).sum()
    mean = s_mse / count
    return {
        "count": count / c.sum(),
        "mse_mean": mean,
        "mse_var": s_sq / count - mean**2,
        "loss_mean": s_loss / count,
        "loss_share": s_loss / s_loss.sum(),
    }


def exact_schedule(t, schedule):
    """(alpha, sigma, alpha', sigma', log-SNR) of a continuous schedule from the spec at each float t, evaluated with
    50 significant digits (mpmath, which torch brings through sympy) and rounded to float64 once; log-SNR is
    log(alpha^2 / sigma^2), +-inf where sigma or alpha is 0. schedule: "cosine" (alpha = cos(pi t / 2),
    sigma = sin(pi t / 2)) or "flow" (alpha = 1 - t, sigma = t)."""
    import mpmath

    rows = []
    with mpmath.workdps(50):
        for x in _f64(t).reshape(-1).tolist():
            u = mpmath.mpf(x)
            if schedule == "cosine":
                # cos(pi / 2) is 0 exactly; mpmath's is 1e-51
                a = mpmath.mpf(0) if x == 1.0 else mpmath.cos(mpmath.pi * u / 2)
                s = mpmath.sin(mpmath.pi * u / 2)
                ap, sp = -mpmath.pi / 2 * s, mpmath.pi / 2 * a
            elif schedule == "flow":
                a, s, ap, sp = 1 - u, u, mpmath.mpf(-1), mpmath.mpf(1)
            else:
                raise ValueError(schedule)
            logsnr = math.inf if s == 0 else -math.inf if a == 0 else 2 * (mpmath.log(abs(a)) - mpmath.log(s))
            rows.append([float(v) for v in (a, s, ap, sp, logsnr)])
    return torch.tensor(rows, dtype=F64).reshape(*_f64(t).shape, 5).unbind(-1)


def exact_weight(alpha, sigma, prediction, weighting, k=5.0, gamma=1.0, alpha_prime=None, sigma_prime=None):
    """The spec's weights (erd_weight, baseline_weight) at float alpha, sigma of any magnitude: evaluated with 50
    significant digits and an unbounded exponent (mpmath), so snr = alpha^2 / sigma^2 never under- or overflows,
    and rounded to float64 once. SNR 0 (alpha = 0 or sigma = inf): 1, Min-SNR its limits (eps 1, x0 0, v 0); SNR
    infinite (sigma = 0): the formulas' values; alpha = sigma = 0: NaN."""
    import mpmath

    alpha, sigma = _f64(alpha).reshape(-1).tolist(), _f64(sigma).reshape(-1).tolist()
    ap = [-1.0] * len(alpha) if alpha_prime is None else _f64(alpha_prime).reshape(-1).tolist()
    sp = [1.0] * len(alpha) if sigma_prime is None else _f64(sigma_prime).reshape(-1).tolist()
    out = []
    with mpmath.workdps(50):
        for a, s, dap, dsp in zip(alpha, sigma, ap, sp):
            a = abs(a)
            if weighting == "constant":
                out.append(1.0)
            elif math.isnan(a) or math.isnan(s) or a == s == 0 or a == s == math.inf:
                out.append(math.nan)
            elif a == 0 or s == math.inf:  # snr = 0
                out.append(0.0 if (weighting, prediction) in (("min_snr", "x0"), ("min_snr", "v")) else 1.0)
            elif s == 0:  # snr = inf: the formulas' values
                out.append({("erd", "eps"): 0.0, ("erd", "x0"): 1.0, ("erd", "v"): 0.0, ("erd", "flow"): abs(dap),
                            ("min_snr", "eps"): 0.0, ("min_snr", "x0"): k, ("min_snr", "v"): 0.0,
                            ("p2", "eps"): 0.0 if gamma > 0 else 1.0, ("debias", "eps"): 0.0}[weighting, prediction])
            else:
                a, s, kk = mpmath.mpf(a), mpmath.mpf(s), mpmath.mpf(k)
                snr, n = a**2 / s**2, mpmath.sqrt(a**2 + s**2)
                w = {("erd", "eps"): lambda: s / n, ("erd", "x0"): lambda: a / n, ("erd", "v"): lambda: a * s / n,
                     ("erd", "flow"): lambda: mpmath.sqrt((dap * a) ** 2 + (dsp * s) ** 2) / n,
                     ("min_snr", "eps"): lambda: min(snr, kk) / snr, ("min_snr", "x0"): lambda: min(snr, kk),
                     ("min_snr", "v"): lambda: min(snr, kk) / (snr + 1),
                     ("p2", "eps"): lambda: (kk + snr) ** -gamma, ("debias", "eps"): lambda: s / a,
                     }[weighting, prediction]()
                # float() of an mpf beyond float64's range gives inf / 0, as rounding does
                out.append(float(w))
    return torch.tensor(out, dtype=F64)


def exact_logsnr(alpha, sigma):
    """log(alpha^2 / sigma^2) of float alpha, sigma of any magnitude (mpmath, 50 digits), rounded to float64; -inf at
    alpha = 0, +inf at sigma = 0, NaN where both are 0 (or NaN)."""
    import mpmath

    out = []
    with mpmath.workdps(50):
        for a, s in zip(_f64(alpha).reshape(-1).tolist(), _f64(sigma).reshape(-1).tolist()):
            if math.isnan(a) or math.isnan(s) or a == s == 0:
                out.append(math.nan)
            else:
                out.append(math.inf if s == 0 else -math.inf if a == 0 else
                           float(2 * (mpmath.log(abs(mpmath.mpf(a))) - mpmath.log(mpmath.mpf(s)))))
    return torch.tensor(out, dtype=F64)
