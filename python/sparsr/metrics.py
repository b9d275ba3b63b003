"""Image-quality metrics in the convention of the super-resolution literature.

PSNR and SSIM are measured on the Y channel of ITU-R BT.601 with a border of
``scale`` pixels removed, as the EDSR / RCAN / SMSR evaluation code does:

* PSNR: ``diff = (sr - hr) / 255`` per RGB channel, the Y difference is
  ``(65.738 dR + 129.057 dG + 25.064 dB) / 256`` and the MSE is taken over the
  cropped image (EDSR ``utility.calc_psnr``).
* SSIM: on ``Y = 16 + (65.738 R + 129.057 G + 25.064 B) / 256`` (0..255, not
  rounded), 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255,
  'valid' filtering (Wang et al.'s ``ssim_index.m``).

Greyscale images are replicated to three channels first (Set14 ``bridge``), and
an HR image that is not a multiple of the scale is cropped to the SR size.
numpy only: the runtime must not depend on torch or scipy.
"""

from __future__ import annotations

import math

import numpy as np

# BT.601 luma for 0..255 RGB, as used by the SR literature (sum = 219.859 / 256).
Y_COEFFS = np.array([65.738, 129.057, 25.064], dtype=np.float64) / 256.0
Y_OFFSET = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_RANGE = 255.0


def quantize(img_float: np.ndarray) -> np.ndarray:
    """Clamps to 0..255 and rounds half to even (like ``torch.round``) into uint8."""
    return np.rint(np.clip(np.asarray(img_float, dtype=np.float32), 0.0, 255.0)).astype(np.uint8)


def to_rgb(img: np.ndarray) -> np.ndarray:
    """Returns an (H, W, 3) view of a greyscale (H, W) / (H, W, 1) or RGB(A) image."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {img.shape}")
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        return img[:, :, :3]
    if img.shape[2] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got shape {img.shape}")
    return img


def _pair(sr: np.ndarray, hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 (H, W, 3), the HR cropped to the SR size."""
    sr = to_rgb(sr)
    hr = to_rgb(hr)
    height, width = sr.shape[:2]
    if hr.shape[0] < height or hr.shape[1] < width:
        raise ValueError(f"SR image {sr.shape[:2]} is larger than HR image {hr.shape[:2]}")
    # EDSR crops the HR image to scale * LR size when it is not a multiple of scale.
    hr = hr[:height, :width]
    return sr.astype(np.float64), hr.astype(np.float64)


def _shave(img: np.ndarray, border: int) -> np.ndarray:
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border == 0:
        return img
    if img.shape[0] <= 2 * border or img.shape[1] <= 2 * border:
        raise ValueError(f"image {img.shape[:2]} is too small for a border of {border}")
    return img[border:-border, border:-border]


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma ``16 + (65.738 R + 129.057 G + 25.064 B) / 256`` as float64, not rounded."""
    return Y_OFFSET + to_rgb(img).astype(np.float64) @ Y_COEFFS


def psnr_y(sr_uint8: np.ndarray, hr_uint8: np.ndarray, scale: int) -> float:
    """PSNR in dB on the Y channel with ``scale`` border pixels removed (EDSR convention).

    Returns ``inf`` for identical images.
    """
    sr, hr = _pair(sr_uint8, hr_uint8)
    y_diff = ((sr - hr) / 255.0) @ Y_COEFFS
    mse = float(np.mean(_shave(y_diff, scale) ** 2))
    if mse == 0.0:
        return math.inf
    return -10.0 * math.log10(mse)


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian whose outer product is MATLAB's ``fspecial('gaussian')``."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    window = np.exp(-(offsets ** 2) / (2.0 * sigma * sigma))
    return window / window.sum()


def _filter_valid(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """'valid' 2-D correlation with the separable window ``outer(window, window)``."""
    size = window.shape[0]
    rows = np.lib.stride_tricks.sliding_window_view(img, size, axis=0) @ window
    return np.lib.stride_tricks.sliding_window_view(rows, size, axis=1) @ window


def ssim_y(sr_uint8: np.ndarray, hr_uint8: np.ndarray, scale: int) -> float:
    """Mean SSIM on the Y channel with ``scale`` border pixels removed ('valid' Gaussian filtering)."""
    sr, hr = _pair(sr_uint8, hr_uint8)
    y_sr = _shave(rgb_to_y(sr), scale)
    y_hr = _shave(rgb_to_y(hr), scale)
    if min(y_sr.shape) < SSIM_WINDOW:
        raise ValueError(f"image {y_sr.shape} after the border crop is smaller than the "
                         f"{SSIM_WINDOW}x{SSIM_WINDOW} SSIM window")
    window = gaussian_window_1d()
    c1 = (SSIM_K1 * SSIM_RANGE) ** 2
    c2 = (SSIM_K2 * SSIM_RANGE) ** 2
    mu_sr = _filter_valid(y_sr, window)
    mu_hr = _filter_valid(y_hr, window)
    var_sr = _filter_valid(y_sr * y_sr, window) - mu_sr * mu_sr
    var_hr = _filter_valid(y_hr * y_hr, window) - mu_hr * mu_hr
    covariance = _filter_valid(y_sr * y_hr, window) - mu_sr * mu_hr
    ssim_map = ((2.0 * mu_sr * mu_hr + c1) * (2.0 * covariance + c2)) / (
        (mu_sr * mu_sr + mu_hr * mu_hr + c1) * (var_sr + var_hr + c2))
    return float(ssim_map.mean())
