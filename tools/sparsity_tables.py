"""The SparSMSR paper's Tables 2 and 3 on sparsr, beside the published numbers.

    python tools/sparsity_tables.py table2 --sensitivity artifacts/sensitivity_psnr.json
    python tools/sparsity_tables.py table3 --models-dir artifacts

table2: PSNR drop for target sparsity S = 5..75 % (step 5) of the core layers, uniform
allocation vs sensitivity-based (dP = 0.04 row), on the evaluation set Set5 + Set14
(mean over its 19 images; the per-set means are in the JSON). The paper used DIV2K val.
table3: PSNR/SSIM on Set5 and Set14 of SMSR (dense mode = "w/o SMM", mask mode) and
SparSMSR 1a..3b; executed MACs at a 640x360 input (a real image: the centre 640x360
crop of Set14 HR barbara, and of monarch, since masks depend on content), the
computation reduction in the 20 core layers, and nonzero parameters. B100 is the
calibration set of the sensitivity measurement and is not used here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from allocate import allocate_by_sensitivity, allocate_uniform, load_sensitivity  # noqa: E402
from sparsity_common import (PAPER_NONZERO_PARAMS, PAPER_TABLE2, PAPER_TABLE3,  # noqa: E402
                             core_layers, dataset_pairs, load_rgb, magnitude_order,
                             input_skip, prune_smallest, shared_root)

EVAL_SETS = ("Set5", "Set14")
MAC_IMAGES = ("Set14/barbara", "Set14/monarch")
MAC_SIZE = (360, 640)   # (h, w) of the network input, as the paper's 640x360


def load_eval_images(sets=EVAL_SETS, scale: int = 2):
    return [(s, name, load_rgb(lr), load_rgb(hr)) for s in sets
            for name, lr, hr in dataset_pairs(s, scale)]


def score(net, images, mode: str = "mask", with_ssim: bool = False, keep_outputs: bool = False):
    """Per-image PSNR (and SSIM) of the network's rounded output."""
    from sparsr.metrics import psnr_y, ssim_y
    from sparsr.metrics import quantize
    rows, outputs = [], []
    for s, name, lr, hr in images:
        sr = quantize(net.forward(lr, mode).output)
        row = {"set": s, "image": name, "psnr": psnr_y(sr, hr, net.scale)}
        if with_ssim:
            row["ssim"] = ssim_y(sr, hr, net.scale)
        rows.append(row)
        if keep_outputs:
            outputs.append(sr)
    return rows, outputs


def means(rows, key="psnr"):
    out = {s: float(np.mean([r[key] for r in rows if r["set"] == s])) for s in
           dict.fromkeys(r["set"] for r in rows)}
    out["all"] = float(np.mean([r[key] for r in rows]))
    return out


def mac_image(spec: str, size=MAC_SIZE) -> np.ndarray:
    """The centre size crop of <set>/HR/<name>.png (the HR image used as a network input)."""
    s, name = spec.split("/")
    img = load_rgb(shared_root() / "data" / s / "HR" / f"{name}.png")
    h, w = size
    if img.shape[0] < h or img.shape[1] < w:
        raise ValueError(f"{spec} is {img.shape[1]}x{img.shape[0]}, smaller than {w}x{h}")
    y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[y:y + h, x:x + w])


# -- Table 2 -------------------------------------------------------------------

def table2(args) -> dict:
    import sparsr
    net = sparsr.load(args.base)
    methods = args.methods
    if "sensitivity" in methods:
        ks, sizes, _ = load_sensitivity(args.sensitivity, args.delta)
    else:
        sizes = {n: int(net.conv_weight(n).size) for n in core_layers(net)}
    originals = {n: net.conv_weight(n).copy() for n in sizes}
    orders = {n: magnitude_order(w) for n, w in originals.items()}
    images = load_eval_images(scale=net.scale)
    out_path = Path(args.output or "artifacts/table2.json")
    report = {"tool": "tools/sparsity_tables.py table2", "eval_sets": list(EVAL_SETS),
              "sensitivity": str(args.sensitivity), "delta": args.delta, "rows": {}}
    if args.resume and out_path.is_file():
        report = json.loads(out_path.read_text())
    t0 = time.perf_counter()
    if "baseline" not in report:
        rows, _ = score(net, images)
        report["baseline"] = means(rows)
    base = report["baseline"]
    print(f"baseline PSNR {base} ({time.perf_counter() - t0:.0f}s per evaluation)", flush=True)
    targets = [s / 100 for s in range(5, 80, 5)]
    for target in targets:
        key = f"{round(100 * target)}"
        row = report["rows"].setdefault(key, {})
        for method in methods:
            if method in row:
                continue
            alloc = (allocate_uniform(sizes, target) if method == "uniform"
                     else allocate_by_sensitivity(ks, sizes, target))
            for n, k in alloc.items():
                net.set_conv_weight(n, prune_smallest(originals[n], k, orders[n]))
            rows, _ = score(net, images)
            m = means(rows)
            row[method] = {"psnr": m, "drop": {s: base[s] - v for s, v in m.items()},
                           "allocation": alloc}
            out_path.write_text(json.dumps(report, indent=1) + "\n")
            print(f"S={key}% {method}: drop {row[method]['drop']['all']:.3f} dB "
                  f"(Set5 {row[method]['drop']['Set5']:.3f}, Set14 {row[method]['drop']['Set14']:.3f}) "
                  f"[{(time.perf_counter() - t0) / 60:.1f} min]", flush=True)
    for n, w in originals.items():
        net.set_conv_weight(n, w)
    print(format_table2(report))
    return report


