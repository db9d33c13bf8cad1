"""Per-noise-level spectrum of the empirical neural tangent kernel (the ERD paper's diagnosis).

For noisy inputs x_i with log-SNR l_i, the empirical NTK of a seeded random scalar projection of the model output
is Theta_ij = <J_i, J_j>, J_i = d(u . f(x_i)) / d(theta). Samples are grouped into log-SNR bins and the spectrum of
Theta restricted to each bin is summarised (trace, top eigenvalue, effective rank, participation ratio). The paper
reports the spectrum weakening and the effective rank collapsing as noise rises under uniform loss weighting.
"""

import contextlib
import math
import threading
from typing import Dict, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from ..erd.loss import _bin_edges, _check_bins, _check_range
from ..ops import MAX_NUM_BINS, binned_gram_eigvalsh

__all__ = ["ntk_spectrum", "spectrum_statistics", "logsnr_bin_ids"]

# Sketch blocks hold at most this many entries (64 MiB in float32), so no big [P, sketch_dim] matrix exists at once.
_SKETCH_BLOCK_ENTRIES = 1 << 24
# A sketch smaller than this is generated once and reused by every chunk of samples; a larger one is regenerated
# block by block for each chunk (same numbers: every block has its own seed).
_SKETCH_CACHE_BYTES = 256 << 20
# Default chunk_size keeps one chunk's per-sample gradients under this many bytes.
_GRAD_CHUNK_BYTES = 1 << 30
_MAX_AUTO_CHUNK = 64


def logsnr_bin_ids(logsnr: Tensor, num_bins: int, logsnr_range: Sequence[float]) -> Tensor:
    """Bin index of each log-SNR value, as ERDLoss's statistics bin it: uniform bins over ``[lo, hi]``, bin b
    holding ``bin_edges[b] <= l < bin_edges[b + 1]`` (:func:`sgdf_erd.erd.logsnr_bin_edges`), values outside the
    range in the end bins, and -1 (no bin) for NaN."""
    if not isinstance(logsnr, Tensor):
        raise TypeError(f"logsnr_bin_ids: 'logsnr' must be a tensor, got {type(logsnr).__name__}")
    return _bin_ids(logsnr, num_bins, *_check_bins(num_bins, logsnr_range, "logsnr_bin_ids"))


def _bin_ids(logsnr: Tensor, num_bins: int, lo: float, hi: float) -> Tensor:
    """logsnr_bin_ids for arguments its callers have checked."""
    logsnr = logsnr.detach().double()
    interior = _bin_edges(num_bins, lo, hi)[1:-1].to(logsnr.device)
    ids = torch.searchsorted(interior, logsnr, right=True)
    return torch.where(logsnr.isnan(), -1, ids)


def spectrum_statistics(eigenvalues: Tensor, counts: Tensor) -> Dict[str, Tensor]:
    """Summaries of per-bin spectra ``eigenvalues`` ``[num_bins, m]`` (zero-padded rows, as returned by
    :func:`sgdf_erd.ops.binned_gram_eigvalsh`).

    Returns ``trace`` (sum mu), ``max_eigenvalue``, ``effective_rank`` (exp(-sum p log p), p = mu / sum mu, with
    0 log 0 = 0) and ``participation_ratio`` ((sum mu)^2 / sum mu^2), each ``[num_bins]``; the last two are 0 for
    an empty bin or a zero spectrum. Padding zeros do not change any of them.
    """
    eig = eigenvalues
    trace = eig.sum(dim=1)
    if eig.shape[1] > 0:
        max_eig = eig.max(dim=1).values
    else:
        max_eig = torch.zeros_like(trace)
    positive = (trace > 0) & (counts > 0)
    # both ratios are scale-free: taken of the spectrum over its largest magnitude, so that sums and squares of
    # eigenvalues near float32's largest (which the eigensolver returns finite) do not overflow
    scale = eig.abs().amax(dim=1, keepdim=True) if eig.shape[1] > 0 else torch.ones_like(trace).unsqueeze(1)
    q = eig / torch.where(scale > 0, scale, torch.ones_like(scale))
    q_sum = q.sum(dim=1)
    safe_sum = torch.where(positive, q_sum, torch.ones_like(q_sum))
    p = q / safe_sum.unsqueeze(1)
    entropy = -torch.special.xlogy(p, p).sum(dim=1)
    effective_rank = torch.where(positive, entropy.exp(), torch.zeros_like(trace))
    sum_sq = (q * q).sum(dim=1)
    safe_sq = torch.where(positive, sum_sq, torch.ones_like(sum_sq))
    participation = torch.where(positive, q_sum * q_sum / safe_sq, torch.zeros_like(trace))
    return {
        "trace": trace,
        "max_eigenvalue": max_eig,
        "effective_rank": effective_rank,
        "participation_ratio": participation,
    }


