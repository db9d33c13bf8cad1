"""Training images for the demo: scikit-learn's bundled 8x8 digits (default) or a user's folder / ``.npy`` array.

Every source ends up as float32 tensors ``[N, 1, size, size]`` in [-1, 1] with integer labels, split into a
training part (the denoiser and the scoring classifier learn from it) and a held-out part (the reference the
generated samples are compared against).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class ImageData:
    train_x: torch.Tensor  # [N, 1, S, S] in [-1, 1]
    train_y: torch.Tensor  # [N] int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    source: str        # what the images are, for the report
    label_source: str  # where the labels come from, for the report

    @property
    def size(self) -> int:
        return self.train_x.shape[-1]


def load_data(path: Optional[str] = None, size: int = 8, test_fraction: float = 0.3, seed: int = 0) -> ImageData:
    """Load the digits (``path=None``) or the user's images, resized to ``size`` x ``size``, split by ``seed``."""
    if size < 4 or size % 2:
        raise ValueError(f"size must be an even number >= 4 (the U-Net halves it once), got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if path is None:
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0)  # pixel values are 0..16
        labels = torch.from_numpy(digits.target.astype(np.int64))
        source, label_source = "scikit-learn digits (1797 images, 8x8)", "digit labels"
    else:
        images, labels, source, label_source = _load_user_images(Path(path))
    if tuple(images.shape[-2:]) != (size, size):
        source += f", resized to {size}x{size}"
    images = _resize(images[:, None], size)
    if labels is None:
        labels, label_source = _pseudo_labels(images, seed), "k-means pseudo-labels (10 clusters; no labels given)"
    num_classes = int(labels.max()) + 1
    train_idx, test_idx = _stratified_split(labels, test_fraction, seed)
    return ImageData(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], num_classes,
                     source, label_source)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.contiguous()
    # bilinear with antialiasing: upsampling stays within [-1, 1]; downsampling averages instead of aliasing
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True).clamp_(-1.0, 1.0)


def _to_unit_range(array: np.ndarray) -> torch.Tensor:
    """Integer images are scaled by their dtype's range, float images by their own min and max."""
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    else:
        array = array.astype(np.float32)
        lo, hi = float(array.min()), float(array.max())
        if not np.isfinite([lo, hi]).all():
            raise ValueError("--data: the array contains NaN or infinite values")
        array = (array - lo) / max(hi - lo, 1e-12)
    return torch.from_numpy(array * 2.0 - 1.0)


def _to_grey(array: np.ndarray) -> np.ndarray:
    """[N, H, W] stays; [N, H, W, C] and [N, C, H, W] with C in 1, 3, 4 are averaged over colour (alpha dropped)."""
    if array.ndim == 3:
        return array
    if array.ndim == 4:
        if array.shape[-1] in (1, 3, 4):
            return array[..., :3].mean(axis=-1) if array.shape[-1] != 1 else array[..., 0]
        if array.shape[1] in (1, 3, 4):
            return array[:, :3].mean(axis=1) if array.shape[1] != 1 else array[:, 0]
    raise ValueError(f"--data: expected an array of shape [N, H, W], [N, H, W, C] or [N, C, H, W] with C in "
                     f"(1, 3, 4), got {tuple(array.shape)}")


def _load_user_images(path: Path) -> Tuple[torch.Tensor, Optional[torch.Tensor], str, str]:
    if not path.exists():
        raise FileNotFoundError(f"--data: {path} does not exist; give a folder of images or a .npy file")
    if path.is_file():
        if path.suffix != ".npy":
            raise ValueError(f"--data: {path} is a file but not a .npy array; give a .npy file or a folder")
        array = np.load(path, allow_pickle=False)
        if len(array) < 20:
            raise ValueError(f"--data: {path} holds {len(array)} images; the demo needs at least 20")
        grey = _to_grey(array)
        return _to_unit_range(grey), None, f"{path.name} ({len(grey)} images, {grey.shape[1]}x{grey.shape[2]})", ""
    from PIL import Image
    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in _IMAGE_SUFFIXES)
    if len(files) < 20:
        raise ValueError(f"--data: found {len(files)} images under {path}; the demo needs at least 20")
    first = Image.open(files[0])
    shape = first.size
    # every image is brought to the first one's size; grey-scale ("L") as the denoiser has one channel
    arrays = [np.asarray(Image.open(f).convert("L").resize(shape, Image.BILINEAR)) for f in files]
    images = _to_unit_range(np.stack(arrays).astype(np.uint8))
    parents = sorted({f.parent for f in files})
    if len(parents) >= 2:  # one sub-folder per class, as torchvision's ImageFolder
        index = {p: i for i, p in enumerate(parents)}
        labels = torch.tensor([index[f.parent] for f in files], dtype=torch.int64)
        label_source = f"sub-folder names ({len(parents)} classes)"
    else:
        labels, label_source = None, ""
    return images, labels, f"{path.name}/ ({len(files)} images, {shape[1]}x{shape[0]})", label_source


def _pseudo_labels(images: torch.Tensor, seed: int, clusters: int = 10) -> torch.Tensor:
    from sklearn.cluster import KMeans
    flat = images.reshape(len(images), -1).numpy()
    km = KMeans(n_clusters=min(clusters, len(images) // 2), n_init=4, random_state=seed).fit(flat)
    return torch.from_numpy(km.labels_.astype(np.int64))


def _stratified_split(labels: torch.Tensor, test_fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = int(round(len(idx) * test_fraction)) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values
