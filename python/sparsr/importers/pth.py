"""PyTorch weights -> sparsr checkpoint, by recognising the architecture.

    from sparsr.importers import pth
    pth.convert("carn_m.pth", "carn_m_x4.pt", scale=4)

The file is read with torch.load(weights_only=True), which refuses anything but
tensors and plain containers, so no code from it runs (zip and legacy pickles
alike). The architecture is recognised from the state_dict's keys and its
hyper-parameters read off tensor shapes (archs/); the network is then written
as a graph of ops over the state_dict's own tensors. Only reading needs torch,
and it is imported here, when called.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from .. import checkpoint
from ..errors import CheckpointError
from ..model import Model
from . import quiet_nans
from .archs import ARCHITECTURES

# Containers training frameworks wrap a state_dict in, most preferred first
# (BasicSR saves both "params" and the better "params_ema").
CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model")

ONNX_HINT = ("export the network to ONNX instead: torch.onnx.export(model, x, \"m.onnx\", "
             "opset_version=17, input_names=[\"in\"], output_names=[\"out\"], "
             "dynamic_axes={\"in\": {2: \"h\", 3: \"w\"}}) then "
             "python tools/convert.py m.onnx -o m.pt")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state_dict as numpy arrays (floating tensors as float32), unwrapped
    from training containers, 'module.' prefixes removed, non-tensors and batch
    norm counters skipped."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file" if not path.exists()
                              else f"{path}: not a file")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it then refuses anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for foreign or hostile files
        raise CheckpointError(f"{path}: {_why_refused(e)}") from None
    obj = _unwrap(obj, path)
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue
        if key.endswith("num_batches_tracked"):
            continue
        while key.startswith("module."):   # nn.DataParallel, possibly nested
            key = key[len("module."):]
        if key in out:
            raise CheckpointError(f"{path}: key {key!r} appears both with and without the "
                                  "'module.' prefix")
        out[key] = _as_numpy(value, key, path)
    if not out:
        raise CheckpointError(f"{path}: the state_dict holds no tensors")
    return out


def _as_numpy(value: Any, key: str, path: Path) -> np.ndarray:
    """A plain tensor as a numpy array (floating ones as float32); a sparse,
    quantized, complex or meta tensor is refused naming its key."""
    import torch

    where = f"{path}: tensor {key!r:.80}"
    if value.layout != torch.strided:
        raise CheckpointError(f"{where} is a {str(value.layout).removeprefix('torch.')} tensor; "
                              "sparsr reads dense (strided) weights")
    if value.is_quantized or value.is_complex() or value.device.type == "meta":
        kind = ("quantized" if value.is_quantized else "complex" if value.is_complex()
                else "meta (no data)")
        raise CheckpointError(f"{where} is a {kind} tensor ({value.dtype}); sparsr reads real "
                              "floating or integer weights")
    value = value.detach().cpu()
    if value.is_floating_point():
        value = value.float()
    elif value.dtype not in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32,
                             torch.int64):
        # uint16/32/64 and the like: numpy has them, torch cannot always
        # hand them over; a weight never is one.
        raise CheckpointError(f"{where} has dtype {value.dtype}, not a weight type")
    try:
        return quiet_nans(value.numpy())
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(f"{where} cannot be read as an array ({e})") from None


def _why_refused(e: Exception) -> str:
    """torch.load's long message, cut to what went wrong."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    detail = m.group(1).strip() if m else (text.strip().splitlines() or [type(e).__name__])[0]
    g = re.match(r"Unsupported global: GLOBAL (\S+)", detail)
    if g:
        return (f"holds Python objects besides tensors ({g.group(1)}: a whole pickled "
                "model?), which sparsr does not unpickle; save model.state_dict() instead")
    if isinstance(e, EOFError):
        return "empty or truncated file"
    detail = detail.split(". ")[0]        # torch's advice after the first sentence is not ours
    return f"not a PyTorch weights file (torch.load(weights_only=True): {detail[:160]})"


def _unwrap(obj: Any, path: Path) -> Mapping:
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in CONTAINER_KEYS
                      if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            return obj
        obj = inner
    raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors), got "
                          f"{type(obj).__name__}")


def detect(sd: Mapping[str, Any]) -> tuple[ModuleType, dict]:
    """(architecture module, hyper-parameters) of a state_dict; CheckpointError
    when no architecture recognises it, or the one that does finds it mangled."""
    for arch in ARCHITECTURES:
        hyper = arch.detect(sd)
        if hyper is not None:
            return arch, hyper
    raise CheckpointError(f"unrecognised architecture: {describe(sd)}. sparsr reads "
                          f"{', '.join(a.NAME for a in ARCHITECTURES)} from PyTorch weights; "
                          f"for any other network, {ONNX_HINT}")


def describe(sd: Mapping[str, Any], n: int = 5) -> str:
    """A few keys and shapes, for an error message."""
    items = [f"{k} {tuple(v.shape)}" for k, v in list(sd.items())[:n]]
    more = f", ... ({len(sd)} tensors)" if len(sd) > n else ""
    return "keys " + ", ".join(items) + more


def choose_scale(arch: ModuleType, hyper: dict, scale: int | None, src: str | os.PathLike) -> int:
    """The requested scale if the weights have it; else the only one they have;
    else (when the weights do not decide, e.g. FSRCNN's stride) one in the file name."""
    available = arch.scales(hyper)
    have = ", ".join(f"x{s}" for s in available)
    if scale is not None:
        if scale not in available:
            raise CheckpointError(f"{arch.NAME} weights have no x{scale} (they have {have})")
        return int(scale)
    if len(available) == 1:
        return available[0]
    hinted = scale_in_file_name(src)
    if hinted in available:
        return hinted
    raise CheckpointError(f"{arch.NAME} weights can run at {have}: choose one (--scale, or "
                          "scale= in Python)")


def scale_in_file_name(path: str | os.PathLike) -> int | None:
    """2 for 'fsrcnn_x2_y.pth' or 'edsr_baseline_x2-1bc95232.pt'."""
    m = re.search(r"(?:^|[_\-.])x(\d{1,2})(?=$|[_\-.])", Path(path).stem.lower())
    return int(m.group(1)) if m else None


def convert(src: str | os.PathLike, dst: str | os.PathLike, scale: int | None = None) -> dict:
    """Reads PyTorch weights, recognises the network and writes a sparsr
    checkpoint; returns the model description written (architecture, io with
    the scale, hyper, graph)."""
    sd = read_state_dict(src)
    try:
        arch, hyper = detect(sd)
        chosen = choose_scale(arch, hyper, scale, src)
        model, tensors = arch.build(sd, hyper, chosen)
        # Validate now, with the runtime's own checks (ops, attributes, tensor
        # shapes), rather than when the checkpoint is loaded.
        Model(model, dict(tensors), {}, os.fspath(dst))
    except CheckpointError as e:
        raise CheckpointError(f"{src}: {e}") from None
    # Where the scale came from: the weights, the caller, or the file name (FSRCNN).
    scale_from = ("argument" if scale is not None else
                  "weights" if len(arch.scales(hyper)) == 1 else "file name")
    metadata = {"source": Path(src).name, "tool": "sparsr.importers.pth",
                "architecture": arch.NAME, "scales_in_source": arch.scales(hyper),
                "scale_from": scale_from}
    checkpoint.save(dst, model, tensors, metadata)
    return model
