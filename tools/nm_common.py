"""Helpers shared by the N:M sparsity tools (nm_prune, sls_search, nm_tables).

N:M along input channels: for a conv weight (cout, cin, kh, kw), every group of M
consecutive input channels at one (cout, ky, kx) keeps at most N nonzeros (SLS paper
section 3.1). When M does not divide cin the last group is short (cin mod M channels,
RFDN's 50 at M = 4: 12 groups of 4 and one of 2) and keeps at most N too, as the
kernels do; a layer needs cin >= M (per group, for grouped convs). Inside a group,
weights are ranked by |w|, largest first, ties by lower input channel (a stable sort),
so "the N largest" is always exactly min(N, group width) weights.

Also here: the training patches (B100 HR, LR made here by PIL bicubic downscaling),
the fine-tuning loop with fixed masks on tools/torch_graph.py (any sparsr graph in
PyTorch), evaluation on Set5/Set14 and the writing of "nm" checkpoints.
"""

from __future__ import annotations

import json
import functools
import math
import re
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparsity_common import conv_table, load_rgb, shared_root, target_layers  # noqa: E402
from torch_graph import GraphModule  # noqa: E402

ALLOWED_M = (4, 8, 16, 32)
log_line = functools.partial(print, flush=True)   # progress shows up in redirected logs
TRAIN_SET = "B100"            # training patches only; never evaluated on
EVAL_SETS = ("Set5", "Set14")


class NMError(ValueError):
    """A request the N:M tools refuse (bad N/M, a layer that cannot be N:M, a budget)."""


def check_nm(n: int, m: int) -> None:
    if m not in ALLOWED_M:
        raise NMError(f"M={m} is not supported (M must be one of {', '.join(map(str, ALLOWED_M))})")
    if n < 1:
        raise NMError(f"N={n}: N must be at least 1")
    if n > m:
        raise NMError(f"N={n} > M={m}: a group of {m} cannot keep {n} weights")


def nm_eligible(shape, m: int) -> bool:
    """Whether a conv weight (cout, cin / groups, kh, kw) can be N:M: at least one whole group."""
    return len(shape) == 4 and shape[1] >= m


