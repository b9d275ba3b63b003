"""Distribute a target weight sparsity over layers (SparSMSR Eq. 3-4) and write a sparse checkpoint.

    python tools/allocate.py artifacts/smsr_x2.pt --sensitivity artifacts/sensitivity_psnr.json \
        --delta 0.04 --target 0.35 -o artifacts/sparse35.pt
    python tools/allocate.py artifacts/smsr_x2.pt --uniform --target 0.35 -o artifacts/uniform35.pt

Allocation rule (Eq. 4 generalised to layers of unequal size N_i):

* budget B = round(S * sum N_i) weights to zero (S = target overall sparsity of the
  target layers);
* sensitivity-based: k'_i = B * k_i / sum_j k_j, k_i the layer's measured sensitivity
  (the most weights it lets go alone within dP, Table 1); with equal N_i this is the
  paper's k'_i = S * M * N * k_i / sum k_i;
* cap: k'_i <= C_i = floor(m * N_i), m = --max-layer-sparsity (default 1: the whole
  layer). Layers whose share exceeds the cap are fixed at it and the rest of the
  budget is shared again among the uncapped layers in proportion to k_i, until no
  share exceeds its cap (water filling); B > sum C_i is an error;
* integers: every layer gets floor(k'_i), and the weights left over go one each to
  the layers with the largest fractional parts (ties: network order), so the counts
  sum to B exactly and never pass a cap;
* uniform baseline: the same rule with k_i = N_i, i.e. every layer S (up to rounding).

Each layer is then magnitude-pruned with exactly its count (tools/sparsity_common.py),
stored as a bit mask (checkpoint.encode_sparse), marked format "sparse", and its
sparsity recorded in the metadata under "weight_sparsity". With --block B, whole blocks
are pruned instead (prune_blocks: B output channels, consecutive in the order the engine
packs them, at one input channel and tap; smallest L2 norm first), as near each layer's
count as whole blocks allow: the unit the block-sparse (bcsr) kernels skip.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparsity_common import (conv_output_order, prune_blocks, prune_smallest,  # noqa: E402
                             resolve_layers)


def _largest_remainder(shares: dict[str, float], total: int, order: list[str]) -> dict[str, int]:
    counts = {n: int(math.floor(shares[n] + 1e-9)) for n in order}
    left = total - sum(counts.values())
    rank = sorted(order, key=lambda n: (-(shares[n] - counts[n]), order.index(n)))
    for n in rank[:max(0, left)]:
        counts[n] += 1
    return counts


def allocate_proportional(weights: Mapping[str, float], sizes: Mapping[str, int], target: float,
                          max_layer_sparsity: float = 1.0) -> dict[str, int]:
    """Weights to zero per layer: budget round(target * sum sizes), shared in proportion to
    `weights`, capped at floor(max_layer_sparsity * size), excess redistributed."""
    order = list(sizes)
    if set(weights) != set(order):
        raise ValueError(f"weights and sizes name different layers: {sorted(set(weights) ^ set(order))}")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target sparsity {target} is not in [0, 1]")
    if any(w < 0 for w in weights.values()):
        raise ValueError("negative allocation weight")
    caps = {n: int(math.floor(max_layer_sparsity * sizes[n] + 1e-9)) for n in order}
    budget = int(round(target * sum(sizes.values())))
    if budget > sum(caps.values()):
        raise ValueError(f"budget {budget} weights exceeds the caps' total {sum(caps.values())} "
                         f"(max layer sparsity {max_layer_sparsity})")
    shares: dict[str, float] = {}
    free = list(order)
    while True:
        remaining = budget - sum(caps[n] for n in order if n not in free)
        total_weight = sum(weights[n] for n in free)
        if remaining > 0 and total_weight <= 0:
            raise ValueError("the uncapped layers all have zero sensitivity: cannot share the rest")
        over = []
        for n in free:
            shares[n] = remaining * weights[n] / total_weight if total_weight > 0 else 0.0
            if shares[n] > caps[n]:
                over.append(n)
        if not over:
            break
        for n in over:
            free.remove(n)
            shares[n] = float(caps[n])
    return _largest_remainder(shares, budget, order)


def allocate_by_sensitivity(sensitivity: Mapping[str, int], sizes: Mapping[str, int],
                            target: float, max_layer_sparsity: float = 1.0) -> dict[str, int]:
    """Eq. 4: k'_i proportional to the measured sensitivity k_i."""
    return allocate_proportional(sensitivity, sizes, target, max_layer_sparsity)


def allocate_uniform(sizes: Mapping[str, int], target: float,
                     max_layer_sparsity: float = 1.0) -> dict[str, int]:
    """The uniform baseline: every layer `target` (largest-remainder rounding)."""
    return allocate_proportional({n: float(s) for n, s in sizes.items()}, sizes, target,
                                 max_layer_sparsity)


def load_sensitivity(path, delta: float) -> tuple[dict[str, int], dict[str, int], dict]:
    """(k_best per layer at this dP, layer sizes, the report) from tools/sensitivity.py."""
    report = json.loads(Path(path).read_text())
    key = next((d for d in report["layers"][report["layers_order"][0]].get("k_best", {})
                if abs(float(d) - delta) < 1e-12), None)
    if key is None:
        raise ValueError(f"{path}: no results for dP={delta}")
    ks, sizes = {}, {}
    for name in report["layers_order"]:
        entry = report["layers"].get(name, {})
        if key not in entry.get("k_best", {}):
            raise ValueError(f"{path}: layer {name} has no result for dP={delta} (run unfinished?)")
        ks[name] = int(entry["k_best"][key])
        sizes[name] = int(entry["weights"])
    return ks, sizes, report


