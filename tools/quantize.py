"""Calibrate int8 for every convolution with an int8 kernel, keep it where the
PSNR stays within a tolerance of f32, and write a new checkpoint whose layers
carry their input quantization (``layers[name]["int8"] = {"scale",
"zero_point"}``) and, where chosen, ``"precision": "int8"``: then
``sparsr.load(path)`` (precision="auto") runs those layers in int8, and
``sparsr.load(path, precision="int8")`` every calibrated one.

    python tools/quantize.py smsr_x2.pt -o smsr_x2_int8.pt [--calib B100] [--patches 100]
        [--patch 96] [--clip max|p99.99|...|best] [--ksizes 1,3] [--data Set5 --data Set14]
        [--tolerance 0.05] [--mode mask|dense] [--images N] [--json report.json]

1. Calibration: the model runs in f32 on LR patches of --calib (the centre
   --patch x --patch of each of the first --patches images); every fast
   convolution's input is observed: its minimum, and its largest |x| or a
   percentile of the nonzero |x| (--clip; "best" tries each of CLIPS and keeps
   the one with the best PSNR with every layer int8). An input never negative
   (a ReLU output) gets zero point 0 and scale clip / 255, any other zero
   point 128 and scale clip / 127.
2. Candidates: the layers that run an int8 kernel, of the kernel sizes
   --ksizes (default 1 and 3; the 1x1 int8 kernel, which quantizes every
   input for 8 MACs of it, takes 0.46x the f32 1x1's time at 256->64, 0.57x
   at 64->64: benchmarks/bench_int8.py kernels).
3. Choice, as tools/precision.py does for bf16 (its Scorer and loss): every
   layer int8 if that keeps the tolerance on every dataset (mean Y-PSNR,
   tools/evaluate.py's metric); otherwise each layer alone in int8 gives its
   loss, and the most sensitive layers fall back to f32 first (binary search
   over their number, losses about additive) until the tolerance holds.

int8 needs an int8 kernel (AVX512_VNNI, or the scalar twin under
SPARSR_ISA=scalar); without one every layer scores as f32 and the tool refuses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import dataset_pairs, load_rgb, resolve_dataset  # noqa: E402
from precision import Scorer, loss, search  # noqa: E402

import sparsr  # noqa: E402
from sparsr import checkpoint  # noqa: E402
from sparsr.ops.conv import PackedConv  # noqa: E402

# Clipping rules --clip=best compares: the largest |x|, or percentiles of the
# nonzero |x| of a layer's inputs.
CLIPS = ("max", "p99.999", "p99.99", "p99.9")
SAMPLES_PER_CALL = 4096


class Observer:
    """Per layer: the smallest input, the largest |x| and a sample of the
    nonzero |x|, from every call of its packed convolutions."""

    def __init__(self, seed: int = 0):
        self.low: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.samples: dict[str, list[np.ndarray]] = {}
        self.rng = np.random.default_rng(seed)

    def observe(self, name: str, x: np.ndarray) -> None:
        if not x.size:
            return
        self.low[name] = min(self.low.get(name, np.inf), float(x.min()))
        a = np.abs(x[x != 0])
        self.peak[name] = max(self.peak.get(name, 0.0), float(a.max()) if a.size else 0.0)
        if a.size:
            take = self.rng.choice(a.size, min(a.size, SAMPLES_PER_CALL), replace=False)
            self.samples.setdefault(name, []).append(a[take])

    def quant(self, name: str, clip: str) -> dict:
        """The layer's "int8" entry under a clipping rule."""
        if clip == "max" or name not in self.samples:
            top = self.peak.get(name, 0.0)
        else:
            top = float(np.percentile(np.concatenate(self.samples[name]), float(clip[1:])))
        zero = 0 if self.low.get(name, 0.0) >= 0.0 else 128
        top = top if top > 0.0 else 1.0   # an input always zero: any scale
        return {"scale": top / (255.0 if zero == 0 else 127.0), "zero_point": zero}


def calibrate(model: sparsr.Model, images: list[np.ndarray], mode: str) -> Observer:
    """Runs the model (f32) on the images, observing every packed conv's input."""
    observer = Observer()
    original = PackedConv.__call__

    def observing(self, counter, src, dst, pixels, relu=False, cin=-1, cout=-1, **kw):
        x = src.numpy()
        observer.observe(self.name.split("[")[0], x[:self.cin if cin < 0 else cin])
        return original(self, counter, src, dst, pixels, relu=relu, cin=cin, cout=cout, **kw)

    PackedConv.__call__ = observing
    try:
        for img in images:
            model.forward(img, mode)
    finally:
        PackedConv.__call__ = original
    return observer


def patches(data: str, count: int, side: int, scale: int) -> list[np.ndarray]:
    """The centre side x side (or smaller) of the first `count` LR images (x scale) of a dataset."""
    out = []
    for _, _, lr in dataset_pairs(resolve_dataset(data), scale)[:count]:
        img = load_rgb(lr)
        h, w = img.shape[:2]
        y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
        out.append(np.ascontiguousarray(img[y:y + side, x:x + side]))
    return out


