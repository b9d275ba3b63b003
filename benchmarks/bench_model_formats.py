"""Whole-model time of several checkpoints on one input, interleaved rounds, medians,
as ratios to the first; and the formats the engine chose for each model's layers.

    python benchmarks/bench_model_formats.py /tmp/models/smsr_x2.pt \
        artifacts/sparsmsr_3b.pt artifacts/sparsmsr_3b_block8.pt [--mode mask] [--rounds 5]

The input is a Set14 LR image tiled to --size (default 640x360), or random pixels
when the data set is absent. CPU time of all threads (steadier on a busy machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

import sparsr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from sparsity_common import core_layers, dataset_pairs, load_rgb  # noqa: E402


def test_image(width: int, height: int) -> np.ndarray:
    try:
        lr = load_rgb(dataset_pairs("Set14", 2, limit=1)[0][1])
    except FileNotFoundError:
        return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    reps = (-(-height // lr.shape[0]), -(-width // lr.shape[1]), 1)
    return np.ascontiguousarray(np.tile(lr, reps)[:height, :width])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--mode", default="mask", choices=("mask", "dense"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", default="640x360", help="input WIDTHxHEIGHT")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    sparsr._core.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    lr = test_image(width, height)
    models = {path: sparsr.load(path) for path in args.models}
    for path, m in models.items():
        core = set(core_layers(m))
        formats = Counter(r["format"] for r in m.info()["layers"] if r["name"] in core)
        print(f"{path}: core layers {dict(formats)}")
    times = {path: [] for path in models}
    for m in models.values():
        m.forward(lr, args.mode)   # warm-up
    for _ in range(args.rounds):
        for path, m in models.items():
            start = time.process_time()
            m.forward(lr, args.mode)
            times[path].append(time.process_time() - start)
    base = float(np.median(times[args.models[0]]))
    for path, t in times.items():
        print(f"{path}: {1e3 * np.median(t):.0f} ms cpu ({args.mode}, {width}x{height}, "
              f"{args.threads} threads), {np.median(t) / base:.3f} of the first")


if __name__ == "__main__":
    main()
