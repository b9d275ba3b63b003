"""int8 against f32 (and bf16), in the same process, interleaved rounds, medians.

kernels: SMSR's dense layer shapes on a 360x640 feature: the f32, bf16 and
int8 kernels of the active level.

model: SMSR x2 at 640x360 -> 1280x720: a sparsr checkpoint loaded with
precision="f32", against an int8 checkpoint (tools/quantize.py) loaded with
precision="auto" (its per-layer choice) and, with --all, "int8" (every
calibrated layer); with --bf16 also the f32 checkpoint in bf16.

    python benchmarks/bench_int8.py kernels [--threads 2] [--rounds 7]
    python benchmarks/bench_int8.py model smsr_x2.pt smsr_x2_int8.pt [--mode mask|dense]
        [--all] [--bf16] [--threads 2] [--rounds 5] [--image IMAGE]   (resized to 640x360)
"""

from __future__ import annotations

import argparse

import numpy as np

import sparsr
from bench_bf16 import SHAPES, H, W, _load, _medians, shared_root
from sparsr import _core


def kernels(args) -> None:
    print(f"threads {_core.num_threads()}, level {_core.active_isa()}, load {_load()}")
    rng = np.random.default_rng(0)
    for shape, (cout, cin, k) in SHAPES.items():
        w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        x = _core.Feature.from_numpy(rng.standard_normal((cin, H, W)).astype(np.float32))
        y = _core.Feature(cout, H, W)
        pixels = _core.PixelSet.full(H, W)
        layers = {"f32": _core.Conv2d(w), "bf16": _core.Conv2d(w, precision="bf16"),
                  "int8": _core.Conv2d(w, precision="int8", in_scale=0.03, in_zero_point=128)}
        engines = {name: (lambda layer=layer: layer(x.view(), y.view(), pixels))
                   for name, layer in layers.items()}
        med = _medians(engines, args.rounds)
        for name, layer in layers.items():
            print(f"{shape:12s} {layer.kernel:36s} {med[name] * 1e3:8.2f} ms "
                  f"{med[name] / med['f32']:.2f}x the f32 time")
    print(f"load after: {_load()}")


def model(args) -> None:
    from PIL import Image
    path = args.image or shared_root() / "data" / "Set14" / "HR" / "comic.png"
    img = np.asarray(Image.open(path).convert("RGB").resize((640, 360)))
    models = {"f32": sparsr.load(args.checkpoint, precision="f32"),
              "int8 (auto)": sparsr.load(args.int8, precision="auto")}
    if args.all:
        models["int8 (all)"] = sparsr.load(args.int8, precision="int8")
    if args.bf16:
        models["bf16"] = sparsr.load(args.checkpoint, precision="bf16")
    for name, m in models.items():
        info = m.info()
        print(f"{name}: {info['int8_layers']} int8 layers, {info['bf16_layers']} bf16 "
              f"{info.get('precision_note', '')}")
    print(f"threads {_core.num_threads()}, mode {args.mode}, load {_load()}")
    out = {p: m.forward(img, args.mode).output for p, m in models.items()}
    for p in out:
        diff = out[p] - out["f32"]
        if p != "f32":
            print(f"{p}: max |out - f32| on 0..255 {np.abs(diff).max():.3f}, "
                  f"PSNR vs f32 {10 * np.log10(255 ** 2 / max(np.mean(diff ** 2), 1e-12)):.1f} dB")
    engines = {p: (lambda m=m: m.forward(img, args.mode)) for p, m in models.items()}
    med = _medians(engines, args.rounds)
    for name, t in med.items():
        print(f"{name:14s} median {t:.3f} s   {t / med['f32']:.2f}x the f32 time")
    print(f"load after: {_load()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("--threads", type=int, default=2)
    k.add_argument("--rounds", type=int, default=7)
    m = sub.add_parser("model")
    m.add_argument("checkpoint")
    m.add_argument("int8", help="the checkpoint tools/quantize.py wrote")
    m.add_argument("--mode", choices=["dense", "mask"], default="mask")
    m.add_argument("--all", action="store_true")
    m.add_argument("--bf16", action="store_true")
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--rounds", type=int, default=5)
    m.add_argument("--image", help="default: <shared>/data/Set14/HR/comic.png")
    args = p.parse_args()
    sparsr.set_num_threads(args.threads)
    (kernels if args.what == "kernels" else model)(args)


if __name__ == "__main__":
    main()
