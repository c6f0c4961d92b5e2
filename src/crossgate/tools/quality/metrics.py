"""Image-similarity and distribution metrics, in plain numpy/torch (no scipy or scikit-image here).

Images are ``uint8`` arrays ``(H, W, 3)`` or batches ``(N, H, W, 3)``; metrics use the 0-255 range,
so PSNR numbers are comparable with the usual 8-bit convention.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _as_batch(images: np.ndarray) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected images (N, H, W, 3) or (H, W, 3), got shape {array.shape}")
    return array.astype(np.float64)


def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image mean squared error on the 0-255 scale."""
    a, b = _as_batch(a), _as_batch(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return ((a - b) ** 2).mean(axis=(1, 2, 3))


def psnr_from_mse(value: float) -> float:
    """PSNR in dB for an 8-bit MSE; ``inf`` for identical images."""
    return math.inf if value == 0 else 10.0 * math.log10(255.0**2 / value)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB (``inf`` where the images are identical)."""
    return np.array([psnr_from_mse(float(v)) for v in mse(a, b)])


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004: Gaussian 11x11 window, sigma 1.5, K1=0.01, K2=0.03).

    Computed per channel over the valid window positions and averaged, as scikit-image does with
    ``gaussian_weights=True``; 1.0 for identical images.
    """
    x, y = _as_batch(a), _as_batch(b)
    if x.shape != y.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {y.shape}")
    if min(x.shape[1:3]) < window:
        raise ValueError(f"images of {x.shape[1:3]} are smaller than the {window}x{window} SSIM window")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    n, h, w, c = x.shape
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).reshape(n * c, 1, h, w)
    ty = torch.from_numpy(y).permute(0, 3, 1, 2).reshape(n * c, 1, h, w)
    kernel = _gaussian_window(window, sigma)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel)

    mu_x, mu_y = blur(tx), blur(ty)
    var_x = blur(tx * tx) - mu_x**2
    var_y = blur(ty * ty) - mu_y**2
    cov = blur(tx * ty) - mu_x * mu_y
    # Unbiased covariance, as scikit-image uses.
    m = window * window
    var_x, var_y, cov = (t * m / (m - 1) for t in (var_x, var_y, cov))
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    per_channel = (num / den).mean(dim=(1, 2, 3)).reshape(n, c)
    return per_channel.mean(dim=1).numpy()


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows are samples).

    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)``; the last trace equals
    ``tr((S_a S_b)^1/2)`` and is computed from symmetric matrices, so it stays real and stable.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with equal D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples per set")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross))
    return max(value, 0.0)
