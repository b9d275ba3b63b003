"""Image files and arrays: what the engine reads, and what it writes back.

Pillow holds 8-bit images and 16-bit greyscale, but decodes 16-bit colour
(PNG, TIFF) to 8 bits and cannot encode it. `read_file` gets those 16 bits
back (numpy uint16 arrays), and `write` encodes 16-bit PNG and every TIFF
itself, so a 16-bit image stays 16-bit from file to file.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

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


# ---------------------------------------------------------------------------
# Files

ORIENTATION = 0x0112  # EXIF/TIFF tag

# Formats `write` produces, by the name users type (--format) and file extension.
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF",
           "tiff": "TIFF"}
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tiff"}
# Formats that keep an alpha channel, and 16 bits per sample.
ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
DEEP_FORMATS = {"PNG", "TIFF"}


@dataclass
class ImageFile:
    """An image read from a file, upright, with the metadata to copy to its output."""
    pixels: Any                  # PIL image, or numpy uint16 (H, W, 2|3|4) for 16-bit colour
    icc_profile: bytes | None
    exif: bytes | None           # orientation reset to 1 (the pixels are upright)
    format: str                  # PIL's name of the file format, e.g. "PNG"


def format_of(path: str) -> str | None:
    """The format `write` uses for a file name, from its extension: PNG, JPEG,
    WEBP, TIFF, or another one Pillow writes (8 bits only); None if unknown."""
    from PIL import Image

    ext = os.path.splitext(path)[1].lower()
    if ext[1:] in FORMATS:
        return FORMATS[ext[1:]]
    fmt = Image.registered_extensions().get(ext)
    return fmt if fmt in Image.SAVE else None


def read(path: str) -> Any:
    """Opens an image file fully (so decoding errors surface here), upright."""
    return read_file(path).pixels


def read_file(path: str) -> ImageFile:
    """Reads an image file fully, applies its EXIF orientation and keeps its
    ICC profile and EXIF. Raises ImageError naming the file and the problem."""
    from PIL import Image

    with _decoding(path):
        with Image.open(path) as im:
            fmt = im.format
            pixels = _read_deep_colour(path, im)   # before anything loads im (and drops its tiles)
            if pixels is None:
                im.load()
                pixels = im.copy()
            icc = im.info.get("icc_profile") or None
            exif = im.getexif()
    orientation = exif.get(ORIENTATION, 1)
    pixels = _upright(pixels, orientation)
    return ImageFile(pixels, icc, _exif_bytes(exif), fmt)


def probe(path: str) -> tuple[tuple[int, int], bool] | None:
    """((width, height), has alpha) from a file's header without decoding it;
    None when the header cannot be read (read_file then says why)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            size = im.size
            if im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):
                size = size[::-1]
            return size, has_alpha(im)
    except Exception:  # noqa: BLE001 - any failure is reported by read_file
        return None


def has_alpha(im: Any) -> bool:
    """Whether a PIL image has transparency (an alpha channel or a colour key)."""
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


