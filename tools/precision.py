"""Choose bf16 or f32 for every convolution so that the PSNR stays within a
tolerance of f32, and write the choice into the checkpoint's layers, where
``sparsr.load(path, precision="auto")`` (the default) reads it.

    python tools/precision.py smsr_x2.pt -o smsr_x2_auto.pt [--data Set5 --data Set14]
        [--tolerance 0.01] [--mode mask|dense] [--images N] [--json report.json]

The score is the mean Y-PSNR of each dataset (tools/evaluate.py's metric); a
choice is kept only if no dataset loses more than the tolerance (dB) against
f32. Method:

1. every layer in bf16: if that keeps the tolerance, every layer is bf16;
2. otherwise each layer alone in bf16 gives its loss (the largest over the
   datasets), and the layers are taken in increasing order of loss: the
   longest prefix that keeps the tolerance (binary search over its length,
   the losses being about additive) is bf16, the rest f32; the final set is
   evaluated once more and reported.

bf16 needs a bf16 kernel to run (AMX or AVX512_BF16, or the scalar twin under
SPARSR_ISA=scalar): on a CPU without one every layer would score as f32, so the
tool refuses to run there.
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

import sparsr  # noqa: E402
from sparsr import checkpoint  # noqa: E402
from sparsr.metrics import psnr_y, quantize  # noqa: E402


class Scorer:
    """Mean Y-PSNR per dataset of a checkpoint with a given set of bf16 layers."""

    def __init__(self, path: str, datasets: Sequence[str], mode: str, images: int | None):
        self.path = path
        self.mode = mode
        self.description, self.stored, self.metadata = checkpoint.load(path)
        self.tensors = checkpoint.decode_sparse(self.stored)
        self.data = {}
        for name in datasets:
            data_dir = resolve_dataset(name)
            pairs = dataset_pairs(data_dir, self.scale)[:images]
            self.data[data_dir.name] = [(load_rgb(lr), load_rgb(hr)) for _, hr, lr in pairs]
        self.evaluations = 0

    @property
    def scale(self) -> int:
        return int(self.description["io"]["scale"])

    def with_choice(self, bf16: set[str], names: Sequence[str]) -> dict:
        """The model description with layers[name]["precision"] set for every name."""
        d = dict(self.description)
        layers = {k: dict(v) for k, v in d.get("layers", {}).items()}
        for name in names:
            layers.setdefault(name, {})["precision"] = "bf16" if name in bf16 else "f32"
        d["layers"] = layers
        return d

    def model(self, bf16: set[str], names: Sequence[str]) -> sparsr.Model:
        return sparsr.Model(self.with_choice(bf16, names), self.tensors, self.metadata, self.path,
                            precision="auto")

    def score(self, bf16: set[str], names: Sequence[str]) -> dict[str, float]:
        model = self.model(bf16, names)
        self.evaluations += 1
        return {ds: float(np.mean([psnr_y(quantize(model.forward(lr, self.mode).output), hr,
                                          self.scale) for lr, hr in pairs]))
                for ds, pairs in self.data.items()}


def bf16_candidates(scorer: Scorer) -> list[str]:
    """The layers that run a bf16 kernel when asked to (graph order)."""
    rows = scorer.model(set(), []).layer_table()
    every = [r["name"].split("[")[0] for r in rows]
    model = scorer.model(set(every), every)
    names = [r["name"].split("[")[0] for r in model.layer_table() if r["precision"] == "bf16"]
    return list(dict.fromkeys(names))


def loss(base: dict[str, float], got: dict[str, float]) -> float:
    """The largest PSNR loss over the datasets (dB; negative: a gain everywhere)."""
    return max(base[d] - got[d] for d in base)


def search(scorer: Scorer, names: list[str], base: dict, every: dict, tolerance: float,
           precision: str, log=print) -> tuple[set, dict, dict]:
    """The layers to run in `precision` (every one when that keeps the
    tolerance; else the longest prefix of the least sensitive alone that
    does, by bisection), the scores with them, and each layer's loss alone."""
    alone: dict[str, float] = {}
    if loss(base, every) <= tolerance:
        return set(names), every, alone
    for name in names:
        alone[name] = loss(base, scorer.score({name}, names))
        log(f"  {name} alone: {alone[name]:+.4f} dB")
    order = sorted(names, key=lambda n: alone[n])   # least sensitive first
    lo, hi = 0, len(order) - 1   # the prefix of lo layers keeps the tolerance; of hi + 1 not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        drop = loss(base, scorer.score(set(order[:mid]), names))
        log(f"  first {mid} in {precision}: {drop:+.4f} dB")
        if drop <= tolerance:
            lo = mid
        else:
            hi = mid - 1
    chosen = set(order[:lo])
    return chosen, scorer.score(chosen, names), alone


def choose(scorer: Scorer, tolerance: float, log=print) -> dict:
    names = bf16_candidates(scorer)
    if not names:
        raise SystemExit("precision.py: no layer runs a bf16 kernel at this ISA level (the CPU "
                         "has neither AMX-BF16 nor AVX512_BF16, or SPARSR_ISA lowers it); "
                         "run it where bf16 runs, or under SPARSR_ISA=scalar")
    base = scorer.score(set(), names)
    log(f"f32: {base}")
    every = scorer.score(set(names), names)
    log(f"all {len(names)} layers bf16: {every}, loss {loss(base, every):+.4f} dB")
    chosen, final, alone = search(scorer, names, base, every, tolerance, "bf16", log)
    return {"layers": {n: "bf16" if n in chosen else "f32" for n in names},
            "psnr_f32": base, "psnr_chosen": final, "loss_db": loss(base, final),
            "loss_alone_db": alone, "tolerance_db": tolerance, "mode": scorer.mode,
            "datasets": {d: len(p) for d, p in scorer.data.items()},
            "evaluations": scorer.evaluations}


def write(scorer: Scorer, report: dict, out: str) -> None:
    names = list(report["layers"])
    bf16 = {n for n, p in report["layers"].items() if p == "bf16"}
    metadata = dict(scorer.metadata)
    metadata["precision"] = {k: report[k] for k in ("tolerance_db", "mode", "datasets",
                                                    "psnr_f32", "psnr_chosen", "loss_db")}
    metadata["precision"]["bf16_layers"] = len(bf16)
    checkpoint.save(out, scorer.with_choice(bf16, names), scorer.stored, metadata)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a sparsr checkpoint")
    p.add_argument("-o", "--output", required=True, help="the checkpoint to write")
    p.add_argument("--data", action="append", help="dataset (default: Set5 and Set14)")
    p.add_argument("--tolerance", type=float, default=0.01, help="dB of PSNR (default 0.01)")
    p.add_argument("--mode", choices=["mask", "dense"], default="mask")
    p.add_argument("--images", type=int, help="only the first N images of each dataset")
    p.add_argument("--json", help="also write the report to this file")
    args = p.parse_args(argv)
    if args.tolerance < 0:
        p.error("--tolerance must be >= 0")
    scorer = Scorer(args.model, args.data or ["Set5", "Set14"], args.mode, args.images)
    report = choose(scorer, args.tolerance)
    write(scorer, report, args.output)
    n = sum(v == "bf16" for v in report["layers"].values())
    print(f"wrote {args.output}: {n} of {len(report['layers'])} layers bf16, PSNR loss "
          f"{report['loss_db']:+.4f} dB (tolerance {args.tolerance}) after "
          f"{report['evaluations']} evaluations")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
