"""Turning user images into the uint8 (H, W, 3) arrays the engine reads, and back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import ImageError

# PIL modes converted to RGB for the network; the result is converted back.
_PIL_MODES = {"RGB", "L", "RGBA", "LA", "P", "CMYK", "YCbCr"}


@dataclass
class Prepared:
    """An image as the engine wants it, and how to give the result back."""
    rgb: np.ndarray                        # (H, W, 3) uint8, C-contiguous
    restore: Callable[[np.ndarray], Any]   # (sH, sW, 3) uint8 -> the caller's kind


def _check_size(h: int, w: int, what: str) -> None:
    if h == 0 or w == 0:
        raise ImageError(f"{what} is empty ({h}x{w} pixels)")


def prepare(img: Any, scale: int) -> Prepared:
    """Validates an image (PIL image or numpy uint8 array) for upscaling."""
    if isinstance(img, np.ndarray):
        return _prepare_array(img)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(img, Image.Image):
        return _prepare_pil(img, scale)
    raise ImageError(f"expected a PIL image or a numpy uint8 array, got {type(img).__name__}")


def _prepare_array(a: np.ndarray) -> Prepared:
    if a.dtype != np.uint8:
        hint = ""
        if np.issubdtype(a.dtype, np.floating):
            hint = ("; for values in [0, 1] use np.clip(np.rint(a * 255), 0, 255)"
                    ".astype(np.uint8)")
        raise ImageError(f"expected a uint8 image, got dtype {a.dtype}{hint}")
    if a.ndim == 2:
        _check_size(*a.shape, "image")
        rgb = np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
        return Prepared(rgb, lambda out: np.ascontiguousarray(_luma(out)))
    if a.ndim != 3:
        raise ImageError(f"expected an (H, W, 3) or (H, W) image, got shape {a.shape}")
    if a.shape[2] != 3:
        raise ImageError(f"expected 3 colour channels (RGB) in the last axis, got {a.shape[2]} "
                         f"(shape {a.shape})")
    _check_size(a.shape[0], a.shape[1], "image")
    return Prepared(np.ascontiguousarray(a), lambda out: out)


def _luma(rgb: np.ndarray) -> np.ndarray:
    # ITU-R 601-2 luma, as PIL's convert("L"), for greyscale round trips.
    y = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _prepare_pil(img: Any, scale: int) -> Prepared:
    from PIL import Image

    mode = img.mode
    if mode not in _PIL_MODES:
        raise ImageError(f"PIL image mode {mode!r} is not supported (use RGB, RGBA, L, LA, P, "
                         "CMYK or YCbCr)")
    _check_size(img.height, img.width, "image")
    try:
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except OSError as e:  # a truncated file opened lazily
        raise ImageError(f"cannot decode the image: {e}") from None
    alpha = None
    if mode in ("RGBA", "LA") or (mode == "P" and "transparency" in img.info):
        alpha = img.getchannel("A") if mode in ("RGBA", "LA") else img.convert("RGBA").getchannel("A")

    def restore(out: np.ndarray) -> Any:
        result = Image.fromarray(out, "RGB")
        if mode in ("L", "LA"):
            result = result.convert("L")
        if alpha is not None:
            # The network sees colour only; alpha is resized bicubically.
            a = alpha.resize(result.size, Image.Resampling.BICUBIC)
            result = result.convert("LA" if mode == "LA" else "RGBA")
            result.putalpha(a)
        return result

    return Prepared(np.ascontiguousarray(rgb), restore)


def read(path: str) -> Any:
    """Opens an image file fully (so decoding errors surface here)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file PIL can read") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot decode the image ({e})") from None
