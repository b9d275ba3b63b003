"""sparsr against the PyTorch reference of a network, on one image of any size.

    python tools/compare_torch.py ../shared/models/rfdn_aim_x4.pth --size 360 640
    python tools/compare_torch.py ../shared/models/carn_m.pth --scale 3

Converts the weights as `sparsr convert` does, runs the reference network of
tests/archs (SMSR: tests/smsr_reference.py with its masks) and sparsr's graph
on the same input planes -- a centre crop of a Set14 image (or --image) --
and prints the largest difference of the outputs on the 0..255 scale.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from archs.references import reference_module  # noqa: E402

import sparsr  # noqa: E402
from sparsr.importers import convert, pth  # noqa: E402
sys.path.insert(0, str(REPO / "tools"))
from sparsity_common import shared_root  # noqa: E402


def crop(path: Path, h: int, w: int) -> np.ndarray:
    """An (h, w, 3) uint8 centre crop, the image tiled first when it is smaller."""
    from PIL import Image
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    reps = (-(-h // a.shape[0]), -(-w // a.shape[1]), 1)
    a = np.tile(a, reps) if reps != (1, 1, 1) else a
    y, x = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
    return np.ascontiguousarray(a[y:y + h, x:x + w])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="PyTorch weights of a known architecture")
    p.add_argument("--scale", type=int)
    p.add_argument("--size", type=int, nargs=2, default=(360, 640), metavar=("H", "W"))
    p.add_argument("--image", type=Path, help="default: Set14 monarch")
    args = p.parse_args(argv)
    import torch

    image = args.image or shared_root() / "data" / "Set14" / "HR" / "monarch.png"
    rgb = crop(image, *args.size)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.pt"
        convert(args.model, out, scale=args.scale)
        model = sparsr.load(out)
    sd = pth.read_state_dict(args.model)
    arch, hyper = pth.detect(sd)
    scale = model.scale
    t0 = time.perf_counter()
    if arch.NAME == "smsr":
        import smsr_reference
        want, _ = smsr_reference.reference_forward(
            smsr_reference.load_official_state_dict(args.model), rgb, mode="mask")
        t1 = time.perf_counter()
        got = model.forward(rgb, "mask").output
        peak = 1.0
    else:
        io = model.io
        x = rgb.astype(np.float32) * (io.range / 255.0)
        if io.color != "rgb":       # the network's own single plane: luma of the crop
            x = x @ np.array([0.299, 0.587, 0.114], np.float32)
            x = x[:, :, None]
        planes = np.ascontiguousarray(x.transpose(2, 0, 1))
        net = reference_module(arch.NAME, sd, scale)
        with torch.no_grad():
            want = net(torch.from_numpy(planes)[None])[0].numpy()
        t1 = time.perf_counter()
        got = model.run_network(planes)
        peak = 255.0 / io.range
    t2 = time.perf_counter()
    diff = float(np.abs(got.astype(np.float64) - want).max()) * peak
    print(f"{args.model.name}: {arch.NAME} x{scale}, input {args.size[1]}x{args.size[0]}: "
          f"max |sparsr - PyTorch| = {diff:.2e} on 0..255 "
          f"(PyTorch {t1 - t0:.2f} s, sparsr {t2 - t1:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
