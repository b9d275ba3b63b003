"""Upscaling whole images with a model: alpha, greyscale, 16-bit, a final
resize to any scale. The network itself is the model's business.

The model is anything with
    model.scale: int
    model.process(rgb) -> rgb: float32 (H, W, 3) on 0..1 in, float32
        (scale*H, scale*W, 3) out (0..1, not clamped);
    and, if model.reports_progress, process(rgb, progress=f) calls f(fraction done).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .errors import ImageError

ALPHA_MODES = ("model", "bicubic")
Progress = Callable[[int, int], None]

# ITU-R 601-2 luma, as PIL's convert("L"): greyscale in gives greyscale out.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# PIL modes read as 8-bit samples as they are.
_PIL_DIRECT = {"L": "L", "LA": "LA", "RGB": "RGB", "RGBA": "RGBA"}
# PIL modes the network sees as RGB, converted back afterwards.
_PIL_VIA_RGB = {"CMYK", "YCbCr"}
_PIL_DEEP_GREY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def upscale_image(model: Any, img: Any, *, alpha: str = "model", outscale: float | None = None,
                  progress: Progress | None = None) -> Any:
    """Upscales an image by model.scale (or by outscale: the model's output is
    then resized with Lanczos, as Real-ESRGAN's --outscale) and returns the
    same kind: a PIL image in its mode (palette and bilevel images come back
    as RGB/RGBA and L), or a numpy uint8/uint16 (H, W), (H, W, 2), (H, W, 3),
    (H, W, 4) array of that dtype and channels.

    alpha="model" upscales the alpha channel with the network (as a grey
    image); "bicubic" resizes it. progress(done, total) is called at the start
    and the end of the image and after each network pass (units: input pixels
    of the passes).
    """
    if alpha not in ALPHA_MODES:
        raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")
    if outscale is not None and not (isinstance(outscale, (int, float)) and outscale > 0):
        raise ValueError(f"outscale must be a number > 0, got {outscale!r}")
    samples, restore = _to_samples(img)
    out = _upscale_samples(model, samples, alpha, outscale, progress)
    return restore(out)


def _to_samples(img: Any) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """An image as a uint8/uint16 (H, W[, C]) array, and how to give the
    upscaled array back in the caller's kind."""
    if isinstance(img, np.ndarray):
        _check_array(img)
        return img, lambda out: out
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is None or not isinstance(img, Image.Image):
        raise ImageError(f"expected a PIL image or a numpy uint8/uint16 array, got "
                         f"{type(img).__name__}")
    return _pil_to_samples(img)


def _check_array(a: np.ndarray) -> None:
    if a.dtype not in (np.uint8, np.uint16):
        hint = ""
        if np.issubdtype(a.dtype, np.floating):
            hint = ("; for values in [0, 1] use np.clip(np.rint(a * 255), 0, 255)"
                    ".astype(np.uint8)")
        raise ImageError(f"expected a uint8 or uint16 image, got dtype {a.dtype}{hint}")
    if a.ndim not in (2, 3):
        raise ImageError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {a.shape}")
    if a.ndim == 3 and a.shape[2] not in (2, 3, 4):
        raise ImageError(f"expected 1 (grey), 2 (grey, alpha), 3 (RGB) or 4 (RGBA) channels in "
                         f"the last axis, got {a.shape[2]} (shape {a.shape})")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"image is empty ({a.shape[0]}x{a.shape[1]} pixels)")


def _pil_to_samples(img: Any) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    from PIL import Image

    mode = img.mode
    if img.width == 0 or img.height == 0:
        raise ImageError(f"image is empty ({img.height}x{img.width} pixels)")
    try:
        if mode in ("P", "PA") or (mode in ("L", "RGB") and "transparency" in img.info):
            # A palette or a colour key: the network needs the colours themselves.
            keyed = "transparency" in img.info or mode == "PA"
            if mode in ("P", "PA"):
                img = img.convert("RGBA" if keyed else "RGB")
            else:
                img = img.convert("LA" if mode == "L" else "RGBA")
            mode = img.mode
        elif mode == "1":
            img, mode = img.convert("L"), "L"
        if mode in _PIL_DIRECT:
            samples = np.asarray(img)
            return samples, Image.fromarray      # the mode follows from the channels
        if mode in _PIL_VIA_RGB:
            samples = np.asarray(img.convert("RGB"))
            return samples, lambda out: Image.fromarray(out).convert(mode)
        if mode in _PIL_DEEP_GREY:
            samples = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)

            def restore_deep(out: np.ndarray) -> Any:
                if mode == "I":
                    return Image.fromarray(out.astype(np.int32))
                result = Image.fromarray(out)                  # I;16, native order
                return result if mode in ("I;16", "I;16N", "I;16L") else result.convert(mode)

            return samples, restore_deep
    except OSError as e:  # a truncated file opened lazily
        raise ImageError(f"cannot decode the image: {e}") from None
    raise ImageError(f"PIL image mode {mode!r} is not supported (use RGB, RGBA, L, LA, P, 1, "
                     "I;16, I, CMYK or YCbCr)")


