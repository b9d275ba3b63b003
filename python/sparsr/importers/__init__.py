"""Importers: PyTorch state_dicts (by architecture) and ONNX files -> sparsr graphs.

Only ``convert`` needs PyTorch (to read a .pth) or onnx (to read an ONNX file);
both are imported when called, never by ``import sparsr``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def is_onnx(path: str | os.PathLike) -> bool:
    """An ONNX file by its name, or by its protobuf start (field 1, ir_version)."""
    if Path(path).suffix.lower() == ".onnx":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head[:1] == b"\x08" and Path(path).suffix.lower() not in (".pt", ".pth", ".ckpt")


# (unsigned view, exponent bits, quiet bit) of each IEEE float type
_NAN_BITS = {np.dtype(np.float32): (np.uint32, 0x7F800000, 1 << 22),
             np.dtype(np.float64): (np.uint64, 0x7FF0000000000000, 1 << 51)}


def quiet_nans(a: np.ndarray) -> np.ndarray:
    """`a` with every signalling NaN made quiet (same payload, quiet bit set).

    Weight files may hold them, and numpy raises "invalid value" on any cast or
    operation that touches one: a warning far from the file that caused it.
    The finiteness checks still see them as NaN."""
    if a.dtype not in _NAN_BITS or a.size == 0:
        return a
    ints, exponent, quiet = _NAN_BITS[a.dtype]
    bits = np.ascontiguousarray(a).view(ints)
    payload = bits & ints(quiet - 1)
    signalling = ((bits & ints(exponent)) == ints(exponent)) & ((bits & ints(quiet)) == 0) \
        & (payload != 0)
    if not signalling.any():
        return a
    fixed = bits.copy()
    fixed[signalling] |= ints(quiet)
    return fixed.view(a.dtype).reshape(a.shape)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, scale: int | None = None,
            input_range: float | None = None, color: str | None = None) -> dict:
    """PyTorch weights (.pth/.pt, architecture recognised from the keys) or an
    ONNX file -> a sparsr checkpoint at dst. Returns the model description."""
    from ..errors import SparsrError

    try:
        if is_onnx(src):
            from .onnx_import import convert_onnx
            return convert_onnx(src, dst, scale=scale, input_range=input_range, color=color)
        if input_range is not None or color is not None:
            raise SparsrError("--range and --color are for ONNX files; PyTorch weights of a "
                              "known architecture carry their own")
        from .pth import convert as convert_pth
        return convert_pth(src, dst, scale=scale)
    except ModuleNotFoundError as e:
        if e.name in ("torch", "onnx"):
            raise SparsrError(f"converting {Path(src).name} needs the {e.name} package: "
                              'pip install "sparsr[convert]"') from None
        raise