def _block_seed(seed: int, tensor_index: int, block_index: int) -> int:
    """A distinct, platform-independent generator seed for each sketch block."""
    mixed = (seed * 0x9E3779B97F4A7C15 + (tensor_index + 1) * 0xBF58476D1CE4E5B9 + (block_index + 1) * 0x94D049BB133111EB)
    return mixed % (1 << 63)


class _GaussianSketch:
    """S = concat_t S_t with i.i.d. N(0, 1/r) entries, applied tensor by tensor and block by block, so that
    E[(J S)(J' S)^T] = J J'^T. Blocks are regenerated from their own seeds unless the whole sketch is small."""

    def __init__(self, numels: Sequence[int], dim: int, seed: int, device: torch.device, dtype: torch.dtype):
        self.numels = list(numels)
        self.dim = dim
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self.rows_per_block = max(1, _SKETCH_BLOCK_ENTRIES // dim)
        total_bytes = sum(self.numels) * dim * torch.finfo(dtype).bits // 8
        self.cache = {} if total_bytes <= _SKETCH_CACHE_BYTES else None

    def _block(self, t: int, b: int, rows: int) -> Tensor:
        if self.cache is not None and (t, b) in self.cache:
            return self.cache[(t, b)]
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_block_seed(self.seed, t, b))
        block = torch.randn(rows, self.dim, generator=gen, device=self.device, dtype=self.dtype)
        block.mul_(1.0 / math.sqrt(self.dim))
        if self.cache is not None:
            self.cache[(t, b)] = block
        return block

    def project(self, grads: Sequence[Tensor]) -> Tensor:
        """grads: per tensor ``[c, numel_t]``; returns ``[c, dim]``."""
        out = None
        for t, g in enumerate(grads):
            for b, start in enumerate(range(0, self.numels[t], self.rows_per_block)):
                rows = min(self.rows_per_block, self.numels[t] - start)
                part = g[:, start:start + rows] @ self._block(t, b, rows)
                out = part if out is None else out.add_(part)
        return out


