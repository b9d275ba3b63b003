"""What one fuzzed input is run through.

- checkpoint: ``sparsr.load`` then a small ``upscale``;
- onnx and pth: ``sparsr.importers.convert`` (the ``sparsr convert`` entry point),
  then ``sparsr.load`` of the written checkpoint and a small ``upscale``.

An input is *refused* when sparsr raises one of its own errors
(``sparsr.errors.SparsrError``: CheckpointError, ImageError, ...), *ok* when
it runs; any other exception, a warning (the suite turns warnings into
errors), or a hostile pickle whose code ran, is a finding. The image size, the
run mode and ``allow_nonfinite`` are derived from the input's bytes, so a
replay of a saved input does exactly what the fuzzer did.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path

import numpy as np

from .mutators import CANARY_ENV

TARGETS = ("checkpoint", "onnx", "pth")
# File names: the .pth one carries a scale hint, as a user's file name may, so
# that weights of several scales (CARN-M) choose x2 as they would from it.
FILE_NAMES = {"checkpoint": "input.pt", "onnx": "input.onnx", "pth": "input_x2.pth"}
EXTENSIONS = {"checkpoint": ".pt", "onnx": ".onnx", "pth": ".pth"}


class Finding(Exception):
    """An input made sparsr misbehave (other than by crashing or hanging)."""


def run(target: str, path: str | os.PathLike, workdir: str | os.PathLike) -> str:
    """Runs one input file; returns "ok" or "refused"; raises Finding (the
    original exception chained) for anything else."""
    from sparsr.errors import SparsrError

    path = Path(path)
    data = path.read_bytes()
    h = zlib.crc32(data)
    os.environ.pop(CANARY_ENV, None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _run(target, path, Path(workdir), h)
        outcome = "ok"
    except SparsrError:
        outcome = "refused"
    except Finding:
        raise
    except Exception as e:
        raise Finding(f"{type(e).__name__}: {e}"[:2000]) from e
    finally:
        ran = os.environ.pop(CANARY_ENV, None)
    if ran:
        raise Finding("code from a pickle ran")
    return outcome


def _run(target: str, path: Path, workdir: Path, h: int) -> None:
    import sparsr

    if target == "checkpoint":
        model_path = path
    elif target in ("onnx", "pth"):
        from sparsr.importers import convert
        model_path = workdir / "converted.pt"
        if model_path.exists():
            model_path.unlink()
        convert(path, model_path)
    else:
        raise ValueError(f"unknown target {target!r}")
    model = sparsr.load(model_path, allow_nonfinite=(h >> 8) % 5 == 0)
    rng = np.random.default_rng(h)
    height, width = 1 + h % 13, 1 + (h >> 4) % 11
    channels = (h >> 12) % 3
    shape = {0: (height, width, 3), 1: (height, width), 2: (height, width, 4)}[channels]
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    out = model.upscale(img, mode="dense" if (h >> 16) % 4 == 0 else "mask")
    if out.shape[:2] != (height * model.scale, width * model.scale):
        raise Finding(f"upscale gave {out.shape} for {shape} at x{model.scale}")
