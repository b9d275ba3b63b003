"""Peak memory and speed of band execution, as a user sees them.

    python benchmarks/band_memory.py MODELS_DIR [--cases smsr_x2:3840x2160 smsr_x2:1920x1080:1G ...]
        [--torch] [--speed smsr_x2 ...] [--rounds 5] [--large-rounds 1]
        [--speed-sizes 640x360 1920x1080 3840x2160]

Memory: each case is one `sparsr upscale` process under /usr/bin/time -v; its
peak RSS (the whole process) is printed beside the goal and, with --torch,
beside PyTorch's whole-image run of the same graph (tools/torch_graph.py, 2
threads, inference mode; "does not fit" with the reason when it is stopped
past 60 % of the memory available or its time, or fails).
The input is a Set14 image resized to the case's size. A case with a third
field (NAME:WxH:SIZE) runs with `--max-memory SIZE` and is held to that size
(within 10 %) instead of the issue's goal.

Speed, per model, in one process after a warm-up run: at 640x360 the
whole-image run and band runs (tile = 1/2 and 1/4 of the height)
interleaved, medians of CPU time (the machine is shared: wall time is printed
too); then pixels per CPU-second at 640x360, 1920x1080 and 3840x2160 (the 640x360
image mirrored side by side: the same content at every size) with the
default execution, interleaved, medians, each against 640x360's.
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

GOALS = {"x2_8k": 2.5e9, "x4_4k": 1.5e9}     # the GB


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


def _bytes(text: str) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from sparsr.cli import _bytes as parse
    return parse(text)


def _timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def speed(model_path: Path, rounds: int, large_rounds: int, folder: Path,
          sizes: tuple = ((640, 360), (1920, 1080), (3840, 2160))) -> None:
    import sparsr
    from PIL import Image

    m = sparsr.load(model_path)
    image = lambda w, h: np.asarray(Image.open(test_image((w, h), folder)), np.float32)
    rgb = image(640, 360)
    variants = {"whole": None, "tile 180": 180, "tile 90": 90}
    m.process(rgb)
    times: dict[str, list] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, tile in variants.items():
            times[name].append(_timed(lambda: m.process(rgb, tile=tile)))
    base = _medians(times["whole"])[0]
    for name, ts in times.items():
        cpu, wall = _medians(ts)
        print(f"  640x360 {name:9s} cpu {cpu:7.2f} s  x{cpu / base:5.2f} of whole   "
              f"(wall {wall:6.2f} s)", flush=True)
    if len(sizes) < 2:
        return
    # The larger inputs are the small one mirrored side by side, so that an
    # SMSR mask (which skips the flat pixels) has the same share of work at
    # every size: a resized photo is smoother the larger it is.
    inputs = {(w, h): np.pad(rgb, ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0)),
                             mode="symmetric") for w, h in sizes}
    for s in sizes[1:]:
        m.process(inputs[s])                      # warm: first touches of this much memory
    px: dict[tuple, list] = {s: [] for s in sizes}
    for _ in range(large_rounds):
        for s in sizes:
            px[s].append(_timed(lambda: m.process(inputs[s])))
    small = None
    for (w, h), ts in px.items():
        cpu, wall = _medians(ts)
        rate = h * w / cpu / 1e6
        small = small or rate
        ex = m.execution(h, w)
        print(f"  {w}x{h}: {rate:6.3f} Mpx per CPU-s, x{rate / small:5.2f} of 640x360's "
              f"(wall {h * w / wall / 1e6:6.3f} Mpx/s; bands of {ex.band_rows or h} rows"
              f"{', stored in files' if ex.spill else ''})", flush=True)


TORCH_CHILD = """
import resource, sys, numpy as np, torch
from PIL import Image
sys.path[:0] = [sys.argv[3], sys.argv[4]]
from torch_graph import GraphModule
torch.set_num_threads(2)
net = GraphModule.from_checkpoint(sys.argv[1]).eval()
x = torch.from_numpy(np.asarray(Image.open(sys.argv[2]).convert("RGB"), np.float32))
with torch.inference_mode():
    y = net.upscale_batch(x.permute(2, 0, 1)[None].contiguous())
