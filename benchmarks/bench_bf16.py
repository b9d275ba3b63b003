"""bf16 against f32, in the same process, interleaved rounds, medians.

kernels: SMSR's dense layer shapes on a 360x640 feature, the f32 kernel and the
bf16 kernel of every bf16 level this CPU has, as GFLOP/s and against the f32
FMA peak measured in the same run (sparsr._peak).

model: SMSR x2 at 640x360 -> 1280x720 (a sparsr checkpoint, e.g. from
`sparsr convert ../shared/models/smsr_x2_official.pt -o smsr_x2.pt`), loaded
with precision="f32" and "bf16", in dense or mask mode; with --openvino also
OpenVINO at f32 and at its default precision (bf16 on these CPUs) on the same
dense network (benchmarks/peers.py; needs torch for the ONNX export).

    python benchmarks/bench_bf16.py kernels [--threads 2] [--rounds 7]
    python benchmarks/bench_bf16.py model smsr_x2.pt [--mode dense|mask] [--openvino]
        [--threads 2] [--rounds 5] [--image IMAGE]   (resized to 640x360)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import sparsr
from sparsr import _core, _peak

H, W = 360, 640
SHAPES = {"3x3 64->64": (64, 64, 3), "1x1 256->64": (64, 256, 1), "1x1 128->64": (64, 128, 1),
          "1x1 64->64": (64, 64, 1), "3x3 64->16": (16, 64, 3), "3x3 64->12": (12, 64, 3)}


def shared_root() -> Path:
    """$SPARSR_SHARED or ../shared next to the repository (as the tests)."""
    default = Path(__file__).resolve().parents[1].parent / "shared"
    return Path(os.environ.get("SPARSR_SHARED", default))


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def _medians(engines: dict, rounds: int) -> dict[str, float]:
    times = {k: [] for k in engines}
    for r in range(rounds):
        names = list(engines)
        for name in names[r % len(names):] + names[:r % len(names)]:   # rotated order
            start = time.perf_counter()
            engines[name]()
            times[name].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def kernels(args) -> None:
    levels = sorted({k["isa"] for k in _core.kernels()
                     if k["precision"] == "bf16" and k["isa"] != "scalar"
                     and _core.isa_supported(k["isa"])})
    peak = _peak.fma_peak_gflops("avx512" if _core.isa_supported("avx512") else
                                 _core.active_isa(), 0.5)
    print(f"threads {_core.num_threads()}, load {_load()}, f32 FMA peak {peak:.0f} GFLOP/s")
    rng = np.random.default_rng(0)
    for shape, (cout, cin, k) in SHAPES.items():
        w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        x = _core.Feature.from_numpy(rng.standard_normal((cin, H, W)).astype(np.float32))
        y = _core.Feature(cout, H, W)
        pixels = _core.PixelSet.full(H, W)
        layers = {"f32": _core.Conv2d(w)}
        layers.update({lvl: _core.Conv2d(w, isa=lvl, precision="bf16") for lvl in levels})
        engines = {name: (lambda layer=layer: layer(x.view(), y.view(), pixels))
                   for name, layer in layers.items()}
        med = _medians(engines, args.rounds)
        flops = 2.0 * H * W * cout * cin * k * k
        for name, layer in layers.items():
            gflops = flops / med[name] / 1e9
            print(f"{shape:12s} {layer.kernel:36s} {med[name] * 1e3:8.2f} ms {gflops:6.0f} GFLOP/s "
                  f"{100 * gflops / peak:5.0f} % of f32 peak  x{med['f32'] / med[name]:.2f} vs f32")
    print(f"load after: {_load()}")


def model(args) -> None:
    from PIL import Image
    path = args.image or shared_root() / "data" / "Set14" / "HR" / "comic.png"
    img = np.asarray(Image.open(path).convert("RGB").resize((640, 360)))
    models = {p: sparsr.load(args.checkpoint, precision=p) for p in ("f32", "bf16")}
    info = models["bf16"].info()
    print(f"threads {_core.num_threads()}, load {_load()}, bf16 layers {info['bf16_layers']} "
          f"{info.get('precision_note', '')}")
    engines = {f"sparsr {p}": (lambda m=m: m.forward(img, args.mode)) for p, m in models.items()}
    if args.openvino:
        if args.mode != "dense":
            raise SystemExit("--openvino compares the dense network: use --mode dense")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import peers
        import torch
        x = peers.network_input(models["f32"], img)[None]
        state = torch.load(shared_root() / "models" / "smsr_x2_official.pt", map_location="cpu",
                           weights_only=False)
        onnx = Path(tempfile.mkdtemp()) / "smsr_dense.onnx"
        peers.export_onnx(peers.smsr_dense_module({k: v.numpy() for k, v in state.items()}),
                          onnx, 3)
        threads = _core.num_threads()
        run_f32, _ = peers.openvino_run(onnx, x.shape, threads, "f32")
        run_default, chosen = peers.openvino_run(onnx, x.shape, threads, None)
        engines["openvino f32"] = lambda: run_f32(x)
        engines[f"openvino default ({chosen})"] = lambda: run_default(x)
        for f in engines.values():
            f()     # warm
    out = {p: m.forward(img, args.mode).output for p, m in models.items()}
    print(f"max |bf16 - f32| on 0..255: {np.abs(out['bf16'] - out['f32']).max():.3f}")
    med = _medians(engines, args.rounds)
    for name, t in med.items():
        print(f"{name:28s} median {t:.3f} s   sparsr f32 / it = {med['sparsr f32'] / t:.2f}x")
    print(f"load after: {_load()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("--threads", type=int, default=2)
    k.add_argument("--rounds", type=int, default=7)
    m = sub.add_parser("model")
    m.add_argument("checkpoint")
    m.add_argument("--mode", choices=["dense", "mask"], default="dense")
    m.add_argument("--openvino", action="store_true")
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--rounds", type=int, default=5)
    m.add_argument("--image", help="default: <shared>/data/Set14/HR/comic.png")
    args = p.parse_args()
    sparsr.set_num_threads(args.threads)
    (kernels if args.what == "kernels" else model)(args)


if __name__ == "__main__":
    main()