class Int8Scorer(Scorer):
    """tools/precision.py's Scorer with int8 as the other precision: every
    observed layer carries its "int8" entry, the chosen ones precision int8."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.quant: dict[str, dict] = {}

    def with_choice(self, chosen: set[str], names: Sequence[str]) -> dict:
        d = dict(self.description)
        layers = {k: dict(v) for k, v in d.get("layers", {}).items()}
        for name, quant in self.quant.items():   # every observed layer: precision="int8"
            layers.setdefault(name, {})["int8"] = quant
        for name in names:
            layers.setdefault(name, {})["precision"] = "int8" if name in chosen else "f32"
        d["layers"] = layers
        return d


def candidates(scorer: Int8Scorer, names: Sequence[str],
               ksizes: Sequence[int] = (1, 3)) -> list[str]:
    """The layers of these kernel sizes that run an int8 kernel when asked to (graph order)."""
    model = scorer.model(set(names), names)
    found = [r["name"].split("[")[0] for r in model.layer_table()
             if r["precision"] == "int8" and r["shape"][2] in ksizes]
    return list(dict.fromkeys(found))


def choose(scorer: Int8Scorer, observer: Observer, clips: Sequence[str], tolerance: float,
           ksizes: Sequence[int] = (1, 3), log=print) -> dict:
    layers = [r["name"].split("[")[0] for r in scorer.model(set(), []).layer_table()]
    layers = [n for n in dict.fromkeys(layers) if n in observer.low]
    scorer.quant = {n: observer.quant(n, clips[0]) for n in layers}
    names = candidates(scorer, layers, ksizes)
    scorer.quant = {}
    if not names:
        raise SystemExit("quantize.py: no layer runs an int8 kernel at this ISA level (the CPU "
                         "lacks AVX512_VNNI, or SPARSR_ISA lowers it); run it where int8 runs, "
                         "or under SPARSR_ISA=scalar")
    base = scorer.score(set(), names)
    log(f"f32: {base}")
    by_clip = {}
    for clip in clips:
        scorer.quant = {n: observer.quant(n, clip) for n in layers}
        by_clip[clip] = scorer.score(set(names), names)
        log(f"all {len(names)} layers int8, clip {clip}: {by_clip[clip]}, loss "
            f"{loss(base, by_clip[clip]):+.4f} dB")
    clip = min(clips, key=lambda c: loss(base, by_clip[c]))
    scorer.quant = {n: observer.quant(n, clip) for n in layers}
    every = by_clip[clip]
    chosen, final, alone = search(scorer, names, base, every, tolerance, "int8", log)
    return {"layers": {n: "int8" if n in chosen else "f32" for n in names},
            "int8": scorer.quant, "clip": clip,
            "loss_by_clip_db": {c: loss(base, v) for c, v in by_clip.items()},
            "psnr_f32": base, "psnr_chosen": final, "loss_db": loss(base, final),
            "loss_alone_db": alone, "tolerance_db": tolerance, "mode": scorer.mode,
            "datasets": {d: len(p) for d, p in scorer.data.items()},
            "evaluations": scorer.evaluations}


def write(scorer: Int8Scorer, report: dict, out: str, calibration: dict) -> None:
    names = list(report["layers"])
    chosen = {n for n, p in report["layers"].items() if p == "int8"}
    metadata = dict(scorer.metadata)
    metadata["int8"] = {k: report[k] for k in ("tolerance_db", "mode", "datasets", "clip",
                                               "psnr_f32", "psnr_chosen", "loss_db")}
    metadata["int8"].update(calibration, int8_layers=len(chosen))
    checkpoint.save(out, scorer.with_choice(chosen, names), scorer.stored, metadata)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a sparsr checkpoint")
    p.add_argument("-o", "--output", required=True, help="the checkpoint to write")
    p.add_argument("--calib", default="B100", help="calibration dataset (default B100)")
    p.add_argument("--patches", type=int, default=100, help="calibration images (default 100)")
    p.add_argument("--patch", type=int, default=96, help="side of a calibration patch (LR)")
    p.add_argument("--clip", choices=CLIPS + ("best",), default="best")
    p.add_argument("--ksizes", default="1,3", help="kernel sizes to quantize: 3, 1 or 1,3 "
                   "(default)")
    p.add_argument("--data", action="append", help="dataset (default: Set5 and Set14)")
    p.add_argument("--tolerance", type=float, default=0.05, help="dB of PSNR (default 0.05)")
    p.add_argument("--mode", choices=["mask", "dense"], default="mask")
    p.add_argument("--images", type=int, help="only the first N images of each dataset")
    p.add_argument("--json", help="also write the report to this file")
    args = p.parse_args(argv)
    if args.tolerance < 0:
        p.error("--tolerance must be >= 0")
    scorer = Int8Scorer(args.model, args.data or ["Set5", "Set14"], args.mode, args.images)
    observer = calibrate(scorer.model(set(), []), patches(args.calib, args.patches, args.patch, scorer.scale),
                         args.mode)
    clips = CLIPS if args.clip == "best" else (args.clip,)
    ksizes = tuple(int(k) for k in args.ksizes.split(","))
    if not set(ksizes) <= {1, 3}:
        p.error("--ksizes takes 1, 3 or 1,3")
    report = choose(scorer, observer, clips, args.tolerance, ksizes)
    calibration = {"calibration": args.calib, "patches": args.patches, "patch": args.patch,
                   "ksizes": list(ksizes)}
    write(scorer, report, args.output, calibration)
    n = sum(v == "int8" for v in report["layers"].values())
    print(f"wrote {args.output}: {n} of {len(report['layers'])} layers int8 (clip "
          f"{report['clip']}), PSNR loss {report['loss_db']:+.4f} dB (tolerance "
          f"{args.tolerance}) after {report['evaluations']} evaluations")
    if args.json:
        Path(args.json).write_text(json.dumps({**report, **calibration}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
