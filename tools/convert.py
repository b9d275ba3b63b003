"""Convert PyTorch super-resolution weights into a sparsr checkpoint.

    python tools/convert.py ../shared/models/smsr_x2_official.pt -o smsr_x2.pt

The architecture is recognised from the state_dict's keys and its
hyper-parameters are read off tensor shapes. The PyTorch file is read with
torch.load(weights_only=True), which refuses anything but tensors and plain
containers, so no code from it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

from sparsr import checkpoint
from sparsr.errors import CheckpointError


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state_dict as float32/int numpy arrays, 'module.' prefixes removed."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # torch raises many kinds for foreign or hostile files
        raise CheckpointError(f"{path}: not a loadable PyTorch weights file ({e})") from None
    for key in ("state_dict", "model", "params"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: expected a state_dict, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not hasattr(value, "detach"):
            continue
        key = re.sub(r"^module\.", "", key)
        out[key] = value.detach().cpu().numpy()
    return out


def convert(src: str | os.PathLike, dst: str | os.PathLike, scale: int | None = None) -> dict:
    """Reads PyTorch weights, recognises the architecture, writes a sparsr graph checkpoint."""
    from sparsr.importers.archs import smsr

    sd = read_state_dict(src)
    hyper = smsr.detect(sd)
    if hyper is None:
        sample = ", ".join(list(sd)[:4])
        raise CheckpointError(f"{src}: unrecognised architecture (keys: {sample}, ...); "
                              "supported: SMSR")
    scale = hyper["scale"] if scale is None else scale
    if scale not in smsr.scales(hyper):
        raise CheckpointError(f"{src}: the model has no x{scale} (it has "
                              f"{', '.join(f'x{s}' for s in smsr.scales(hyper))})")
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    model, tensors = smsr.build(sd, hyper, scale)
    # Validate now, with the runtime's own checks, rather than at load time.
    from sparsr.model import Model
    Model(model, dict(tensors), {}, str(dst))
    checkpoint.save(dst, model, tensors, {"source": Path(src).name, "tool": "tools/convert.py"})
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="PyTorch weights (.pt/.pth state_dict)")
    p.add_argument("-o", "--output", required=True, help="sparsr checkpoint to write")
    p.add_argument("--scale", type=int, help="the scale to take from a multi-scale model")
    args = p.parse_args(argv)
    try:
        model = convert(args.source, args.output, args.scale)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {model['architecture']} x{model['io']['scale']}, "
          f"{len(model['graph']['nodes'])} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
