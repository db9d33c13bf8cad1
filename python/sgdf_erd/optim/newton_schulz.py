"""Muon-style orthogonalisation of a matrix-shaped update (the SGDF release's optional post-processing)."""

import math

import torch

# Quintic Newton-Schulz coefficients of the release (and of Muon).
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def is_matrix_shaped(t: torch.Tensor) -> bool:
    """Parameters that get orthogonalised: 2-D and higher (conv weights are flattened to [out, -1])."""
    return t.dim() >= 2


def orthogonalize(update: torch.Tensor, ns_steps: int) -> torch.Tensor:
    """Return the Newton-Schulz "zeroth power" of `update` (flattened to [rows, -1]), scaled by
    sqrt(max(1, rows / cols)), in `update`'s shape and dtype.

    Differences from the release, deliberate: iterations run in float32 (float64 for float64) rather than bfloat16,
    and rows/cols are those of the flattened matrix (the release takes the last two dimensions of a conv weight,
    i.e. kh/kw).
    """
    matrix = update.reshape(update.shape[0], -1)
    rows, cols = matrix.shape
    x = matrix.to(torch.float64 if update.dtype == torch.float64 else torch.float32)
    transposed = rows > cols
    if transposed:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x) + 1e-7)
    a, b, c = _NS_COEFFS
    for _ in range(ns_steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    if transposed:
        x = x.mT
    x = x * math.sqrt(max(1.0, rows / cols))
    return x.reshape(update.shape).to(update.dtype)