print(tuple(y.shape), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def torch_rss(model: Path, image: Path, timeout: float) -> tuple[int | None, str]:
    """Peak RSS of PyTorch's whole-image run (its own getrusage, as
    /usr/bin/time reports it), or None and why it did not finish. The run is
    stopped when its RSS passes 60 % of the memory available (an address-space
    cap would stop PyTorch at once: it reserves far more than it touches)."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "python"))
    import sparsr
    from sparsr.executor import available_memory
    limit = int(0.6 * (available_memory() or 8 << 30))
    package = Path(sparsr.__file__).resolve().parents[1]    # the child imports this sparsr
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-c", TORCH_CHILD, str(model), str(image),
                                  str(root / "tools"), str(package)], stdout=subprocess.PIPE,
                                 stderr=err, text=True)
        deadline, peak = time.monotonic() + timeout, 0
        try:
            while child.poll() is None:
                peak = max(peak, _rss(child.pid))
                if peak > limit:
                    return None, f"stopped at {peak / 1e9:.1f} GB, 60 % of the memory available"
                if time.monotonic() > deadline:
                    return None, f"stopped after {timeout:.0f} s"
                time.sleep(0.05)
            out = child.stdout.read().split()
            if child.returncode == 0 and out:
                return int(out[-1]) * 1024, ""
            err.seek(0)
            last = (err.read().strip().splitlines() or [f"exit code {child.returncode}"])[-1]
            return None, f"failed: {last}"
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", type=Path)
    p.add_argument("--cases", nargs="*", default=[
        "smsr_x2:3840x2160", "carn_m_x4:1920x1080", "imdn_x4:1920x1080", "rfdn_aim_x4:1920x1080",
        "rlfn_ntire2022_x4:1920x1080", "span_ch28_x4:1920x1080",
        "realesr_animevideov3_x4:1920x1080"])
    p.add_argument("--speed", nargs="*", default=[])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--large-rounds", type=int, default=1)
    p.add_argument("--speed-sizes", nargs="*", default=["640x360", "1920x1080", "3840x2160"],
                   help="pixel rates at these sizes, against the first's (one size: the "
                        "tile ratios alone)")
    p.add_argument("--torch", action="store_true", help="PyTorch's whole-image peak RSS too")
    p.add_argument("--torch-timeout", type=float, default=900)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for case in args.cases:
            name, size, *budget = case.split(":")
            w, h = (int(v) for v in size.split("x"))
            model, image = args.models / f"{name}.pt", test_image((w, h), folder)
            extra = ["--max-memory", budget[0]] if budget else []
            rss, seconds = peak_rss(model, image, folder / "out.png", extra)
            if budget:
                goal = _bytes(budget[0])
                line = (f"{name:24s} {w}x{h}: peak RSS {rss / 1e9:5.2f} GB with --max-memory "
                        f"{budget[0]} = {goal / 1e9:.2f} GB: x{rss / goal:.2f} "
                        f"{'ok' if rss <= 1.1 * goal else 'OVER'}, {seconds:6.1f} s")
            else:
                goal = GOALS["x2_8k" if name.endswith("x2") else "x4_4k"]
                line = (f"{name:24s} {w}x{h}: peak RSS {rss / 1e9:5.2f} GB (goal "
                        f"{goal / 1e9:.1f}) {'ok' if rss <= goal else 'OVER'}, {seconds:6.1f} s")
            if args.torch:
                t, why = torch_rss(model, image, args.torch_timeout)
                line += (f"; PyTorch whole image: does not fit ({why})" if t is None else
                         f"; PyTorch whole image {t / 1e9:5.2f} GB (x{t / rss:.1f})")
            print(line, flush=True)
        sizes = tuple(tuple(int(v) for v in size.split("x")) for size in args.speed_sizes)
        for name in args.speed:
            print(name, flush=True)
            speed(args.models / f"{name}.pt", args.rounds, args.large_rounds, folder, sizes)


if __name__ == "__main__":
    main()