def format_table2(report) -> str:
    lines = ["| S % | uniform drop dB | sensitivity drop dB | better | paper uniform | paper sensitivity |",
             "|---|---|---|---|---|---|"]
    for key, row in report["rows"].items():
        if "uniform" not in row or "sensitivity" not in row:
            continue
        u, s = row["uniform"]["drop"]["all"], row["sensitivity"]["drop"]["all"]
        better = "sensitivity" if s < u else ("equal" if s == u else "uniform")
        pu, ps = PAPER_TABLE2[int(key)]
        lines.append(f"| {key} | {u:.3f} | {s:.3f} | {better} | {pu:.3f} | {ps:.3f} |")
    return "\n".join(lines)


# -- Table 3 -------------------------------------------------------------------

def core_macs(fwd, core: list[str]) -> tuple[int, int]:
    """(executed, dense) MACs of the core layers in one forward."""
    ex = sum(fwd.layers[n].macs for n in core if n in fwd.layers)
    de = sum(fwd.layers[n].dense_macs for n in core if n in fwd.layers)
    return ex, de


def nonzero_params(tensors) -> tuple[int, int, int, int]:
    """(conv weight nonzeros, conv weights, all-parameter nonzeros, all parameters);
    the channel-mask logits (not used as weights at inference) are left out."""
    conv_nz = conv = all_nz = total = 0
    for k, v in tensors.items():
        if k.endswith("ch_mask"):
            continue
        nz = int(np.count_nonzero(v))
        all_nz += nz
        total += v.size
        if k.endswith(".weight") and v.ndim == 4:
            conv_nz += nz
            conv += v.size
    return conv_nz, conv, all_nz, total


def count_zero_weight_skips(net) -> None:
    """Counts the MACs of "sparse"-format layers as a zero-skipping kernel executes
    them (nonzero weights only), also where the engine runs them on the dense kernel
    (no CSR kernel in the build): the images are unchanged, only the counter."""
    net.count_zero_skips(lambda layer: net.description.get("layers", {}).get(layer, {})
                         .get("format") == "sparse")


def table3(args) -> dict:
    import sparsr
    from sparsr import checkpoint
    models_dir = Path(args.models_dir)
    entries = [("SMSR w/o SMM", args.base, "dense"), ("SMSR", args.base, "mask")]
    entries += [(f"SparSMSR {t}", models_dir / f"sparsmsr_{t}.pt", "mask")
                for t in ("1a", "1b", "2a", "2b", "3a", "3b")]
    images = load_eval_images()
    mac_inputs = {spec: mac_image(spec) for spec in MAC_IMAGES}
    out_path = Path(args.output or "artifacts/table3.json")
    from sparsr.ops.conv import available_formats
    report = {"tool": "tools/sparsity_tables.py table3", "eval_sets": list(EVAL_SETS),
              "engine_formats": sorted(available_formats()),
              "macs_count_zero_weight_skips": bool(args.count_weight_skip),
              "mac_images": list(MAC_IMAGES), "mac_input_size": list(MAC_SIZE), "models": {}}
    outputs_by_weights = {}
    t0 = time.perf_counter()
    for label, path, mode in entries:
        model = sparsr.load(path)
        net = model
        core = core_layers(net)
        if args.count_weight_skip:
            count_zero_weight_skips(net)
        _, tensors, meta = checkpoint.load(path)
        tensors = checkpoint.decode_sparse(tensors)
        conv_nz, conv_total, all_nz, all_total = nonzero_params(tensors)
        entry = {"file": str(path), "mode": mode, "input_skip": input_skip(net),
                 "core_weight_sparsity": 1 - sum(int(np.count_nonzero(net.conv_weight(n)))
                                                 for n in core) / sum(net.conv_weight(n).size for n in core),
                 "conv_nonzeros": conv_nz, "conv_params": conv_total,
                 "param_nonzeros": all_nz, "params": all_total, "macs": {}}
        for spec, img in mac_inputs.items():
            fwd = net.forward(img, mode)
            ex, de = core_macs(fwd, core)
            entry["macs"][spec] = {"total_gmacs": fwd.macs / 1e9,
                                   "core_reduction": 1 - ex / de,
                                   "core_gmacs": ex / 1e9,
                                   "mask_density": [float(m.mean()) for m in fwd.masks]}
        if not (label == "SMSR w/o SMM" and args.skip_dense_quality):
            rows, outs = score(net, images, mode, with_ssim=True, keep_outputs=True)
            entry["psnr"], entry["ssim"] = means(rows, "psnr"), means(rows, "ssim")
            entry["images"] = rows
            # "a" and "b" share weights: their images must be identical.
            key = (meta.get("weight_sparsity", {}).get("target"), mode) if label.startswith("SparSMSR") else None
            if key is not None:
                if key in outputs_by_weights:
                    other, other_outs = outputs_by_weights[key]
                    entry["identical_images_to"] = other
                    entry["identical_images"] = all(np.array_equal(a, b) for a, b in zip(outs, other_outs))
                else:
                    outputs_by_weights[key] = (label, outs)
        report["models"][label] = entry
        out_path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{label}: done [{(time.perf_counter() - t0) / 60:.1f} min]", flush=True)
    print(format_table3(report))
    return report