def _check_args(model, inputs, logsnr, num_bins, logsnr_range, sketch_dim, chunk_size):
    if not isinstance(model, nn.Module):
        raise TypeError(f"ntk_spectrum: 'model' must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, Tensor) or inputs.dim() < 1:
        raise ValueError("ntk_spectrum: 'inputs' must be a tensor with a leading batch dimension [n, ...]")
    n = inputs.shape[0]
    if isinstance(logsnr, (int, float)) and not isinstance(logsnr, bool):
        logsnr = torch.full((n,), float(logsnr), dtype=torch.float64)
    if not isinstance(logsnr, Tensor):
        raise TypeError(f"ntk_spectrum: 'logsnr' must be a tensor [n] or a real number, got {type(logsnr).__name__}")
    if logsnr.is_complex() or logsnr.dtype == torch.bool:
        raise TypeError(f"ntk_spectrum: 'logsnr' must hold real numbers (log(alpha^2 / sigma^2)), got {logsnr.dtype}")
    if logsnr.dim() == 0:
        logsnr = logsnr.expand(n)
    if logsnr.shape != (n,):
        raise ValueError(f"ntk_spectrum: 'logsnr' must have shape [n] = [{n}] (one log-SNR per input), got "
                         f"{tuple(logsnr.shape)}")
    if not torch.isfinite(logsnr).all():
        raise ValueError("ntk_spectrum: 'logsnr' holds non-finite values; clip infinite log-SNR (t = 0 or 1) to a "
                         "finite range first")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or not 1 <= num_bins <= MAX_NUM_BINS:
        raise ValueError(f"ntk_spectrum: 'num_bins' must be an int in [1, 2**24] (each bin is a row of the "
                         f"eigenvalue output), got {num_bins!r}")
    lo, hi = _check_range(logsnr_range, "ntk_spectrum")
    if sketch_dim is not None and (isinstance(sketch_dim, bool) or not isinstance(sketch_dim, int) or sketch_dim < 1):
        raise ValueError(f"ntk_spectrum: 'sketch_dim' must be an int >= 1 or None (no sketch), got {sketch_dim!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"ntk_spectrum: 'chunk_size' must be an int >= 1 or None (automatic), got {chunk_size!r}")
    return logsnr, lo, hi


# Ids of the modules that running ntk_spectrum calls hold (see _held_in_eval_mode).
_held_modules = set()
_held_lock = threading.Lock()
# Integer dtypes of each element size, to compare tensors bit for bit (NaN, -0.0).
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    bits = _BITS.get(a.element_size())
    if bits is None:
        return bool(torch.equal(a, b))
    return bool(torch.equal(a.view(bits), b.view(bits)))


def _same_place(a: Tensor, b: Tensor) -> bool:
    """Whether a and b are the same view of the same memory (a `.data = ...` assignment changes that)."""
    if (a.dtype, a.device, a.shape, a.stride()) != (b.dtype, b.device, b.shape, b.stride()):
        return False
    try:
        return a.data_ptr() == b.data_ptr()
    except RuntimeError:  # a tensor subclass without storage: its geometry is all there is to compare
        return True


class _ModelState:
    """What a model's forward can change in its modules, to put back exactly: each module's training flag and the
    parameters, buffers and submodules registered on it (a forward may reassign them, e.g. an EMA buffer updated
    out of place), and each parameter's and buffer's memory (``.data`` assignments), values (in-place updates,
    ``.data`` edits, counters) and requires_grad flag. Holds a copy of every parameter and buffer meanwhile."""

    def __init__(self, model: nn.Module):
        self.modules = [(m, m.training, dict(m._parameters), dict(m._buffers), dict(m._modules),
                         set(m._non_persistent_buffers_set)) for m in model.modules()]
        tensors = {}
        for _, _, parameters, buffers, _, _ in self.modules:
            for t in (*parameters.values(), *buffers.values()):
                if t is not None and id(t) not in tensors:
                    tensors[id(t)] = (t, t.data, t.detach().clone(), t.requires_grad)
        self.tensors = list(tensors.values())

    def restore(self) -> None:
        for m, training, parameters, buffers, submodules, non_persistent in self.modules:
            m.training = training
            for current, saved in ((m._parameters, parameters), (m._buffers, buffers), (m._modules, submodules)):
                if current.keys() != saved.keys() or any(current[k] is not v for k, v in saved.items()):
                    current.clear()
                    current.update(saved)
            if m._non_persistent_buffers_set != non_persistent:
                m._non_persistent_buffers_set.clear()
                m._non_persistent_buffers_set.update(non_persistent)
        for t, data, values, requires_grad in self.tensors:
            if not _same_place(t, data):
                t.data = data
            if not _same_bits(data, values):
                data.copy_(values)  # through .data: the tensor's version counter stays as the forward left it
            if t.requires_grad != requires_grad:
                t.requires_grad_(requires_grad)


@contextlib.contextmanager
def _held_in_eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the block (batch norm reads its running statistics instead of updating them, and
    needs no batch; dropout is off), then exactly as it was (_ModelState), however the block ends.

    A model is held by one call at a time: a second call on it, or on a model sharing a module with it (another
    thread, or the model's own forward), would read the first one's eval mode as the model's own and leave it
    behind, so it is refused."""
    modules = list(model.modules())
    ids = {id(m) for m in modules}
    with _held_lock:
        if not _held_modules.isdisjoint(ids):
            raise RuntimeError("ntk_spectrum: another ntk_spectrum call is running on this model (or on a model "
                               "sharing a module with it), in another thread or from the model's forward; calls "
                               "on one model must not overlap, as each holds it in eval mode and puts its state back "
                               "afterwards. Run them one after another, or give each thread its own copy "
                               "(copy.deepcopy(model))")
        _held_modules.update(ids)
    try:
        state = _ModelState(model)
        try:
            model.eval()
            yield
        finally:
            state.restore()
    finally:
        with _held_lock:
            _held_modules.difference_update(ids)


def ntk_spectrum(model: nn.Module, inputs: Tensor, logsnr, /, num_bins: int = 16,
                 logsnr_range: Sequence[float] = (-10.0, 10.0), sketch_dim: Optional[int] = 256, seed: int = 0,
                 chunk_size: Optional[int] = None, **model_kwargs) -> Dict[str, Tensor]:
    r"""Per-log-SNR-bin spectrum of the empirical NTK of ``model`` on a batch of noisy inputs.

    For each sample, ``J_i = d(u . f(x_i)) / d(theta)`` over the parameters that require grad, where ``f(x_i)``
    is the model output for that sample and ``u`` a fixed random direction: ``u = torch.randn(out_shape,
    generator=torch.Generator().manual_seed(seed), dtype=torch.float64) / sqrt(out_numel)`` (generated on the
    CPU, then cast; ``out_shape`` = one sample's output shape), so ``E_u[Theta]`` is the NTK averaged over output
    coordinates. ``J_i`` is then sketched, ``J_i S`` with ``S`` a ``[P, sketch_dim]`` Gaussian matrix of
    variance ``1 / sketch_dim`` (seeded per parameter tensor and block from ``seed``; identical numbers on every
    run on the same device type), so that ``<J_i S, J_j S>`` is an unbiased estimate of ``Theta_ij`` with relative
    error about ``sqrt(2 / sketch_dim)``. Samples are binned by log-SNR uniformly over ``logsnr_range``
    (values outside clamp into the end bins), and :func:`sgdf_erd.ops.binned_gram_eigvalsh` gives the
    eigenvalues of the sketched kernel restricted to each bin.

    Args:
        model: module called as ``model(x, **kwargs)`` with a batch ``x`` ``[b, ...]``, returning a tensor
            ``[b, ...]``. It runs in eval mode whatever its mode (per-sample gradients run each sample separately
            under ``torch.func.vmap``, so batch norm uses its running statistics and dropout is off). Whatever
            its forward does, the call puts the model back exactly as it was when it returns or raises: training
            flags, the parameters, buffers and submodules registered (a buffer reassigned out of place, e.g. an
            EMA, is the original again), their values (in-place updates, counters, ``.data`` edits), memory and
            requires_grad flags; it keeps a copy of the parameters and buffers meanwhile. One call at a time per
            model: a call on a model that another call (another thread) is using raises RuntimeError.
        inputs: ``[n, ...]`` noisy inputs.
        logsnr: ``[n]`` log-SNR of each input (or one number for all); used for binning only.
        num_bins, logsnr_range: uniform log-SNR bins over ``(lo, hi)``.
        sketch_dim: sketch width; ``None`` uses the exact per-sample gradients (``[n, P]`` features: small models).
        seed: seeds ``u`` and the sketch.
        chunk_size: samples per ``vmap(grad)`` call; default keeps one chunk's per-sample gradients under 1 GiB
            (at most 64 samples).
        **model_kwargs: extra model arguments. A tensor whose first dimension is ``n`` is per-sample: sample ``i``
            gets ``value[i:i+1]`` (e.g. the timestep or noise level); anything else is passed unchanged to every
            call. ``model``, ``inputs`` and ``logsnr`` are positional-only, so a model keyword such as ``logsnr=``
            or ``x=`` reaches the model: ``ntk_spectrum(model, x_t, lam, logsnr=lam)``.

    Returns:
        dict of tensors on ``inputs``' device: ``count`` ``[B]`` int64, ``eigenvalues`` ``[B, max_count]``
        (descending, zero-padded), ``trace``, ``max_eigenvalue``, ``effective_rank``, ``participation_ratio``
        (``[B]`` each, see :func:`spectrum_statistics`; 0 for empty bins) and ``bin_edges`` ``[B + 1]``.

    Cost and memory (P parameters, n samples, r = sketch_dim, c = chunk size): per-sample gradients cost about
    ``n`` backward passes (batched by vmap) and hold ``c * P`` values at a time plus ``c`` samples' activations;
    the sketch costs ``n * P * r`` multiply-adds and, when ``P * r`` exceeds 64 Mi values, regenerating ``S`` in
    64 MiB blocks once per chunk (``(n / c) * P * r`` random numbers); features take ``n * r`` values and the
    eigenvalue op ``O(sum_b c_b^2 r)``. E.g. P = 50M float32, n = 256, r = 256: c = 5 (1 GiB of gradients),
    3.3e12 multiply-adds of sketching and 6.6e11 regenerated random numbers, so on large models the sketch, not
    the eigenvalues, sets the cost; a larger ``chunk_size`` (if memory allows) cuts the regeneration.
    """
    logsnr, lo, hi = _check_args(model, inputs, logsnr, num_bins, logsnr_range, sketch_dim, chunk_size)
    with _held_in_eval_mode(model):
        features = _ntk_features(model, inputs, sketch_dim, seed, chunk_size, model_kwargs)
    device = inputs.device
    bin_ids = _bin_ids(logsnr, num_bins, lo, hi).to(device)
    eigenvalues, counts = binned_gram_eigvalsh(features, bin_ids, num_bins)
    result = {"count": counts, "eigenvalues": eigenvalues}
    result.update(spectrum_statistics(eigenvalues, counts))
    result["bin_edges"] = torch.linspace(lo, hi, num_bins + 1, dtype=features.dtype, device=device)
    return result


def _ntk_features(model: nn.Module, inputs: Tensor, sketch_dim: Optional[int], seed: int,
                  chunk_size: Optional[int], model_kwargs) -> Tensor:
    """[n, sketch_dim] sketched (or [n, P] exact) per-sample gradients of the projected output."""
    from torch.func import functional_call, grad, vmap

    n = inputs.shape[0]
    device = inputs.device
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("ntk_spectrum: 'model' has no parameters that require grad; the NTK is empty")
    # what the forward reads besides, as aliases too: what it reassigns under the transforms (a buffer, a `.data`)
    # is then an alias, never the model's own tensor, which a torch.func wrapper would outlive; what it writes in
    # place reaches the model's memory, which _ModelState puts back
    constants = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    constants.update((name, b.detach()) for name, b in model.named_buffers())
    numels = [p.numel() for p in params.values()]
    total = sum(numels)
    first = next(iter(params.values()))
    work_dtype = first.dtype if first.dtype in (torch.float32, torch.float64) else torch.float32

    per_sample = {k: v for k, v in model_kwargs.items() if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == n}
    shared = {k: v for k, v in model_kwargs.items() if k not in per_sample}

    if chunk_size is None:
        per_sample_bytes = total * torch.finfo(first.dtype).bits // 8
        chunk_size = int(max(1, min(_MAX_AUTO_CHUNK, _GRAD_CHUNK_BYTES // max(per_sample_bytes, 1))))

    if n == 0:
        features = torch.zeros(0, sketch_dim or total, dtype=work_dtype, device=device)
    else:
        with torch.no_grad():  # one sample's output shape fixes u
            probe = model(inputs[:1], **{k: v[:1] for k, v in per_sample.items()}, **shared)
        if not isinstance(probe, Tensor) or probe.dim() < 1 or probe.shape[0] != 1:
            raise ValueError("ntk_spectrum: 'model' must return one tensor [b, ...] for a batch of b inputs")
        out_shape = probe.shape[1:]
        gen = torch.Generator().manual_seed(seed)
        u = torch.randn(out_shape, generator=gen, dtype=torch.float64) / math.sqrt(max(probe[0].numel(), 1))
        u = u.to(device=device, dtype=probe.dtype)

        def projected_output(p, x, kw):
            batched = {k: v.unsqueeze(0) for k, v in kw.items()}
            out = functional_call(model, (p, constants), (x.unsqueeze(0),), {**batched, **shared})
            return (out[0] * u).sum()

        per_sample_grad = vmap(grad(projected_output), in_dims=(None, 0, 0))
        sketch = None if sketch_dim is None else _GaussianSketch(numels, sketch_dim, seed, device, work_dtype)
        chunks = []
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            grads = per_sample_grad(params, inputs[start:stop], {k: v[start:stop] for k, v in per_sample.items()})
            flat = [grads[name].reshape(stop - start, -1).to(work_dtype) for name in params]
            del grads
            chunks.append(torch.cat(flat, dim=1) if sketch is None else sketch.project(flat))
            del flat
        features = torch.cat(chunks, dim=0)
    return features
