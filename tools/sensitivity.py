"""Layer sensitivity to weight sparsification (SparSMSR Algorithm 1, Table 1).

    python tools/sensitivity.py artifacts/smsr_x2.pt -o artifacts/sensitivity_psnr.json
    python tools/sensitivity.py artifacts/smsr_x2.pt --metric ssim -o artifacts/sensitivity_ssim.json
    python tools/sensitivity.py ... --resume          # continue a partial JSON

For each target layer alone, a binary search over k (the number of its smallest-|w|
weights set to zero; see tools/sparsity_common.py for the tie rule) finds the
largest k at which the mean metric on the calibration set stays >= P0 - dP, P0 being
the unsparsified model's. One search per dP, largest dP first; all searches of a
layer share one cache of evaluations keyed by k, and the bracket of a search starts
from what the cache already knows (a k that failed a larger dP fails every smaller
one). The search stops when the bracket is at most --resolution weights wide (the
paper's loop "while k_l != k_r" with integer halving never ends once k_r = k_l + 1).
Evaluation runs on sparsr's engine, restarting at the layer's node from stages kept
once per calibration image (Model.stages / forward(cache=, start=)): nodes before it do
not depend on the layer (an SMSR layer restarts at its module, whose spatial mask does
not depend on it either). Any sparsr model: --layers "core" (default; see
sparsity_common.core_layers), "all" or a regex over the conv names of the graph.

Calibration set (kept apart from the evaluation sets Set5/Set14): the first
--calib-count B100 images sorted by name, LR centre-cropped to --crop pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparsity_common import (PAPER_TABLE1, PAPER_TABLE1_DELTAS,  # noqa: E402
                             center_crop_pair, dataset_pairs, load_rgb, magnitude_order,
                             prune_smallest, resolve_layers, restart_nodes, restart_of)


class ProbeCache:
    """Evaluations of one layer keyed by k (weights zeroed), shared by its searches."""

    def __init__(self, evaluate: Callable[[int], float], known: dict[int, float] | None = None):
        self._evaluate = evaluate
        self.values: dict[int, float] = dict(known or {})
        self.evaluations = 0

    def __call__(self, k: int) -> float:
        if k not in self.values:
            self.values[k] = float(self._evaluate(k))
            self.evaluations += 1
        return self.values[k]


def search_sensitivity(sorted_abs_weights, evaluate: Callable[[int], float], boundary: float,
                       resolution: int = 1) -> int:
    """Algorithm 1: the largest k (weights zeroed) with evaluate(k) >= boundary.

    Binary search on [k_l, k_r] with k_l = 0 (the intact layer, taken as passing)
    and k_r = N (never evaluated, taken as failing), halving until k_r - k_l <=
    resolution. If evaluate is a ProbeCache, its known values first narrow the
    bracket: k_r = the smallest known failing k, k_l = the largest known passing
    k below it. For a monotone metric that is the global answer; otherwise the
    result is a passing k whose failing neighbour lies within resolution above.
    """
    n = len(sorted_abs_weights)
    resolution = max(1, int(resolution))
    k_l, k_r = 0, n
    known = getattr(evaluate, "values", {})
    failing = [k for k, v in known.items() if v < boundary]
    if failing:
        k_r = min(failing)
    passing = [k for k, v in known.items() if v >= boundary and k < k_r]
    if passing:
        k_l = max(passing)
    while k_r - k_l > resolution:
        k_c = (k_l + k_r) // 2
        if evaluate(k_c) < boundary:
            k_r = k_c
        else:
            k_l = k_c
    return k_l


class CalibrationSet:
    """Cropped LR/HR pairs with the network's cached stages, for fast restarts."""

    def __init__(self, net, dataset: str, count: int, crop: int | None, metric: str,
                 layers: list[str] | None = None, max_restarts: int = 32):
        from sparsr.metrics import psnr_y, ssim_y
        self.net = net
        self.scale = net.scale
        self.metric_fn = psnr_y if metric == "psnr" else ssim_y
        self.names, self.lrs, self.hrs = [], [], []
        for name, lr_path, hr_path in dataset_pairs(dataset, net.scale, count):
            lr, hr = center_crop_pair(load_rgb(lr_path), load_rgb(hr_path), net.scale, crop)
            self.names.append(name)
            self.lrs.append(lr)
            self.hrs.append(hr)
        self.restarts = restart_nodes(net, layers, max_restarts)
        self.caches = [net.stages(lr, self.restarts, "mask") for lr in self.lrs]

    @property
    def pixels(self) -> int:
        return sum(lr.shape[0] * lr.shape[1] for lr in self.lrs)

    def score(self, start: str | None = None) -> float:
        from sparsr.metrics import quantize
        vals = []
        for lr, hr, cache in zip(self.lrs, self.hrs, self.caches):
            out = self.net.forward(lr, "mask", cache=cache, start=start).output
            vals.append(self.metric_fn(quantize(out), hr, self.scale))
        return float(np.mean(vals))


