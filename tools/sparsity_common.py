"""Helpers shared by the sparsity tools (sensitivity, allocate, make_sparsmsr, nm_prune,
sls_search, sparsity_tables): data sets, magnitude pruning, the convolutions and core
layers of any graph, restart points, the SparSMSR paper's tables.

Block pruning (``prune_blocks``) zeroes whole blocks instead, the unit of the bcsr kernels:
``block`` output channels at one (input channel, tap), smallest L2 norm first, as near
``k`` weights as whole blocks allow.

Magnitude pruning zeroes exactly ``k`` weights: the ``k`` smallest by |w|, ties broken
by flat index (a stable sort). This is Eq. 1 of the SparSMSR paper with the threshold
t = the k-th smallest |w| (0-based index k of the ascending sort, Algorithm 1 line 8)
whenever |w| has no tie at that position; with a tie Eq. 1 would zero fewer than k,
and the allocation (Eq. 4) counts weights, so counts win. Weights already zero are
among the smallest and count towards k.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent

# SMSR's 20 core 3x3 convs by name: 4 sparse mask convs in each of the 5 SMMs (what
# core_layers finds on SMSR; the tools use core_layers, which knows no names).
SMSR_CORE_LAYERS = r"^body\.\d+\.body\.body\.\d+$"


def shared_root() -> Path:
    return Path(os.environ.get("SPARSR_SHARED", REPO_ROOT.parent / "shared"))


def load_rgb(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def dataset_pairs(name: str, scale: int, limit: int | None = None):
    """[(name, lr_path, hr_path)] of an EDSR-layout set under <shared>/data, sorted by name."""
    base = Path(name) if Path(name).is_dir() else shared_root() / "data" / name
    hr_paths = sorted((base / "HR").glob("*.png"))
    if not hr_paths:
        raise FileNotFoundError(f"{base}/HR: no images (set SPARSR_SHARED?)")
    out = []
    for hr in hr_paths[:limit]:
        lr = base / "LR_bicubic" / f"X{scale}" / f"{hr.stem}x{scale}.png"
        if not lr.is_file():
            raise FileNotFoundError(f"{hr}: its LR image {lr} is missing")
        out.append((hr.stem, lr, hr))
    return out


def center_crop_pair(lr: np.ndarray, hr: np.ndarray, scale: int, size: int | None):
    """The centred size x size LR window and the matching HR window (None: whole image)."""
    if not size:
        return lr, hr[: lr.shape[0] * scale, : lr.shape[1] * scale]
    h, w = lr.shape[:2]
    ch, cw = min(size, h), min(size, w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return (np.ascontiguousarray(lr[y:y + ch, x:x + cw]),
            np.ascontiguousarray(hr[y * scale:(y + ch) * scale, x * scale:(x + cw) * scale]))


def prune_smallest(weight: np.ndarray, k: int, order: np.ndarray | None = None) -> np.ndarray:
    """A copy of weight with exactly its k smallest-|w| entries set to zero (ties by index)."""
    flat = np.asarray(weight, dtype=np.float32).reshape(-1)
    k = int(k)
    if not 0 <= k <= flat.size:
        raise ValueError(f"cannot zero {k} of {flat.size} weights")
    if order is None:
        order = magnitude_order(weight)
    out = flat.copy()
    out[order[:k]] = 0.0
    return out.reshape(np.shape(weight))


def prune_blocks(weight: np.ndarray, k: int, block: int,
                 out_order: np.ndarray | None = None) -> np.ndarray:
    """A copy of OIHW weight with whole blocks zero, the smallest by L2 norm (ties by
    index), about k weights in all: a block is `block` output channels, consecutive in
    out_order (default 0..cout-1; the last block may be short), at one (input channel,
    tap), the unit the bcsr kernels skip. The blocks taken are the prefix of that order
    whose weight count is nearest k (the sparsity asked, up to half a block)."""
    w = np.asarray(weight, dtype=np.float32)
    cout = w.shape[0]
    k = int(k)
    if not 0 <= k <= w.size:
        raise ValueError(f"cannot zero {k} of {w.size} weights")
    if block < 1:
        raise ValueError(f"a block holds at least one output channel, got {block}")
    order = np.arange(cout) if out_order is None else np.asarray(out_order)
    if sorted(order.tolist()) != list(range(cout)):
        raise ValueError(f"out_order is not a permutation of the {cout} output channels")
    rows = w.reshape(cout, -1)[order]                        # (cout, cin * taps), packed order
    groups = [rows[b:b + block] for b in range(0, cout, block)]
    norms = np.concatenate([np.square(g, dtype=np.float64).sum(0) for g in groups])
    sizes = np.concatenate([np.full(rows.shape[1], len(g)) for g in groups])
    by_norm = np.argsort(norms, kind="stable")
    taken = np.concatenate([[0], np.cumsum(sizes[by_norm])])
    n = int(np.argmin(np.abs(taken - k)))
    drop = np.zeros(norms.size, dtype=bool)
    drop[by_norm[:n]] = True
    mask = np.concatenate([np.repeat(d[None], len(g), 0) for d, g in
                           zip(np.split(drop, len(groups)), groups)])
    out = rows.copy()
    out[mask] = 0.0
    result = np.empty_like(out)
    result[order] = out
    return result.reshape(w.shape)


def prune_blocks_nm(weight: np.ndarray, n: int, m: int, block: int,
                    out_order: np.ndarray | None = None) -> np.ndarray:
    """N:M shared by blocks: a copy of OIHW weight where every group of m consecutive
    input channels at one (block, tap) keeps the n channels of largest block L2 norm
    (ties: lower channel; a short last group keeps min(n, its width)) and zeroes the
    others for the whole block. A block is `block` output channels consecutive in
    out_order (default 0..cout-1), as prune_blocks. Every output channel is then N:M
    sparse, and the block pattern is what the bcsr kernels skip."""
    w = np.asarray(weight, dtype=np.float32)
    cout, cin, kh, kw = w.shape
    if not 1 <= n <= m:
        raise ValueError(f"N:M needs 1 <= N <= M, got {n}:{m}")
    if block < 1:
        raise ValueError(f"a block holds at least one output channel, got {block}")
    order = np.arange(cout) if out_order is None else np.asarray(out_order)
    if sorted(order.tolist()) != list(range(cout)):
        raise ValueError(f"out_order is not a permutation of the {cout} output channels")
    rows = w[order]
    out = rows.copy()
    for b in range(0, cout, block):
        norms = np.square(rows[b:b + block], dtype=np.float64).sum(0)   # (cin, kh, kw)
        for g in range(0, cin, m):
            part = norms[g:g + m]                                      # (width, kh, kw)
            rank = np.argsort(np.argsort(-part, axis=0, kind="stable"), axis=0, kind="stable")
            out[b:b + block, g:g + m][:, rank >= n] = 0.0
    result = np.empty_like(out)
    result[order] = out
    return result


def conv_output_order(model, name: str) -> np.ndarray:
    """The order in which the engine packs the output channels of conv `name`:
    an SMSR sparse mask conv stores its dense channels first (ops/smsr.py), every
    other conv in its own order. Blocks of bcsr are consecutive in this order."""
    from sparsr.ops.smsr import channel_masks
    key = name + ".weight"
    cout = int(model.tensors[key].shape[0])
    for n in model.graph.nodes:
        if n.op != "smsr_module":
            continue
        for role, t in n.params.items():
            m = re.match(r"^body\.body\.(\d+)\.weight$", role)
            if m and t == key:
                dense = channel_masks(model.tensors[n.params["body.ch_mask"]])[int(m.group(1))]
                return np.concatenate([np.flatnonzero(dense), np.flatnonzero(~dense)])
    return np.arange(cout)


def magnitude_order(weight: np.ndarray) -> np.ndarray:
    """Flat indices by ascending |w|, ties by index."""
    return np.argsort(np.abs(np.asarray(weight, dtype=np.float32).reshape(-1)), kind="stable")


def target_layers(conv_names, pattern: str = SMSR_CORE_LAYERS) -> list[str]:
    """Conv names matching the regex, in network order (numbers compared as numbers)."""
    rx = re.compile(pattern)
    key = lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]
    return sorted((n for n in conv_names if rx.search(n)), key=key)


# -- any graph: its convolutions, the core layers, restarts ------------------------------

# Upsampling ops: a conv reading their output runs at the output resolution.
_UPSAMPLING = {"pixel_shuffle", "conv_transpose2d"}
# Ops a value passes through unchanged in kind (activations, adds, views).
_PASSING = {"relu", "leaky_relu", "prelu", "sigmoid", "silu", "gelu", "tanh", "clamp", "add",
            "sub", "mul", "concat", "split", "slice"}
# Convolutions of an SMSR module the packed kernels run (and so take formats);
# its channel attention is two matrix products.
_SMSR_PACKED = re.compile(r"^(spa_mask\.[03]|body\.body\.\d+|body\.collect)\.weight$")


@dataclass
class ConvInfo:
    """One convolution of a graph, as the tools see it."""
    name: str                      # its weight tensor without .weight
    node: str                      # the node that owns it
    shape: tuple                   # (cout, cin / groups, kh, kw)
    groups: int = 1
    packed: bool = True            # runs on the packed kernels: takes dense/csr/bcsr/nm/sparse
    core: bool = False             # a body layer (see core_layers)

    @property
    def formats(self) -> tuple[str, ...]:
        return ("dense", "csr", "bcsr", "nm", "sparse") if self.packed else ("dense", "sparse")


def conv_table(model) -> dict[str, ConvInfo]:
    """Every convolution of a loaded model (conv2d nodes and the packed convs of
    SMSR modules), in graph order, read from Model.graph and Model.tensors."""
    g = model.graph
    producers = g.producers()
    consumers = g.consumers()
    nodes = g.nodes
    upsampled: set[str] = set()      # values computed at the output resolution
    reduced: set[str] = set()        # values at a lower resolution (strided convs, pools)
    for n in nodes:
        if n.op in _UPSAMPLING or (n.op == "resize" and any(v in upsampled for v in n.inputs)):
            upsampled.update(n.outputs)
        elif n.op == "resize" and float(n.attrs.get("scale", 1.0)) > 1.0 and len(n.inputs) == 1:
            upsampled.update(n.outputs)
        elif any(v in upsampled for v in n.inputs):
            upsampled.update(n.outputs)
        if n.op == "resize":
            continue   # back to the size of a value, or scaled: not reduced
        if (n.op in ("max_pool", "avg_pool", "pixel_unshuffle")
                or (n.op == "conv2d" and _as_pair(n.attrs.get("stride", 1)) != (1, 1))
                or (n.op != "concat" and any(v in reduced for v in n.inputs))):
            reduced.update(n.outputs)

    def feeds_upsampling(value: str, depth: int = 0) -> bool:
        for j in consumers.get(value, []):
            m = nodes[j]
            if m.op in _UPSAMPLING:
                return True
            if m.op in ("relu", "leaky_relu", "prelu") and depth < 4 \
                    and feeds_upsampling(m.outputs[0], depth + 1):
                return True
        return False

    in_channels = model.io.channels
    out: dict[str, ConvInfo] = {}
    for n in nodes:
        if n.op == "conv2d":
            w = model.tensors[n.params["weight"]]
            kh, kw = int(w.shape[2]), int(w.shape[3])
            stride = n.attrs.get("stride", 1)
            dil = n.attrs.get("dilation", 1)
            pad = n.attrs.get("padding", [kh // 2 * _first(dil), kw // 2 * _first(dil)])
            packed = (kh == kw and kh in (1, 3) and _as_pair(stride) == (1, 1)
                      and _as_pair(dil) == (1, 1) and _as_pair(pad) == (kh // 2, kw // 2))
            name = n.params["weight"][:-len(".weight")]
            groups = int(n.attrs.get("groups", 1))
            reads_image = w.shape[1] * groups <= in_channels
            core = (packed and kh == 3 and not reads_image and n.inputs[0] not in upsampled
                    and n.inputs[0] not in reduced and not feeds_upsampling(n.outputs[0]))
            out.setdefault(name, ConvInfo(name, n.name, tuple(int(d) for d in w.shape), groups,
                                          packed, core))
        elif n.op == "smsr_module":
            for role, t in n.params.items():
                if _SMSR_PACKED.match(role):
                    name = t[:-len(".weight")]
                    core = role.startswith("body.body.")   # SMSR's sparse mask convs
                    out.setdefault(name, ConvInfo(name, n.name, tuple(model.tensors[t].shape),
                                                  1, True, core))
    order = {name: i for i, name in enumerate(model.conv_names())}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def core_layers(model) -> list[str]:
    """The body layers the sparsity tools target by default: SMSR's sparse mask
    convs when the graph has SMSR modules (the SparSMSR paper's 20 core layers),
    else every packed 3x3 conv that reads features (not the image) at the input
    resolution (not upsampled, nor reduced by a strided conv or a pool, as in RFDN's
    attention branch) and does not feed an upsampler (pixel shuffle, transposed conv)."""
    table = conv_table(model)
    if any(n.op == "smsr_module" for n in model.graph.nodes):
        return [c.name for c in table.values()
                if c.core and model.graph.node(c.node).op == "smsr_module"]
    return [c.name for c in table.values() if c.core]


def resolve_layers(model, which: str = "core") -> list[str]:
    """The tools' --layers: "core", "all" (every convolution) or a regex over conv names."""
    if which == "core":
        return core_layers(model)
    names = list(conv_table(model))
    if which == "all":
        return names
    return target_layers(names, which)


def restart_nodes(model, layers: Iterable[str] | None = None, limit: int = 32) -> list[str]:
    """Nodes a run keeps its values at, so that a change of one of `layers`
    (default: every conv) re-runs only from there: the layers' own nodes (an SMSR
    layer's: its module), at most `limit` spread evenly over the run."""
    order = model.run_order()
    position = {n: i for i, n in enumerate(order)}
    names = list(conv_table(model)) if layers is None else list(layers)
    nodes = sorted({model.node_of(c) for c in names} & set(position), key=position.get)
    if len(nodes) > limit > 0:
        nodes = [nodes[round(i * (len(nodes) - 1) / (limit - 1))] for i in range(limit)]
        nodes = list(dict.fromkeys(nodes))
    return nodes


def restart_of(model, name: str, nodes: Iterable[str] | None = None) -> str | None:
    """Where a run restarts after conv `name` changed: the last of `nodes`
    (default restart_nodes(model)) that the run reaches no later than the conv's
    own node; None: from the start."""
    order = model.run_order()
    position = {n: i for i, n in enumerate(order)}
    own = position.get(model.node_of(name))
    if own is None:
        return None
    nodes = restart_nodes(model) if nodes is None else nodes
    before = [n for n in nodes if position.get(n, own + 1) <= own]
    return max(before, key=position.get) if before else None


def _as_pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _first(v) -> int:
    return int(v) if isinstance(v, int) else int(v[0])


def input_skip(model) -> bool:
    """Whether the SMSR modules skip the sparse inputs at unimportant pixels."""
    return all(n.attrs.get("input_skip", True) for n in model.graph.nodes
               if n.op == "smsr_module")


# Published numbers of the SparSMSR paper (x2 SMSR), quoted for side-by-side printing.
PAPER_TABLE1 = {  # layer (1-based) -> max sparsity % at dP = 0.01, 0.02, 0.03, 0.04 dB
    1: (34.52, 42.93, 49.70, 52.56), 2: (38.41, 53.15, 58.38, 62.83),
    3: (49.12, 58.75, 62.25, 67.61), 4: (60.54, 67.11, 73.98, 80.66),
    5: (36.27, 44.94, 55.37, 59.70), 6: (35.74, 47.28, 50.68, 57.06),
    7: (50.12, 59.38, 71.12, 75.21), 8: (55.65, 67.10, 74.59, 79.48),
    9: (42.52, 51.26, 55.88, 61.33), 10: (37.67, 46.18, 52.16, 56.72),
    11: (38.10, 44.85, 47.62, 48.60), 12: (43.14, 49.08, 52.13, 54.53),
    13: (43.79, 53.33, 61.59, 66.94), 14: (52.50, 61.36, 67.52, 70.55),
    15: (52.42, 60.71, 70.84, 75.98), 16: (58.57, 69.96, 74.93, 77.38),
    17: (40.75, 52.55, 57.57, 61.75), 18: (43.63, 53.54, 57.89, 65.49),
    19: (48.32, 61.67, 67.07, 71.02), 20: (58.60, 68.91, 73.81, 78.14),
}
PAPER_TABLE1_DELTAS = (0.01, 0.02, 0.03, 0.04)

PAPER_TABLE2 = {  # target sparsity % -> (uniform, sensitivity-based) PSNR drop, dB (DIV2K val)
    5: (0.001, 0.000), 10: (0.003, 0.002), 15: (0.009, 0.007), 20: (0.016, 0.018),
    25: (0.034, 0.031), 30: (0.072, 0.058), 35: (0.125, 0.101), 40: (0.204, 0.155),
    45: (0.307, 0.221), 50: (0.450, 0.352), 55: (0.662, 0.485), 60: (0.799, 0.631),
    65: (0.971, 0.805), 70: (1.196, 1.050), 75: (1.356, 1.269),
}

# Table 3, x2: weight sparsity %, core-layer computation reduction %, total GFLOPs
# (the paper's "GFLOPs" at 640x360 are MACs), PSNR/SSIM on Set14 and Set5.
PAPER_TABLE3 = {
    "SMSR w/o SMM": (0.0, 0.0, 212.44, (33.64, 0.9179), (38.00, 0.9601)),
    "SMSR": (0.0, 53.4, 133.03, (33.62, 0.9177), (37.99, 0.9601)),
    "SparSMSR 1a": (6.5, 52.7, 134.21, (33.62, 0.9177), (37.99, 0.9601)),
    "SparSMSR 1b": (6.5, 56.4, 128.00, (33.62, 0.9177), (37.99, 0.9601)),
    "SparSMSR 2a": (24.0, 61.3, 119.67, (33.60, 0.9172), (37.98, 0.9601)),
    "SparSMSR 2b": (24.0, 64.2, 114.76, (33.60, 0.9172), (37.98, 0.9601)),
    "SparSMSR 3a": (35.0, 67.5, 109.21, (33.55, 0.9171), (37.94, 0.9600)),
    "SparSMSR 3b": (35.0, 69.9, 105.05, (33.55, 0.9171), (37.94, 0.9600)),
}
PAPER_NONZERO_PARAMS = {"SMSR": 985_000, "SparSMSR 2b": 808_000, "SparSMSR 3b": 727_000}
