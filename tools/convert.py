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


def _count(prefix_re: str, keys) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(prefix_re, k))}
    if not found:
        return 0
    if found != set(range(max(found) + 1)):
        raise CheckpointError(f"non-contiguous blocks matching {prefix_re}: {sorted(found)}")
    return max(found) + 1


def detect_smsr(sd: dict[str, np.ndarray]) -> dict | None:
    """SMSR: spatial-mask branches and channel masks inside every body block."""
    keys = sd.keys()
    if not any(re.match(r"body\.\d+\.body\.ch_mask$", k) for k in keys):
        return None
    n_blocks = _count(r"body\.(\d+)\.body\.ch_mask$", keys)
    n_layers = int(sd["body.0.body.ch_mask"].shape[2])
    n_feats = int(sd["head.0.weight"].shape[0])
    tail_out = int(sd["tail.0.weight"].shape[0])
    scale = int(round((tail_out / 3) ** 0.5))
    if 3 * scale * scale != tail_out:
        raise CheckpointError(f"tail.0.weight has {tail_out} outputs, not 3*scale^2")
    return {"architecture": "smsr", "scale": scale, "n_feats": n_feats, "n_blocks": n_blocks,
            "n_layers": n_layers}


DETECTORS = [detect_smsr]


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    sd = read_state_dict(src)
    for detect in DETECTORS:
        model = detect(sd)
        if model is not None:
            break
    else:
        sample = ", ".join(list(sd)[:4])
        raise CheckpointError(f"{src}: unrecognised architecture (keys: {sample}, ...); "
                              "supported: SMSR")
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()
               if not k.endswith("num_batches_tracked")}
    # Validate now, with the runtime's own checks, rather than at load time.
    from sparsr.smsr import expected_shapes
    for key, shape in expected_shapes(model["scale"], model["n_feats"], model["n_blocks"],
                                      model["n_layers"]).items():
        if key not in tensors:
            raise CheckpointError(f"{src}: missing {key!r}")
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(f"{src}: {key!r} has shape {tensors[key].shape}, expected {shape}")
    model["layers"] = {}
    checkpoint.save(dst, model, tensors, {"source": Path(src).name, "tool": "tools/convert.py"})
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="PyTorch weights (.pt/.pth state_dict)")
    p.add_argument("-o", "--output", required=True, help="sparsr checkpoint to write")
    args = p.parse_args(argv)
    try:
        model = convert(args.source, args.output)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {model['architecture']} x{model['scale']}, "
          f"{model['n_blocks']} blocks of {model['n_layers']} layers, {model['n_feats']} features")
    return 0


if __name__ == "__main__":
    sys.exit(main())
