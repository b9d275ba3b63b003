"""N:M results of any sparsr model in the form of the SLS paper's Table 2: PSNR/SSIM vs GMACs.

    python tools/nm_tables.py --base artifacts/smsr_x2.pt \
        --model "One-shot 2:4=artifacts/nm/oneshot_2of4.pt" --model "SLS 1/4=artifacts/nm/sls_q4.pt" \
        --json artifacts/nm/table.json

Per model: Set5 and Set14 mean Y PSNR/SSIM on the full images (the sparsr engine when it
has the "nm" kernels, else the graph in PyTorch, tools/torch_graph.py; the column says
which), and GMACs at a --mac-size input (default 640x360; 320x180 for a x4 network's
1280x720 output):
* core (Eq. 5): the core convs' (sparsity_common.core_layers) dense MACs times N/M per layer;
* net (masks): every conv's MACs executed in SMSR mask mode by the sparsr engine (dense
  kernels) on the centre 640x360 crop of Set14 barbara (masks depend on content), the core
  convs scaled by N/M (Eq. 5 per layer);
* net (engine): once the engine has the nm kernels, the MACs its own kernels count on the
  same image (nm layers count their nonzeros and, as they run, their whole input rows).
The fine-tuning steps and time, and the searched N of every SLS model, come from the
checkpoints' metadata. B100 (the training set) is not evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nm_common import EVAL_SETS, evaluate_model, load_checkpoint  # noqa: E402
from sparsity_common import core_layers  # noqa: E402

MAC_IMAGE = "Set14/barbara"
MAC_SIZE = (360, 640)


def nm_layers(model: dict) -> dict[str, tuple[int, int]]:
    return {n: (v["options"]["n"], v["options"]["m"]) for n, v in model.get("layers", {}).items()
            if v.get("format") == "nm"}


def macs(path) -> dict:
    """Core (Eq. 5) and whole-net executed GMACs at MAC_SIZE of an N:M checkpoint."""
    import sparsr
    from sparsr import checkpoint
    from sparsity_tables import mac_image
    model, tensors, metadata = load_checkpoint(path)
    nm = nm_layers(model)
    plain = json.loads(json.dumps(model))
    plain["layers"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = Path(tmp) / "dense.pt"
        checkpoint.save(dense_path, plain, tensors, {})
        dense_model = sparsr.load(dense_path)
        info = dense_model.info(image=mac_image(MAC_IMAGE, MAC_SIZE))
        core = core_layers(dense_model)
    executed = info["executed_macs_per_layer"]
    h, w = MAC_SIZE
    core_dense = core_nm = 0.0
    for name in core:
        shape = tensors[name + ".weight"].shape
        dense = float(shape[0] * shape[1] * shape[2] * shape[3] * h * w)   # groups: cin / g
        n, m = nm.get(name, (1, 1))
        core_dense += dense
        core_nm += dense * n / m
    net = sum(v * (nm[k][0] / nm[k][1] if k in nm else 1.0) for k, v in executed.items())
    return {"core_gmacs": core_nm / 1e9, "core_dense_gmacs": core_dense / 1e9,
            "net_gmacs_masked": net / 1e9, "mac_image": MAC_IMAGE}


def engine_macs(path) -> float | None:
    """Whole-net GMACs the engine's own kernels execute (nm layers: their nonzeros), or None
    before the engine has the nm kernels."""
    import sparsr
    from nm_common import nm_kernels_available
    from sparsity_tables import mac_image
    if not nm_kernels_available():
        return None
    return sparsr.load(path).info(image=mac_image(MAC_IMAGE, MAC_SIZE))["executed_macs"] / 1e9


def describe(path) -> dict:
    model, _, metadata = load_checkpoint(path)
    nm = nm_layers(model)
    info = metadata.get("nm", {})
    ft = info.get("finetune")
    search = info.get("search")
    row = {"path": str(path), "tool": metadata.get("tool", "tools/convert.py"),
           "nm": {k: list(v) for k, v in nm.items()},
           "finetune_steps": ft["steps"] if ft else 0,
           "finetune_seconds": ft["seconds"] if ft else 0.0}
    if search:
        row["search"] = search
    return row


def format_table(rows: list[dict]) -> str:
    sets = list(EVAL_SETS)
    head = ("| method | core N:M | fine-tuning | core GMACs (Eq. 5) | net GMACs (masks) | "
            "net GMACs (engine) | "
            + " | ".join(f"{s} PSNR / SSIM" for s in sets) + " |")
    lines = [head, "|" + "---|" * (6 + len(sets))]
    for r in rows:
        ns = sorted({tuple(v) for v in r["nm"].values()})
        if not ns:
            nm_text = "dense"
        elif len(ns) == 1:
            nm_text = f"{ns[0][0]}:{ns[0][1]}"
        else:
            nm_text = f"per layer, M={ns[0][1]}"
        ft = (f"{r['finetune_steps']} steps, {r['finetune_seconds'] / 60:.1f} min"
              if r["finetune_steps"] else "none")
        if r.get("search"):
            ft = f"search {r['search']['steps']} steps, {r['search']['seconds'] / 60:.1f} min; " + ft
        cells = [f"{r['eval']['sets'][s]['psnr']:.2f} / {r['eval']['sets'][s]['ssim']:.4f}" for s in sets]
        lines.append(f"| {r['label']} | {nm_text} | {ft} | {r['macs']['core_gmacs']:.2f} | "
                     f"{r['macs']['net_gmacs_masked']:.2f} | "
                     + (f"{r['macs']['net_gmacs_engine']:.2f}" if r["macs"].get("net_gmacs_engine")
                        else "-") + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_layer_n(rows: list[dict]) -> str:
    searched = [r for r in rows if r["nm"] and len({tuple(v) for v in r["nm"].values()}) > 1]
    if not searched:
        return ""
    layers = list(searched[0]["nm"])
    short = [str(i + 1) for i in range(len(layers))]
    lines = ["| model | " + " | ".join(short) + " | mean N |", "|---|" + "---|" * (len(layers) + 1)]
    for r in searched:
        ns = [r["nm"][n][0] for n in layers]
        lines.append(f"| {r['label']} | " + " | ".join(map(str, ns)) + f" | {sum(ns) / len(ns):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the dense checkpoint (first row)")
    p.add_argument("--mac-size", type=int, nargs=2, default=list(MAC_SIZE), metavar=("H", "W"),
                   help="network input size of the GMACs (default 360 640)")
    p.add_argument("--model", action="append", default=[], metavar="LABEL=PATH")
    p.add_argument("--json", help="write (and reuse, by path and mtime) the rows here")
    p.add_argument("--engine", choices=["auto", "sparsr", "torch"], default="auto",
                   help="auto: the sparsr engine when it has the nm kernels, else PyTorch")
    args = p.parse_args(argv)
    import torch
    import sparsr
    torch.set_num_threads(1)
    sparsr.set_num_threads(1)
    cache = {}
    if args.json and Path(args.json).is_file():
        cache = {(r["path"], r.get("mtime")): r for r in json.loads(Path(args.json).read_text())["rows"]}
    engine = {"auto": None, "sparsr": True, "torch": False}[args.engine]
    if engine is None:
        from nm_common import nm_kernels_available
        engine = nm_kernels_available()
    evaluator = "sparsr engine" if engine else "tools/torch_graph.py"
    global MAC_SIZE
    MAC_SIZE = tuple(args.mac_size)
    cache = {key: r for key, r in cache.items() if r["eval"]["evaluated_with"].startswith(evaluator)}
    rows = []
    for spec in [f"dense weights={args.base}"] + args.model:
        label, _, path = spec.rpartition("=")   # labels may hold "="
        mtime = Path(path).stat().st_mtime
        if (str(path), mtime) in cache:
            row = dict(cache[(str(path), mtime)], label=label)
        else:
            start = time.perf_counter()
            row = describe(path)
            row.update(label=label, mtime=mtime, macs=macs(path),
                       eval=evaluate_model(path, EVAL_SETS, engine))
            row["eval_seconds"] = time.perf_counter() - start
            print(f"{label}: " + ", ".join(f"{s} {v['psnr']:.3f}" for s, v in row["eval"]["sets"].items())
                  + f" ({row['eval_seconds']:.0f} s)", flush=True)
        if row["macs"].get("net_gmacs_engine") is None:
            row["macs"]["net_gmacs_engine"] = engine_macs(path)
        rows.append(row)
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print()
    print(format_table(rows))
    print(f"\nPSNR/SSIM: {rows[0]['eval']['evaluated_with']}; GMACs at {MAC_SIZE[1]}x{MAC_SIZE[0]} "
          f"(net: mask mode on the centre crop of {MAC_IMAGE})")
    layer_n = format_layer_n(rows)
    if layer_n:
        print("\nSearched N per core layer (" + ", ".join(
            f"{i + 1} = {n}" for i, n in enumerate(next(
                r for r in rows if len({tuple(v) for v in r["nm"].values()}) > 1)["nm"]))
            + "):\n" + layer_n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