def _grouped(w: torch.Tensor, m: int, fill: float = 0.0) -> torch.Tensor:
    """(cout, cin, kh, kw) -> (cout, kh, kw, ceil(cin/m), m): the last axis is one N:M
    group; a short last group is filled up with `fill`."""
    cout, cin, kh, kw = w.shape
    groups = -(-cin // m)
    g = w.permute(0, 2, 3, 1)
    if groups * m != cin:
        g = F.pad(g, (0, groups * m - cin), value=fill)
    return g.reshape(cout, kh, kw, groups, m)


def _ungrouped(g: torch.Tensor, shape) -> torch.Tensor:
    cout, cin, kh, kw = shape
    return g.reshape(cout, kh, kw, -1)[..., :cin].permute(0, 3, 1, 2).contiguous()


def magnitude_ranks(weight, m: int) -> torch.Tensor:
    """Per weight, its rank inside its group of M input channels (0 = largest |w|; ties:
    lower channel first; a short last group ranks its own channels only). Same shape as
    weight, int64."""
    w = torch.as_tensor(np.asarray(weight) if not torch.is_tensor(weight) else weight).detach()
    if not nm_eligible(w.shape, m):
        raise NMError(f"weight of shape {tuple(w.shape)}: fewer input channels than M={m}")
    g = _grouped(w.abs().float(), m, fill=-1.0)   # the filling ranks last
    order = torch.argsort(-g, dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(m).expand_as(order).contiguous())
    return _ungrouped(ranks, w.shape)


def nm_mask(weight, n: int, m: int) -> torch.Tensor:
    """Bool mask keeping exactly the n largest-|w| weights of every group of m."""
    check_nm(n, m)
    return magnitude_ranks(weight, m) < n


def nm_prune(weight: np.ndarray, n: int, m: int) -> np.ndarray:
    w = np.asarray(weight, dtype=np.float32)
    return w * nm_mask(w, n, m).numpy()


def decompose_1m(weight, m: int) -> list[torch.Tensor]:
    """Eq. 1 of the SLS paper: M tensors of 1:M sparsity, the i-th holding the i-th largest
    |w| of every group; their sum is the weight."""
    w = torch.as_tensor(weight)
    ranks = magnitude_ranks(w, m)
    return [torch.where(ranks == i, w, torch.zeros_like(w)) for i in range(m)]


def max_nonzeros_per_group(weight, m: int) -> int:
    w = torch.as_tensor(np.asarray(weight) if not torch.is_tensor(weight) else weight)
    return int((_grouped(w.float(), m) != 0).sum(-1).max())


def satisfies_nm(weight, n: int, m: int) -> bool:
    w = np.asarray(weight)
    return nm_eligible(w.shape, m) and max_nonzeros_per_group(w, m) <= n


# -- the graph's convolutions -----------------------------------------------------------

def conv2d_names(model) -> list[str]:
    """Names of the convolutions a loaded sparsr Model runs on the packed kernels (the ones
    that take the "nm" format), graph order."""
    return [name for name, c in conv_table(model).items() if c.packed]


def export_tensors(net: GraphModule, base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The base checkpoint tensors with every trained tensor replaced by the module's."""
    return net.export_tensors(base)


def load_checkpoint(path) -> tuple[dict, dict[str, np.ndarray], dict]:
    from sparsr import checkpoint
    model, tensors, metadata = checkpoint.load(path)
    return model, checkpoint.decode_sparse(tensors), metadata


def write_nm_checkpoint(path, model: dict, tensors: Mapping[str, np.ndarray],
                        layer_n: Mapping[str, int], m: int, metadata: dict,
                        format: str = "nm") -> None:
    """Marks every layer of layer_n as format "nm" with its (n, m) (or `format`, e.g.
    "bcsr" for N:M shared by blocks of output channels), checks the constraint, stores
    those weights with checkpoint.encode_sparse."""
    from sparsr import checkpoint
    model = json.loads(json.dumps(model))
    layers = model.setdefault("layers", {})
    for name, n in layer_n.items():
        w = tensors[name + ".weight"]
        if not satisfies_nm(w, n, m):
            raise NMError(f"{name}: weight violates {n}:{m} (max {max_nonzeros_per_group(w, m)} "
                          f"nonzeros in a group)")
        layers[name] = ({"format": "nm", "options": {"n": int(n), "m": int(m)}}
                        if format == "nm" else {"format": format})
    enc = checkpoint.encode_sparse(dict(tensors), [n + ".weight" for n in layer_n])
    checkpoint.save(path, model, enc, metadata)


def nm_kernels_available() -> bool:
    import sparsr
    return {"nm"} <= {k["format"] for k in sparsr._core.kernels()}


# -- training data: random B100 patches, LR by PIL bicubic --------------------------

class PatchSampler:
    """Random (LR, HR) patch pairs from B100 HR. The LR image is made here: the HR image
    (cropped to a multiple of the scale) downscaled by PIL's BICUBIC resize (antialiased,
    a = -0.5), rounded to uint8 like the stored LR sets. Flips and 90-degree rotations."""

    def __init__(self, dataset: str = TRAIN_SET, scale: int = 2, patch: int = 48, seed: int = 0,
                 limit: int | None = None):
        base = Path(dataset) if Path(dataset).is_dir() else shared_root() / "data" / dataset
        paths = sorted((base / "HR").glob("*.png"))[:limit]
        if not paths:
            raise FileNotFoundError(f"{base}/HR: no training images (set SPARSR_SHARED?)")
        self.scale, self.patch = scale, patch
        self.rng = np.random.default_rng(seed)
        self.pairs = []
        for p in paths:
            hr = load_rgb(p)
            h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
            hr = np.ascontiguousarray(hr[:h, :w])
            lr = np.asarray(Image.fromarray(hr).resize((w // scale, h // scale), Image.BICUBIC))
            self.pairs.append((lr, hr))

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, ps = self.scale, self.patch
        lrs, hrs = [], []
        for _ in range(size):
            lr, hr = self.pairs[self.rng.integers(len(self.pairs))]
            y = self.rng.integers(lr.shape[0] - ps + 1)
            x = self.rng.integers(lr.shape[1] - ps + 1)
            a, b = lr[y:y + ps, x:x + ps], hr[y * s:(y + ps) * s, x * s:(x + ps) * s]
            k = int(self.rng.integers(4))
            a, b = np.rot90(a, k), np.rot90(b, k)
            if self.rng.integers(2):
                a, b = a[:, ::-1], b[:, ::-1]
            lrs.append(np.ascontiguousarray(a))
            hrs.append(np.ascontiguousarray(b))
        to = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float()
        return to(lrs), to(hrs)


def l1_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """L1 on the 0..1 scale."""
    return (sr - hr).abs().mean() / 255.0


def cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))


def finetune(model: GraphModule, masks: Mapping[str, torch.Tensor], sampler: PatchSampler, *,
             steps: int, minutes: float | None, lr: float = 1e-4, batch: int = 8,
             log: Callable[[str], None] = log_line, log_every: int = 25) -> dict:
    """L1 + Adam over all weights, cosine learning rate over `steps`; after every step the
    masked convs are multiplied by their fixed masks. Stops at `steps` or after `minutes`."""
    fixed = {name: (model.conv_weight(name), mask.to(torch.float32))
             for name, mask in masks.items()}
    with torch.no_grad():
        for weight, mask in fixed.values():
            weight.mul_(mask)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    start = time.perf_counter()
    done, losses = 0, []
    for step in range(steps):
        if minutes is not None and time.perf_counter() - start > 60.0 * minutes:
            break
        for group in opt.param_groups:
            group["lr"] = cosine_lr(lr, step, steps)
        lr_batch, hr_batch = sampler.batch(batch)
        loss = l1_loss(model.upscale_batch(lr_batch, masks=True), hr_batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for weight, mask in fixed.values():
                weight.mul_(mask)
        losses.append(float(loss.detach()))
        done = step + 1
        if done % log_every == 0:
            log(f"  finetune step {done}/{steps}  L1 {np.mean(losses[-log_every:]):.5f}  "
                f"{time.perf_counter() - start:.0f}s")
    model.eval()
    return {"steps": done, "steps_planned": steps, "seconds": time.perf_counter() - start,
            "lr": lr, "batch": batch, "patch_lr": sampler.patch,
            "final_l1": float(np.mean(losses[-log_every:])) if losses else None}


def finetune_args(p) -> None:
    """The fine-tuning options every N:M tool takes."""
    p.add_argument("--finetune-minutes", type=float, default=0.0,
                   help="wall-time cap of the fine-tuning (0: no fine-tuning unless --finetune-steps)")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="fine-tuning steps (the learning-rate schedule's length); with only "
                        "--finetune-minutes, 10000 capped by the time")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=48, help="LR patch size")
    p.add_argument("--train-data", default=TRAIN_SET)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def finetune_plan(args) -> tuple[int, float | None]:
    steps = args.finetune_steps or (10000 if args.finetune_minutes else 0)
    return steps, (args.finetune_minutes or None)


# -- evaluation -----------------------------------------------------------------

def torch_upscaler(model: GraphModule):
    """uint8 (H, W, 3) -> float (sH, sW, 3) on 0..255 by tools/torch_graph.py, masks on."""
    return model.upscaler(masks=True)


def evaluate_model(checkpoint_path, sets=EVAL_SETS, engine: bool | None = None) -> dict:
    """Mean Y PSNR/SSIM per set, full images. engine=None: the sparsr engine when it has
    the "nm" kernels, else the graph in PyTorch (tools/torch_graph.py, masks on)."""
    from evaluate import evaluate_datasets
    import sparsr
    if engine is None:
        engine = nm_kernels_available()
    if engine:
        net = sparsr.load(checkpoint_path)
        fn, scale = net.upscale, net.scale
        how = "sparsr engine (mask mode)"
    else:
        model = GraphModule.from_checkpoint(checkpoint_path).eval()
        fn, scale = torch_upscaler(model), model.scale
        how = "tools/torch_graph.py (masks on)"
    results = evaluate_datasets(fn, sets, scale)
    return {"evaluated_with": how,
            "sets": {r.dataset: {"psnr": r.psnr, "ssim": r.ssim, "seconds": r.seconds}
                     for r in results}}


def regex_layers(names, pattern: str) -> list[str]:
    try:
        re.compile(pattern)
    except re.error as e:
        raise NMError(f"--layers {pattern!r}: not a regular expression ({e})") from None
    return target_layers(names, pattern)