def format_table3(report) -> str:
    spec = report["mac_images"][0]
    other = report["mac_images"][1:]
    head = ("| model | core sparsity % | Set14 PSNR/SSIM | Set5 PSNR/SSIM | core reduction % | GMACs "
            f"({spec}) | " + " | ".join(f"GMACs ({o})" for o in other) +
            " | paper Set14 | paper Set5 | paper reduction % | paper GFLOPs |")
    lines = [head, "|" + "---|" * (10 + len(other))]
    for label, e in report["models"].items():
        q = lambda s: (f"{e['psnr'][s]:.2f}/{e['ssim'][s]:.4f}" if "psnr" in e else "not run")
        p = PAPER_TABLE3.get(label)
        m = e["macs"][spec]
        cells = [label, f"{100 * e['core_weight_sparsity']:.1f}", q("Set14"), q("Set5"),
                 f"{100 * m['core_reduction']:.1f}", f"{m['total_gmacs']:.2f}"]
        cells += [f"{e['macs'][o]['total_gmacs']:.2f}" for o in other]
        if p:
            cells += [f"{p[3][0]:.2f}/{p[3][1]:.4f}", f"{p[4][0]:.2f}/{p[4][1]:.4f}", f"{p[1]:.1f}",
                      f"{p[2]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| model | nonzero conv weights | conv weights | nonzero params (all) | params (all) | paper |")
    lines.append("|---|---|---|---|---|---|")
    for label, e in report["models"].items():
        if label == "SMSR w/o SMM":
            continue
        paper = PAPER_NONZERO_PARAMS.get(label)
        lines.append(f"| {label} | {e['conv_nonzeros']:,} | {e['conv_params']:,} | "
                     f"{e['param_nonzeros']:,} | {e['params']:,} | "
                     f"{f'{paper // 1000}K' if paper else ''} |")
    ident = [f"{k} = {e['identical_images_to']}: {e['identical_images']}"
             for k, e in report["models"].items() if "identical_images" in e]
    if ident:
        lines.append("")
        lines.append("identical images (a vs b): " + "; ".join(ident))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="table", required=True)
    t2 = sub.add_parser("table2")
    t2.add_argument("--base", default="artifacts/smsr_x2.pt")
    t2.add_argument("--sensitivity", default="artifacts/sensitivity_psnr.json")
    t2.add_argument("--delta", type=float, default=0.04)
    t2.add_argument("-o", "--output")
    t2.add_argument("--resume", action="store_true", help="keep the rows already in --output")
    t2.add_argument("--methods", nargs="+", choices=["uniform", "sensitivity"],
                    default=["uniform", "sensitivity"])
    t3 = sub.add_parser("table3")
    t3.add_argument("--base", default="artifacts/smsr_x2.pt")
    t3.add_argument("--models-dir", default="artifacts")
    t3.add_argument("--skip-dense-quality", action="store_true",
                    help="no PSNR/SSIM for SMSR w/o SMM (dense mode is the slowest)")
    t3.add_argument("--no-count-weight-skip", dest="count_weight_skip", action="store_false",
                    help="count MACs as the engine's kernels execute them (no zero-weight skip "
                         "unless a CSR kernel runs)")
    t3.add_argument("-o", "--output")
    args = p.parse_args(argv)
    if args.table == "table2":
        table2(args)
    else:
        table3(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