def _upscale_samples(model: Any, a: np.ndarray, alpha_mode: str, outscale: float | None,
                     progress: Progress | None) -> np.ndarray:
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    top = np.float32(np.iinfo(a.dtype).max)
    grey = channels <= 2
    colour = a if channels == 1 else a[..., 0] if grey else a[..., :3]
    rgb = colour.astype(np.float32) / top
    if grey:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    rgb = np.ascontiguousarray(rgb)
    alpha = a[..., -1] if channels in (2, 4) else None
    # A constant alpha (an opaque RGBA, say) stays exactly constant.
    alpha_flat = alpha is not None and bool((alpha == alpha.flat[0]).all())
    passes = 2 if alpha is not None and alpha_mode == "model" and not alpha_flat else 1
    total = passes * h * w
    report = progress or (lambda done, total: None)
    report(0, total)

    out = _run(model, rgb, lambda f: report(int(f * h * w), total))
    out_h, out_w = out.shape[:2]
    report(h * w, total)
    size = (out_h, out_w)
    if outscale is not None:
        size = (max(1, int(h * outscale)), max(1, int(w * outscale)))
    if size != (out_h, out_w):
        out = np.stack([_resize(out[..., c], size, "lanczos") for c in range(3)], axis=2)
    if grey:
        out = out @ _LUMA

    result_alpha = None
    if alpha is not None:
        a_float = alpha.astype(np.float32) / top
        if alpha_flat:
            result_alpha = np.full(size, a_float.flat[0], np.float32)
        elif alpha_mode == "model":
            big = _run(model, np.ascontiguousarray(np.repeat(a_float[:, :, None], 3, axis=2)),
                       lambda f: report(h * w + int(f * h * w), total))
            result_alpha = big.mean(axis=2)
            if size != result_alpha.shape:
                result_alpha = _resize(result_alpha, size, "lanczos")
        else:
            result_alpha = _resize(a_float, size, "bicubic")

    if result_alpha is None:
        merged = out
    elif grey:
        merged = np.stack([out, result_alpha], axis=2)
    else:
        merged = np.concatenate([out, result_alpha[:, :, None]], axis=2)
    # In place: merged is this function's own (the model's output, or a stack).
    np.multiply(merged, top, out=merged)
    np.clip(merged, 0, top, out=merged)
    result = np.rint(merged, out=merged).astype(a.dtype)
    del merged, out
    report(total, total)
    return result


def _run(model: Any, rgb: np.ndarray, fraction: Callable[[float], None]) -> np.ndarray:
    """model.process, with its result checked against the contract; a model
    with `reports_progress` also reports the fraction of its pass done."""
    h, w = rgb.shape[:2]
    s = model.scale
    if getattr(model, "reports_progress", False):
        out = model.process(rgb, progress=fraction)
    else:
        out = model.process(rgb)
    if not isinstance(out, np.ndarray) or out.shape != (s * h, s * w, 3):
        got = out.shape if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"model.process gave {got} for a {h}x{w} input; expected "
                         f"({s * h}, {s * w}, 3) at scale {s}")
    out = out.astype(np.float32, copy=False)
    # A network whose output is NaN or huge (NaN weights loaded with
    # allow_nonfinite, or activations that overflow) still gives a defined
    # image, without overflow warnings below: NaN -> 0, the rest bounded far
    # outside 0..1 (the final clip to the pixel range is unchanged).
    out = np.clip(out, -_FAR, _FAR)
    np.nan_to_num(out, copy=False, nan=0.0)
    return out


_FAR = np.float32(1e6)


def _resize(plane: np.ndarray, size: tuple[int, int], kind: str) -> np.ndarray:
    """Resizes one float32 plane to size (h, w) at full precision (PIL "F")."""
    from PIL import Image

    resample = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}[kind]
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(img.resize((size[1], size[0]), resample), dtype=np.float32)