def measure_layer(net, calib: CalibrationSet, name: str, deltas, baseline: float,
                  resolution: int, known: dict[int, float] | None = None,
                  on_probe: Callable[[int, float], None] | None = None):
    """{dP: k_best} for one layer, and the probe cache (k -> metric)."""
    original = net.conv_weight(name).copy()
    order = magnitude_order(original)
    sorted_abs = np.abs(original.reshape(-1))[order]
    start = restart_of(net, name, calib.restarts)

    def evaluate(k: int) -> float:
        net.set_conv_weight(name, prune_smallest(original, k, order))
        value = calib.score(start)
        if on_probe:
            on_probe(k, value)
        return value

    cache = ProbeCache(evaluate, known)
    try:
        result = {}
        for d in sorted(deltas, reverse=True):     # largest dP first: bounds the others
            result[d] = search_sensitivity(sorted_abs, cache, baseline - d, resolution)
    finally:
        net.set_conv_weight(name, original)
    return result, cache


def format_table(report: dict) -> str:
    deltas = report["deltas"]
    unit = "dB" if report["metric"] == "psnr" else "SSIM"
    show_paper = (report["metric"] == "psnr" and tuple(deltas) == PAPER_TABLE1_DELTAS
                  and report.get("architecture", "smsr") == "smsr")   # Table 1 is SMSR's
    head = "| # | layer | " + " | ".join(f"dP={d:g} {unit}" for d in deltas)
    sep = "|---|---|" + "---|" * len(deltas)
    if show_paper:
        head += " | " + " | ".join(f"paper {d:g}" for d in deltas)
        sep += "---|" * len(deltas)
    lines = [head + " |", sep]
    for i, name in enumerate(report["layers_order"], 1):
        entry = report["layers"].get(name)
        if entry is None or "sparsity" not in entry:
            cells = ["..."] * len(deltas)
        else:
            cells = [f"{100 * entry['sparsity'][str(d)]:.2f}" for d in deltas]
        row = f"| {i} | {name} | " + " | ".join(cells)
        if show_paper and i in PAPER_TABLE1:
            row += " | " + " | ".join(f"{v:.2f}" for v in PAPER_TABLE1[i])
        lines.append(row + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="any sparsr checkpoint (e.g. artifacts/smsr_x2.pt)")
    p.add_argument("-o", "--output", help="JSON report (default artifacts/sensitivity_<metric>.json)")
    p.add_argument("--metric", choices=["psnr", "ssim"], default="psnr")
    p.add_argument("--deltas", type=float, nargs="+",
                   help="allowed drops (default 0.01 0.02 0.03 0.04 dB; 0.0005 for SSIM)")
    p.add_argument("--layers", default="core",
                   help='"core" (default), "all", or a regex over conv names')
    p.add_argument("--max-restarts", type=int, default=32,
                   help="nodes whose values are kept per image for restarts (memory)")
    p.add_argument("--calib", default="B100", help="calibration set (default B100)")
    p.add_argument("--calib-count", type=int, default=24, help="first N images by name")
    p.add_argument("--crop", type=int, default=80, help="LR centre crop (0: whole image)")
    p.add_argument("--resolution", type=int, default=0,
                   help="stop when the bracket is this many weights wide (default N/256)")
    p.add_argument("--resume", action="store_true", help="continue from an existing --output")
    args = p.parse_args(argv)

    import sparsr
    deltas = args.deltas or ([0.01, 0.02, 0.03, 0.04] if args.metric == "psnr" else [0.0005])
    out_path = Path(args.output or f"artifacts/sensitivity_{args.metric}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    net = sparsr.load(args.model)
    names = resolve_layers(net, args.layers)
    if not names:
        p.error(f"no conv matches {args.layers!r}")

    t0 = time.perf_counter()
    calib = CalibrationSet(net, args.calib, args.calib_count, args.crop, args.metric, names,
                           args.max_restarts)
    t_stage = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline = calib.score()
    t_full = time.perf_counter() - t0
    print(f"calibration: {args.calib} first {len(calib.names)} by name "
          f"({calib.names[0]}..{calib.names[-1]}), LR crop {args.crop or 'none'}, "
          f"{calib.pixels} LR pixels; stages {t_stage:.1f}s, full evaluation {t_full:.2f}s; "
          f"baseline {args.metric} {baseline:.4f}", flush=True)

    config = {"model": str(args.model), "metric": args.metric, "calib": args.calib,
              "calib_images": calib.names, "crop": args.crop, "layers_regex": args.layers}
    report = {"tool": "tools/sensitivity.py", **config, "architecture": net.architecture,
              "restarts": calib.restarts, "deltas": deltas, "baseline": baseline,
              "layers_order": names, "layers": {}}
    if args.resume and out_path.is_file():
        old = json.loads(out_path.read_text())
        for key, value in config.items():
            if old.get(key) != value:
                p.error(f"--resume: {out_path} was made with {key}={old.get(key)!r}, now {value!r}")
        if abs(old["baseline"] - baseline) > 1e-9:
            p.error(f"--resume: baseline changed ({old['baseline']} -> {baseline}): engine changed?")
        report["layers"] = old.get("layers", {})
        print(f"resuming: {sum('sparsity' in e for e in report['layers'].values())} layers done",
              flush=True)

    def save():
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(out_path)

    started = time.perf_counter()
    evaluations_done = 0
    layers_run = 0
    for i, name in enumerate(names):
        entry = report["layers"].setdefault(name, {})
        n = int(net.conv_weight(name).size)
        entry["weights"] = n
        probes = entry.setdefault("probes", {})
        if "sparsity" in entry and all(str(d) in entry["k_best"] for d in deltas):
            continue
        resolution = args.resolution or max(1, n // 256)
        layer_start = time.perf_counter()

        def on_probe(k, value, probes=probes):
            probes[str(k)] = value
            save()

        known = {int(k): v for k, v in probes.items()}
        result, cache = measure_layer(net, calib, name, deltas, baseline, resolution, known,
                                      on_probe)
        evaluations_done += cache.evaluations
        entry["k_best"] = {str(d): int(k) for d, k in result.items()}
        entry["sparsity"] = {str(d): k / n for d, k in result.items()}
        entry["resolution"] = resolution
        entry["seconds"] = entry.get("seconds", 0.0) + time.perf_counter() - layer_start
        save()
        layers_run += 1
        elapsed = time.perf_counter() - started
        left = sum(1 for m in names[i + 1:] if "sparsity" not in report["layers"].get(m, {}))
        eta = elapsed / layers_run * left
        print(f"[{i + 1}/{len(names)}] {name}: " +
              ", ".join(f"dP={d:g}: {100 * k / n:.2f}%" for d, k in sorted(result.items())) +
              f"  ({cache.evaluations} evaluations, {time.perf_counter() - layer_start:.0f}s; "
              f"elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)", flush=True)
    report["total_seconds"] = report.get("total_seconds", 0.0) + time.perf_counter() - started
    save()
    print(format_table(report))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
