"""Sample quality, judged by a small digit classifier trained here on the training split.

- confidence: mean of the classifier's top softmax probability on the samples (legible, unambiguous digits score
  high; blobs score low).
- coverage: fraction of classes that receive at least half of their fair share (N / classes / 2) of the samples
  (mode collapse scores low); class entropy: entropy of the predicted-class histogram over log(classes).
- FD: Frechet distance between Gaussians fitted to the classifier's penultimate features of the samples and of
  the held-out images (the FID recipe with a domain classifier in place of Inception; lower is better).
"""

import warnings
from dataclasses import dataclass
from typing import Dict

import numpy as np
import scipy.linalg
import torch
from torch import nn
import torch.nn.functional as F

from .data import ImageData


class DigitClassifier(nn.Module):
    def __init__(self, num_classes: int, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(64 * 16, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class Scorer:
    classifier: DigitClassifier
    test_accuracy: float
    reference_features: np.ndarray  # held-out images
    num_classes: int

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> Dict[str, float]:
        images = images.float().cpu()
        logits = self.classifier(images)
        probs = logits.softmax(dim=1)
        pred = probs.argmax(dim=1)
        hist = torch.bincount(pred, minlength=self.num_classes).float()
        share = hist / hist.sum()
        fair = 1.0 / self.num_classes
        entropy = float(-(share[share > 0] * share[share > 0].log()).sum()) / np.log(self.num_classes)
        feats = self.classifier.features(images).numpy()
        return {
            "fd": frechet_distance(feats, self.reference_features),
            "confidence": float(probs.max(dim=1).values.mean()),
            "coverage": float((share >= 0.5 * fair).float().mean()),
            "class_entropy": entropy,
        }


def train_scorer(data: ImageData, seed: int = 0, epochs: int = 20, batch_size: int = 128) -> Scorer:
    """Train the classifier on the training split (CPU, a few seconds) and report its held-out accuracy."""
    torch.manual_seed(seed + 101)
    clf = DigitClassifier(data.num_classes)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed + 102)
    n = len(data.train_x)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x = data.train_x[idx]
            # one-pixel random shifts: the classifier must not depend on exact positions of generated strokes
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(clf(x), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    clf.eval().requires_grad_(False)
    with torch.no_grad():
        acc = float((clf(data.test_x).argmax(1) == data.test_y).float().mean())
        ref = clf.features(data.test_x).numpy()
    return Scorer(clf, acc, ref, data.num_classes)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) for feature rows ``a`` and ``b`` (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # fewer samples than features (smoke runs) make the product singular; sqrtm still returns a usable root
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():  # nudge both covariances, as the FID reference code does
            offset = np.eye(len(cov_a)) * 1e-6
            covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
