"""Fidelity of an accelerated run's images to the stock run's on the same seed: PSNR and SSIM.

Images are (N, H, W, C) float arrays in [0, 1] (what pipelines return with ``output_type="np"``; for videos pass
frames stacked on N). Both measures are means over the N images.

- PSNR: 10 log10(1 / MSE) per image, in dB; ``inf`` where an image is identical to its reference (and the mean is
  then ``inf`` too only if every image is).
- SSIM: Wang et al. (2004) with their constants (K1 = 0.01, K2 = 0.03, data range 1) and an 11x11 Gaussian window
  of sigma 1.5 (smaller images: a window of the image's size), per channel, averaged over the valid positions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _as_pair(images: np.ndarray, reference: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = np.asarray(images, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two (N, H, W, C) arrays of one shape, got {a.shape} and {b.shape}")
    return torch.from_numpy(a), torch.from_numpy(b)


def psnr(images: np.ndarray, reference: np.ndarray) -> float:
    """Mean PSNR in dB of images in [0, 1] against their references (``inf`` for identical images)."""
    a, b = _as_pair(images, reference)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    values = [math.inf if m == 0 else 10 * math.log10(1.0 / m) for m in mse.tolist()]
    return float(np.mean(values))


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    line = torch.exp(-coordinates.pow(2) / (2 * sigma**2))
    line /= line.sum()
    return torch.outer(line, line)


def ssim(images: np.ndarray, reference: np.ndarray, window: int = 11) -> float:
    """Mean SSIM of images in [0, 1] against their references (1.0 for identical images)."""
    a, b = _as_pair(images, reference)
    a, b = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)  # (N, C, H, W)
    channels = a.shape[1]
    size = min(window, a.shape[2], a.shape[3])
    kernel = _gaussian_window(size).expand(channels, 1, size, size)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.pow(2)
    var_b = blur(b * b) - mu_b.pow(2)
    covariance = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * covariance + c2)) / ((mu_a.pow(2) + mu_b.pow(2) + c1) * (var_a + var_b + c2))
    return float(index.flatten(1).mean(dim=1).mean())
