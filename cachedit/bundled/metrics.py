"""Data and measurements for the bundled digits models: the dataset, a digits classifier, PSNR, SSIM, grids.

Kept apart from the models so that measuring needs no diffusers and each module has one job.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["digits_dataset", "digit_accuracy", "psnr", "ssim", "save_grid"]

IMAGE_SIZE = 16  # pixels (the 8x8 digits upscaled bilinearly)


def digits_dataset() -> tuple[Tensor, Tensor]:
    """All 1797 sklearn digits as ``(images [N, 1, 16, 16] in [0, 1], labels [N])``.

    The 8x8 images (0..16) are scaled to [0, 1] and upscaled bilinearly
    (``align_corners=False``) to 16x16; this is exactly the training data (times 2, minus 1).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return x, torch.from_numpy(d.target.astype(np.int64))


def _to_features(images: Tensor) -> np.ndarray:
    """[B, 1, 16, 16] in [0, 1] -> [B, 64] on the sklearn scale (0..16) via 2x2 average pooling."""
    images = torch.as_tensor(images).detach().float().cpu()
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.shape[-1] != 8:
        images = F.adaptive_avg_pool2d(images, (8, 8))
    return (images.clamp(0.0, 1.0) * 16.0).reshape(images.shape[0], -1).numpy().astype(np.float64)


@functools.lru_cache(maxsize=1)
def _digit_classifier():
    """RBF-SVC (gamma=0.001, C=10) fitted on all sklearn digits after the same 8->16->8
    round trip that generated images go through; deterministic (no probability calibration)."""
    from sklearn.svm import SVC

    x, y = digits_dataset()
    clf = SVC(gamma=0.001, C=10.0)
    clf.fit(_to_features(x), y.numpy())
    return clf


def digit_accuracy(images: Tensor, labels: Union[Sequence[int], Tensor]) -> float:
    """Fraction of ``images`` ([B, 1, 16, 16] in [0, 1]) that a digits classifier reads as ``labels``.

    Images are average-pooled 2x2 to 8x8, scaled to 0..16 and classified by an RBF-SVC fitted on
    sklearn's digits (cached).  Held-out accuracy of this classifier on real digits is ~0.99.
    """
    labels = np.asarray(torch.as_tensor(labels).reshape(-1).cpu().numpy(), dtype=np.int64)
    pred = _digit_classifier().predict(_to_features(images))
    return float((pred == labels).mean())


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements (float64); ``inf`` when identical."""
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = float(((a - b) ** 2).mean())
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(float(data_range) ** 2 / mse)


def _gaussian_window(size: int, sigma: float) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, window_size: int = 7, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004), computed in float64.

    Gaussian window of ``window_size`` x ``window_size`` (default 7, since the images are only
    16x16; use 11 for the classic setting) with ``sigma`` 1.5, "valid" convolution (no padding),
    K1=0.01, K2=0.03, computed per channel and averaged over all windows, channels and images.
    Inputs are [H, W], [C, H, W] or [B, C, H, W]; identical inputs give exactly 1.0.
    """
    a = torch.as_tensor(a).detach().double().cpu()
    b = torch.as_tensor(b).detach().double().cpu()
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    while a.ndim < 4:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    h, w = a.shape[-2:]
    a = a.reshape(-1, 1, h, w)
    b = b.reshape(-1, 1, h, w)
    win = min(window_size, h, w)
    kernel = _gaussian_window(win, sigma)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_a = F.conv2d(a, kernel)
    mu_b = F.conv2d(b, kernel)
    var_a = F.conv2d(a * a, kernel) - mu_a * mu_a
    var_b = F.conv2d(b * b, kernel) - mu_b * mu_b
    cov = F.conv2d(a * b, kernel) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float((num / den).mean())


def save_grid(rows: Sequence[tuple[str, Tensor]], path: str, scale: int = 4, label_width: int = 120, pad: int = 2) -> None:
    """Write a PNG with one labelled row per ``(name, images)``; images [B, 1, H, W] in [0, 1].

    Pixels are upscaled ``scale`` times (nearest) so the 16x16 digits are visible; the name is
    drawn on the left with PIL's default font.
    """
    from PIL import Image, ImageDraw

    prepared = []
    for name, imgs in rows:
        imgs = torch.as_tensor(imgs).detach().float().cpu()
        if imgs.ndim == 3:
            imgs = imgs.unsqueeze(1)
        imgs = imgs.clamp(0.0, 1.0)
        prepared.append((str(name), (imgs[:, 0] * 255.0 + 0.5).to(torch.uint8).numpy()))
    if not prepared:
        raise ValueError("save_grid needs at least one row")
    cell_h = max(r.shape[1] for _, r in prepared) * scale
    cell_w = max(r.shape[2] for _, r in prepared) * scale
    ncols = max(r.shape[0] for _, r in prepared)
    width = label_width + ncols * (cell_w + pad) + pad
    height = len(prepared) * (cell_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (64, 64, 64))
    draw = ImageDraw.Draw(canvas)
    for r, (name, arr) in enumerate(prepared):
        y = pad + r * (cell_h + pad)
        draw.text((4, y + cell_h // 2 - 6), name, fill=(255, 255, 255))
        for c in range(arr.shape[0]):
            tile = Image.fromarray(arr[c], mode="L").resize(
                (arr.shape[2] * scale, arr.shape[1] * scale), Image.NEAREST
            )
            canvas.paste(tile.convert("RGB"), (label_width + pad + c * (cell_w + pad), y))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    canvas.save(path, format="PNG")
