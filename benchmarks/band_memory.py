"""Peak memory and speed of band execution, as a user sees them.

    python benchmarks/band_memory.py MODELS_DIR [--cases smsr_x2:3840x2160 rfdn_x4:1920x1080 ...]
        [--speed smsr_x2 ...] [--rounds 5]

Memory: each case is one `sparsr upscale` process under /usr/bin/time -v; its
peak RSS (the whole process) is printed beside the goal. The input is a Set14
image resized to the case's size. Speed: at 640x360 the whole-image run and
band runs (tile = 1/2 and 1/4 of the height) interleaved, medians; then
pixels per second at 640x360, 1920x1080 and 3840x2160 with the default choice.
MODELS_DIR holds converted checkpoints named <name>.pt (sparsr convert).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOALS = {"x2_8k": 2.5 * 2**30, "x4_4k": 1.5 * 2**30}


def shared() -> Path:
    return Path(os.environ.get("SPARSR_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def test_image(size: tuple[int, int], folder: Path) -> Path:
    from PIL import Image

    w, h = size
    path = folder / f"in_{w}x{h}.png"
    if not path.exists():
        src = sorted((shared() / "data" / "Set14" / "HR").iterdir())[0]
        Image.open(src).convert("RGB").resize((w, h), Image.Resampling.BICUBIC).save(path)
    return path


def peak_rss(model: Path, image: Path, out: Path, extra: list[str]) -> tuple[int, float]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "sparsr.cli", "upscale", str(image),
           "-m", str(model), "-o", str(out), "--force", "-q"] + extra
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    return kb * 1024, seconds


def speed(model_path: Path, rounds: int) -> None:
    import sparsr

    m = sparsr.load(model_path)
    rng = np.random.default_rng(0)
    rgb = rng.random((360, 640, 3), dtype=np.float32)
    variants = {"whole": None, "tile 180": 180, "tile 90": 90}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, tile in variants.items():
            t = time.perf_counter()
            m.process(rgb, tile=tile)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["whole"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  640x360 {name:9s} {med:7.3f} s  x{med / base:5.2f} of whole")
    for h, w in ((360, 640), (1080, 1920), (2160, 3840)):
        x = rng.random((h, w, 3), dtype=np.float32)
        t = time.perf_counter()
        m.process(x)
        dt = time.perf_counter() - t
        ex = m.execution(h, w)
        print(f"  {w}x{h}: {h * w / dt / 1e6:6.3f} Mpx/s (bands of {ex.band_rows or h} rows)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", type=Path)
    p.add_argument("--cases", nargs="*", default=[
        "smsr_x2:3840x2160", "carn_m_x4:1920x1080", "imdn_x4:1920x1080", "rfdn_aim_x4:1920x1080",
        "rlfn_ntire2022_x4:1920x1080", "span_ch28_x4:1920x1080",
        "realesr_animevideov3_x4:1920x1080"])
    p.add_argument("--speed", nargs="*", default=[])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for case in args.cases:
            name, size = case.split(":")
            w, h = (int(v) for v in size.split("x"))
            goal = GOALS["x2_8k" if name.endswith("x2") else "x4_4k"]
            rss, seconds = peak_rss(args.models / f"{name}.pt", test_image((w, h), folder),
                                    folder / "out.png", [])
            print(f"{name:24s} {w}x{h}: peak RSS {rss / 2**30:5.2f} GiB (goal "
                  f"{goal / 2**30:.1f}) {'ok' if rss <= goal else 'OVER'}, {seconds:6.1f} s",
                  flush=True)
    for name in args.speed:
        print(name)
        speed(args.models / f"{name}.pt", args.rounds)


if __name__ == "__main__":
    main()
