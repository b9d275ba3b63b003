"""Pruned models against their dense base on the sparsr engine: quality, executed MACs, time.

    python tools/compare_models.py --base artifacts/rfdn_x4.pt \
        --model "2:4 all=artifacts/rfdn_x4_2of4_all.pt" --sets Set5 Set14 --output-size 720 1280

Per model: mean Y PSNR / SSIM on the sets (full images, mask mode), the MACs the engine
executes on one input of --output-size / scale (the centre crop of Set14 barbara's HR
image; nonzero weights only in sparse layers) and the median wall time of that run,
measured interleaved with the base (one round runs every model once, so load from other
processes hits them alike), with its ratio to the base.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate import evaluate_datasets  # noqa: E402
from sparsity_tables import mac_image  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the dense checkpoint")
    p.add_argument("--model", action="append", default=[], metavar="LABEL=PATH")
    p.add_argument("--sets", nargs="*", default=["Set5", "Set14"])
    p.add_argument("--output-size", type=int, nargs=2, default=[720, 1280], metavar=("H", "W"))
    p.add_argument("--image", help="the timed input: the centre crop of this image "
                                   "(default: Set14 barbara's HR image)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args(argv)
    import sparsr
    sparsr.set_num_threads(args.threads)
    specs = [("dense", args.base)] + [tuple(s.rsplit("=", 1)) for s in args.model]
    models = [(label, sparsr.load(path)) for label, path in specs]
    scale = models[0][1].scale
    size = (args.output_size[0] // scale, args.output_size[1] // scale)
    if args.image:
        from sparsity_common import load_rgb
        full = load_rgb(args.image)
        if full.shape[0] < size[0] or full.shape[1] < size[1]:
            p.error(f"{args.image} is smaller than the {size[1]}x{size[0]} input")
        y, x = (full.shape[0] - size[0]) // 2, (full.shape[1] - size[1]) // 2
        img = full[y:y + size[0], x:x + size[1]].copy()
    else:
        img = mac_image("Set14/barbara", size)
    rows = []
    for label, m in models:
        info = m.info(image=img)
        quality = {r.dataset: {"psnr": r.psnr, "ssim": r.ssim}
                   for r in evaluate_datasets(m.upscale, args.sets, scale)} if args.sets else {}
        rows.append({"label": label, "path": m.path, "executed_gmacs": info["executed_macs"] / 1e9,
                     "dense_gmacs": info["dense_macs"] / 1e9, "sets": quality})
    times = [[] for _ in models]
    for round_ in range(args.repeats + 1):
        for (_, m), out in zip(models, times):
            start = time.perf_counter()
            m.forward(img)
            if round_:
                out.append(time.perf_counter() - start)
    base_t = statistics.median(times[0])
    for row, t in zip(rows, times):
        row["seconds"] = statistics.median(t)
        row["time_ratio"] = row["seconds"] / base_t
        row["per_round_ratio"] = statistics.median(a / b for a, b in zip(t, times[0]))
    names = [Path(s).name for s in args.sets]   # DatasetResult.dataset: the directory name
    head = "| model | " + " | ".join(f"{s} PSNR / SSIM" for s in names) + \
        f" | GMACs executed ({args.output_size[1]}x{args.output_size[0]} out) | time s | vs dense |"
    print(head)
    print("|---" * (4 + len(args.sets)) + "|")
    for r in rows:
        cells = [f"{r['sets'][s]['psnr']:.3f} / {r['sets'][s]['ssim']:.4f}" for s in names]
        print(f"| {r['label']} | " + " | ".join(cells) + f" | {r['executed_gmacs']:.2f} "
              f"(dense {r['dense_gmacs']:.2f}) | {r['seconds']:.3f} | x{r['time_ratio']:.3f} "
              f"(per round x{r['per_round_ratio']:.3f}) |")
    print(f"{args.threads} thread(s), median of {args.repeats} interleaved rounds, input "
          f"{size[1]}x{size[0]} (centre of {args.image or 'Set14 barbara HR'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
