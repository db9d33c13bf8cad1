"""float64 references for the NTK-spectrum op and diagnostic, written from the spec (docs/erd.md, "Per-noise-
level NTK spectrum") with numpy and plain torch.autograd; they never call sgdf_erd."""

import math

import numpy as np
import torch


def binned_gram_eigvalsh_reference(features, bin_ids, num_bins):
    """Per bin: eigenvalues of F_b F_b^T (numpy eigvalsh in float64), descending, padded with zeros."""
    f = np.asarray(features, dtype=np.float64)
    ids = np.asarray(bin_ids, dtype=np.int64)
    counts = np.bincount(ids, minlength=num_bins) if ids.size else np.zeros(num_bins, dtype=np.int64)
    width = int(counts.max()) if counts.size else 0
    out = np.zeros((num_bins, width))
    for b in range(num_bins):
        fb = f[ids == b]
        if len(fb):
            out[b, :len(fb)] = np.sort(np.linalg.eigvalsh(fb @ fb.T))[::-1]
    return out, counts


def logsnr_bins_reference(logsnr, num_bins, lo, hi):
    """Uniform log-SNR bins over [lo, hi]; values outside go to the end bins."""
    out = []
    for v in np.asarray(logsnr, dtype=np.float64):
        b = math.floor((v - lo) / (hi - lo) * num_bins)
        out.append(min(max(b, 0), num_bins - 1))
    return np.array(out, dtype=np.int64)


def spectrum_statistics_reference(eigs):
    """trace, max, effective rank exp(-sum p log p), participation ratio (sum mu)^2 / sum mu^2 of one spectrum."""
    mu = np.asarray(eigs, dtype=np.float64)
    trace = mu.sum()
    if mu.size == 0 or trace <= 0:
        return 0.0, (mu.max() if mu.size else 0.0), 0.0, 0.0
    p = mu / trace
    p = p[p > 0]
    return trace, mu.max(), math.exp(-(p * np.log(p)).sum()), trace**2 / (mu**2).sum()


def per_sample_jacobians(model, inputs, seed, per_sample_kwargs=None, shared_kwargs=None):
    """J_i = d(u . f(x_i)) / d(theta) for each sample by a separate backward pass, u as documented by ntk_spectrum:
    randn(out_shape, generator seeded with `seed`, float64, on CPU) / sqrt(out_numel). Returns [n, P] float64."""
    per_sample_kwargs = per_sample_kwargs or {}
    shared_kwargs = shared_kwargs or {}
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    u = None
    for i in range(inputs.shape[0]):
        kw = {k: v[i:i + 1] for k, v in per_sample_kwargs.items()}
        out = model(inputs[i:i + 1], **kw, **shared_kwargs)[0]
        if u is None:
            gen = torch.Generator().manual_seed(seed)
            u = (torch.randn(out.shape, generator=gen, dtype=torch.float64) / math.sqrt(out.numel())).to(out.dtype)
        grads = torch.autograd.grad((out * u).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]).double())
    return torch.stack(rows).numpy()