class _decoding:
    """Turns what Pillow raises on a bad file into one ImageError naming it."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        from PIL import Image, UnidentifiedImageError

        if e is None or not isinstance(e, Exception) or isinstance(e, ImageError):
            return False
        path = self.path
        if isinstance(e, FileNotFoundError):
            raise ImageError(f"{path}: no such file") from None
        if isinstance(e, IsADirectoryError):
            raise ImageError(f"{path}: is a directory, not an image") from None
        if isinstance(e, PermissionError):
            raise ImageError(f"{path}: permission denied") from None
        if isinstance(e, UnidentifiedImageError):
            raise ImageError(f"{path}: not an image file PIL can read") from None
        if isinstance(e, Image.DecompressionBombError):
            raise ImageError(f"{path}: {e}") from None
        if isinstance(e, (OSError, SyntaxError, ValueError, struct.error, zlib.error,
                          EOFError, IndexError)):
            raise ImageError(f"{path}: cannot decode the image ({e})") from None
        return False


# Pillow's rawmodes of 16-bit colour: the data's byte order is the suffix.
_DEEP_RAWMODE = re.compile(r"(RGB|RGBA|RGBX|LA);16([LBN])")


def _read_deep_colour(path: str, im: Any) -> np.ndarray | None:
    """The 16-bit samples of a 16-bit colour image, or None for any other.

    Pillow unpacks each 16-bit sample to its high byte. Decoding the file
    again with the unpacker of the other byte order keeps the low byte
    instead; the two give the 16 bits. Filtering and decompression (PNG,
    libtiff) run as usual, since the unpacker's bits per pixel are the same.
    """
    from PIL import Image

    rawmodes = {_tile_rawmode(t) for t in im.tile}
    if len(rawmodes) != 1:
        return None
    match = _DEEP_RAWMODE.fullmatch(rawmodes.pop() or "")
    if match is None:
        return None
    base, order = match.groups()
    little = order == "L" or (order == "N" and sys.byteorder == "little")

    def decode(rawmode: str) -> np.ndarray:
        with Image.open(path) as again:
            again.tile = [_with_rawmode(t, rawmode) for t in again.tile]
            again.load()
            return np.asarray(again)

    if base == "LA":
        # No unpacker keeps the low byte of LA;16B; RGBA over the same 32 bits
        # gives the raw bytes: grey high, grey low, alpha high, alpha low.
        b = decode("RGBA").astype(np.uint16)
        g, a = b[..., 0] << 8 | b[..., 1], b[..., 2] << 8 | b[..., 3]
        if not little:
            return np.stack([g, a], axis=2)
        return np.stack([b[..., 1] << 8 | b[..., 0], b[..., 3] << 8 | b[..., 2]], axis=2)
    # "X;16L" unpacks byte 1 of each sample, "X;16B" byte 0.
    high = decode(f"{base};16{'L' if little else 'B'}").astype(np.uint16)
    low = decode(f"{base};16{'B' if little else 'L'}").astype(np.uint16)
    return np.ascontiguousarray(high << 8 | low)


def _tile_rawmode(tile) -> str | None:
    args = tile.args
    if isinstance(args, tuple):
        return args[0] if args and isinstance(args[0], str) else None
    return args if isinstance(args, str) else None


def _with_rawmode(tile, rawmode: str):
    args = tile.args
    args = (rawmode,) + tuple(args[1:]) if isinstance(args, tuple) else rawmode
    return tile._replace(args=args)


def _upright(pixels: Any, orientation: int) -> Any:
    """Applies an EXIF orientation (1..8) as PIL.ImageOps.exif_transpose does."""
    if orientation not in range(2, 9):
        return pixels
    if isinstance(pixels, np.ndarray):
        return np.ascontiguousarray(orient_array(pixels, orientation))
    from PIL import Image

    T = Image.Transpose
    method = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
              6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90}[orientation]
    return pixels.transpose(method)


def orient_array(a: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W[, C]) array turned upright from EXIF orientation 1..8."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(a, 1)
    return a


# TIFF tags that describe a file's own pixel data: they appear in a TIFF's
# EXIF (its first directory) and must not be copied into another file.
_STRUCTURE_TAGS = {254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281,
                   284, 292, 293, 317, 320, 322, 323, 324, 325, 338, 339, 340, 341, 513, 514,
                   529, 530, 532, 34675, 37724}


def _exif_bytes(exif: Any) -> bytes | None:
    """EXIF to copy to the output: the pixels are upright, so orientation 1."""
    for tag in list(exif):
        if tag in _STRUCTURE_TAGS:
            del exif[tag]
    if not len(exif):
        return None
    if ORIENTATION in exif:
        exif[ORIENTATION] = 1
    try:
        return exif.tobytes()
    except Exception:  # noqa: BLE001 - unwritable EXIF is dropped, the image is not
        return None


# Deflate level of PNG and TIFF output. On x4 upscales of Set14 images and a
# 7680x4320 upscaled frame, level 4 wrote files 0-11 % larger than level 6
# (Pillow's default) in 2.1-2.6x less time (the frame: 7.9 against 20.2 s).
DEFAULT_COMPRESSION = 4


def write(f: BinaryIO, pixels: Any, fmt: str, *, icc_profile: bytes | None = None,
          exif: bytes | None = None, quality: int | None = None,
          compression: int | None = None) -> None:
    """Encodes pixels (a PIL image, or a numpy uint8/uint16 (H, W[, C]) array)
    as fmt ("PNG", "JPEG", "WEBP", "TIFF" or another format Pillow writes).
    quality: JPEG/WebP 1..100 (default 95); compression: PNG/TIFF deflate
    level 0..9 (default DEFAULT_COMPRESSION)."""
    from PIL import Image

    level = DEFAULT_COMPRESSION if compression is None else compression
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 9:
        raise ValueError(f"compression must be a deflate level 0..9, got {compression!r}")

    img = pixels if isinstance(pixels, Image.Image) else None
    array = _samples(img) if img is not None else pixels
    if array is not None:
        if array.dtype == np.uint16 and fmt not in DEEP_FORMATS:
            array, img = _to_8bit(array), None    # JPEG, WebP: 8 bits is all they hold
        if fmt == "TIFF":
            return _write_tiff(f, array, img is not None and img.mode == "CMYK", icc_profile,
                               exif, level)
        if array.dtype == np.uint16:
            return _write_png16(f, array, icc_profile, exif, level)
        if img is None:
            img = Image.fromarray(np.ascontiguousarray(array))
    if fmt == "PNG" and img.mode in ("CMYK", "YCbCr"):
        img, icc_profile = img.convert("RGB"), None   # a CMYK profile does not describe RGB
    if fmt in ("JPEG", "WEBP") and img.mode not in ("RGB", "RGBA", "L", "CMYK"):
        img = img.convert("RGBA" if has_alpha(img) and fmt == "WEBP" else "RGB")
    options: dict[str, Any] = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if exif:
        options["exif"] = exif
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = 95 if quality is None else quality
    if fmt == "PNG":
        options["compress_level"] = level
    img.save(f, format=fmt, **options)


def _samples(img: Any) -> np.ndarray | None:
    """The samples of a PIL image as numpy, for the encoders written here
    (TIFF, 16-bit PNG); None for modes left to Pillow."""
    if img.mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return np.asarray(img)
    if img.mode.startswith("I;16") or img.mode == "I":
        return np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
    return None


def _to_8bit(a: np.ndarray) -> np.ndarray:
    return np.rint(a.astype(np.float32) * (255 / 65535)).astype(np.uint8)


def _write_png16(f: BinaryIO, a: np.ndarray, icc_profile: bytes | None,
                 exif: bytes | None, level: int = DEFAULT_COMPRESSION) -> None:
    """A 16-bit PNG (grey, grey+alpha, RGB, RGBA) with libpng's filter choice:
    per row, the filter whose output has the least sum of absolute values.
    Filtered and compressed in bands of rows: a few bands' memory, and Ctrl-C
    is seen between bands."""
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    row_bytes = w * channels * 2
    f.write(b"\x89PNG\r\n\x1a\n")
    f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)))
    if icc_profile:
        f.write(_png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(icc_profile)))
    if exif:
        f.write(_png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif))
    deflate = zlib.compressobj(level)
    pending = b""
    band = max(1, (4 << 20) // max(1, row_bytes))
    previous = np.zeros((1, row_bytes), np.uint8)
    for top in range(0, h, band):
        raw = np.ascontiguousarray(a[top:top + band], dtype=">u2").view(np.uint8)
        raw = raw.reshape(-1, row_bytes)
        pending += deflate.compress(_png_filter(raw, previous, bpp=channels * 2).tobytes())
        previous = raw[-1:]
        if len(pending) >= 1 << 20:
            f.write(_png_chunk(b"IDAT", pending))
            pending = b""
    f.write(_png_chunk(b"IDAT", pending + deflate.flush()))
    f.write(_png_chunk(b"IEND", b""))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_filter(raw: np.ndarray, previous: np.ndarray, bpp: int) -> np.ndarray:
    """Rows of raw bytes (after the row `previous`, zeros above the image) ->
    rows of (filter type, filtered bytes)."""
    x = raw.astype(np.int16)
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    up = np.concatenate([previous.astype(np.int16), x[:-1]])
    up_left = np.zeros_like(x)
    up_left[:, bpp:] = up[:, :-bpp]
    p = left + up - up_left
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
    candidates = np.stack([x, x - left, x - up, x - (left + up) // 2, x - paeth]).astype(np.uint8)
    # Sum of the bytes read as signed: small residuals compress best.
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)
    best = cost.argmin(axis=0)
    rows = candidates[best, np.arange(raw.shape[0])]
    return np.concatenate([best.astype(np.uint8)[:, None], rows], axis=1)


def _write_tiff(f: BinaryIO, a: np.ndarray, cmyk: bool, icc_profile: bytes | None,
                exif: bytes | None, level: int = DEFAULT_COMPRESSION) -> None:
    """A deflate-compressed TIFF of 8 or 16 bits per sample, with the ICC
    profile and EXIF (its tags in the image's directory, as TIFF keeps them)."""
    from PIL import Image, TiffImagePlugin

    if a.ndim == 3 and a.shape[2] == 2 and a.dtype == np.uint16:
        # Pillow (and so sparsr) cannot open 16-bit grey + alpha TIFFs: RGBA it is.
        a = a[..., [0, 0, 0, 1]]
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    bits = a.dtype.itemsize * 8
    # Compressed in bands of rows, so that Ctrl-C is seen between them.
    deflate = zlib.compressobj(level)
    band = max(1, (4 << 20) // max(1, a[:1].nbytes))
    parts = [deflate.compress(np.ascontiguousarray(a[top:top + band],
                                                   dtype=a.dtype.newbyteorder("<")))
             for top in range(0, h, band)]
    data = b"".join(parts) + deflate.flush()
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    if exif:
        meta = Image.Exif()
        meta.load(exif)
        for tag, value in meta.items():
            if tag not in _STRUCTURE_TAGS:
                ifd[tag] = value
        for sub in (0x8769, 0x8825):   # the Exif and GPS directories
            if sub in meta:
                ifd[sub] = dict(meta.get_ifd(sub))
    ifd[256] = w
    ifd[257] = h
    ifd[258] = (bits,) * channels
    ifd[259] = 8                                       # Adobe deflate
    ifd[262] = 5 if cmyk else (2 if channels >= 3 else 1)
    ifd[273] = (0,)        # Pillow places the strip after the directory and moves this offset
    ifd[277] = channels
    ifd[278] = h
    ifd[279] = (len(data),)
    ifd[284] = 1
    if channels in (2, 4) and not cmyk:
        ifd[338] = (2,)                                # unassociated alpha
    if icc_profile:
        ifd[34675] = icc_profile
    f.write(b"II*\0" + struct.pack("<I", 8) + ifd.tobytes(8) + data)