def sparsify_tensors(tensors: Mapping[str, np.ndarray], allocation: Mapping[str, int],
                     block: int = 0, out_orders: Mapping[str, np.ndarray] | None = None) -> dict:
    """A copy of tensors with each layer's `<name>.weight` magnitude-pruned to its count;
    block > 0: whole blocks of that many output channels (prune_blocks), consecutive in
    out_orders[name] (default: the channels' own order)."""
    out = dict(tensors)
    for name, k in allocation.items():
        w = tensors[name + ".weight"]
        if block:
            order = (out_orders or {}).get(name)
            out[name + ".weight"] = prune_blocks(w, k, block, order)
        else:
            out[name + ".weight"] = prune_smallest(w, k)
    return out


def write_sparse_checkpoint(base_path, out_path, allocation: Mapping[str, int], *,
                            input_skip: bool = True, extra_metadata: dict | None = None,
                            block: int = 0) -> dict:
    """Prunes the base checkpoint's layers by `allocation` (block > 0: whole blocks of
    that many output channels, see sparsify_tensors), writes out_path; returns its metadata."""
    import sparsr
    from sparsr import checkpoint
    model, tensors, metadata = checkpoint.load(base_path)
    tensors = checkpoint.decode_sparse(tensors)
    orders = None
    if block:
        net = sparsr.load(base_path)
        orders = {name: conv_output_order(net, name) for name in allocation}
    tensors = sparsify_tensors(tensors, allocation, block, orders)
    layers_meta = {}
    model = json.loads(json.dumps(model))
    model.setdefault("layers", {})
    for name, k in allocation.items():
        w = tensors[name + ".weight"]
        zeros = int(w.size - np.count_nonzero(w))
        layers_meta[name] = {"zeroed": int(k), "weights": int(w.size), "zeros": zeros,
                             "sparsity": zeros / w.size}
        model["layers"].setdefault(name, {})["format"] = "sparse"
    for node in model["graph"]["nodes"]:
        if node["op"] == "smsr_module":
            node.setdefault("attrs", {})["input_skip"] = bool(input_skip)
    tensors = checkpoint.encode_sparse(tensors, [n + ".weight" for n in allocation])
    total = sum(v["weights"] for v in layers_meta.values())
    metadata = dict(metadata)
    metadata["tool"] = "tools/allocate.py"
    metadata["base"] = Path(base_path).name
    metadata["weight_sparsity"] = {
        "overall": sum(v["zeroed"] for v in layers_meta.values()) / max(1, total),
        "zeros_overall": sum(v["zeros"] for v in layers_meta.values()) / max(1, total),
        "block": int(block), "layers": layers_meta, **(extra_metadata or {})}
    checkpoint.save(out_path, model, tensors, metadata)
    return metadata


def format_allocation(allocation, sizes, sensitivity=None) -> str:
    lines = ["| layer | weights | sensitivity k_i | zeroed k'_i | sparsity % |", "|---|---|---|---|---|"]
    for n in allocation:
        s = f"{sensitivity[n]}" if sensitivity else "-"
        lines.append(f"| {n} | {sizes[n]} | {s} | {allocation[n]} | {100 * allocation[n] / sizes[n]:.2f} |")
    total = sum(sizes.values())
    lines.append(f"| total | {total} | | {sum(allocation.values())} | "
                 f"{100 * sum(allocation.values()) / total:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="any base sparsr checkpoint (e.g. artifacts/smsr_x2.pt)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--target", type=float, required=True, help="overall sparsity S of the layers (0..1)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--sensitivity", help="JSON from tools/sensitivity.py")
    how.add_argument("--uniform", action="store_true", help="every layer the target sparsity")
    p.add_argument("--delta", type=float, default=0.04, help="dP row of the sensitivity JSON")
    p.add_argument("--layers", default="core",
                   help='--uniform: "core" (default), "all" or a regex over conv names')
    p.add_argument("--max-layer-sparsity", type=float, default=1.0)
    p.add_argument("--block", type=int, default=0,
                   help="prune whole blocks of this many output channels at one input "
                        "channel and tap (the bcsr kernels' unit; default 0: unstructured)")
    p.add_argument("--no-input-skip", action="store_true",
                   help='model input_skip False: SparSMSR "a" (same image, more MACs)')
    args = p.parse_args(argv)

    if args.sensitivity:
        ks, sizes, report = load_sensitivity(args.sensitivity, args.delta)
        allocation = allocate_by_sensitivity(ks, sizes, args.target, args.max_layer_sparsity)
        extra = {"method": "sensitivity", "sensitivity": Path(args.sensitivity).name,
                 "metric": report["metric"], "delta": args.delta}
    else:
        import sparsr
        net = sparsr.load(args.model)
        names = resolve_layers(net, args.layers)
        if not names:
            p.error(f"--layers {args.layers!r} matches no convolution")
        sizes = {n: int(net.conv_weight(n).size) for n in names}
        ks = None
        allocation = allocate_uniform(sizes, args.target, args.max_layer_sparsity)
        extra = {"method": "uniform"}
    extra.update(target=args.target, max_layer_sparsity=args.max_layer_sparsity)
    write_sparse_checkpoint(args.model, args.output, allocation,
                            input_skip=not args.no_input_skip, extra_metadata=extra,
                            block=args.block)
    print(format_allocation(allocation, sizes, ks))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
