"""Image-fidelity metrics for imagined frames (PSNR, SSIM), numpy in, numpy out."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB per frame of uint8 [..., H, W, 3] arrays (peak 255)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))
    return 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM per frame (Wang et al. 2004: 11x11 Gaussian, sigma 1.5, averaged over RGB)."""
    shape = a.shape[:-3]
    # Read-only arrays (memory-mapped episodes) are fine: float64 copies are made anyway.
    x = torch.tensor(a.reshape(-1, *a.shape[-3:]), dtype=torch.float64).movedim(-1, 1) / 255.0
    y = torch.tensor(b.reshape(-1, *b.shape[-3:]), dtype=torch.float64).movedim(-1, 1) / 255.0
    n, c, h, w = x.shape
    x, y = x.reshape(n * c, 1, h, w), y.reshape(n * c, 1, h, w)
    k = _gaussian()
    mu_x, mu_y = F.conv2d(x, k), F.conv2d(y, k)
    sxx = F.conv2d(x * x, k) - mu_x**2
    syy = F.conv2d(y * y, k) - mu_y**2
    sxy = F.conv2d(x * y, k) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return m.reshape(n, -1).mean(dim=1).numpy().reshape(shape)


def balanced_agreement(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean of per-class accuracy (plain accuracy when only one class is present)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    accs = [float((pred[truth == v] == v).mean()) for v in (False, True) if (truth == v).any()]
    return float(np.mean(accs)) if accs else float("nan")


def ranking_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """P(a random success scores above a random failure), ties counting half: how well the
    scores rank outcomes whatever the threshold (0.5 = chance, NaN without both classes)."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    pos, neg = scores[truth], scores[~truth]
    if not len(pos) or not len(neg):
        return float("nan")
    above = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(above + 0.5 * ties)
