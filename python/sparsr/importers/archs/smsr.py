"""SMSR (Wang et al., "Exploring sparsity in image super-resolution"), as in
LongguangWang/SMSR model/smsr.py: mean shift, a 3x3 head, sparse mask modules,
a collect over all module outputs, a pixel-shuffle tail plus the bicubically
upsampled input."""

from __future__ import annotations

import re

import numpy as np

from ...errors import CheckpointError
from ...graph import IO
from ...ops.smsr import channel_masks, module_shapes
from ..builder import GraphBuilder
from .common import count, shape

NAME = "smsr"


def detect(sd) -> dict | None:
    keys = list(sd)
    if not any(re.match(r"body\.\d+\.body\.ch_mask$", k) for k in keys) or "tail.0.weight" not in sd:
        return None
    n_blocks = count(sd, r"body\.(\d+)\.body\.ch_mask", NAME)
    tail_out = shape(sd, "tail.0.weight", NAME, 4)[0]
    scale = int(round((tail_out / 3) ** 0.5))
    if scale < 1 or 3 * scale * scale != tail_out:
        raise CheckpointError(f"{NAME}: 'tail.0.weight' has {tail_out} output channels, not "
                              "3 x scale^2")
    n_feats = shape(sd, "head.0.weight", NAME, 4)[0]
    ch_mask = shape(sd, "body.0.body.ch_mask", NAME, 4)
    if ch_mask[0] != 1 or ch_mask[1] != n_feats or ch_mask[3] != 2 or ch_mask[2] < 1:
        raise CheckpointError(f"{NAME}: 'body.0.body.ch_mask' has shape {ch_mask}, expected "
                              f"(1, {n_feats}, layers, 2)")
    return {"scale": scale, "n_feats": n_feats, "n_blocks": n_blocks, "n_layers": ch_mask[2]}


def scales(hyper: dict) -> list[int]:
    return [hyper["scale"]]


def build(sd, hyper: dict, scale: int):
    b = GraphBuilder(sd, IO(scale=scale, color="rgb", range=255.0), NAME, hyper)
    n_blocks, n_layers, n_feats = hyper["n_blocks"], hyper["n_layers"], hyper["n_feats"]
    # One size for every module's feature of dense channels (see ops/smsr.py).
    dense_planes = max(int(_masks(sd, f"body.{k}.body.ch_mask").sum()) for k in range(n_blocks))
    x0 = b.conv(b.input, "sub_mean")
    head = b.conv(b.relu(b.conv(x0, "head.0")), "head.2")
    fea, outs = head, []
    for k in range(n_blocks):
        prefix = f"body.{k}"
        params = {role: b.param(f"{prefix}.{role}") for role in module_shapes(n_feats, n_layers)
                  if not role.startswith("ca.")}
        y = b.op("smsr_module", [fea], {"n_layers": n_layers, "input_skip": True,
                                        "dense_planes": dense_planes, "attention": False},
                 params, prefix)
        # Channel attention over the whole image's means, and the residual.
        z = b.relu(b.conv(b.global_mean(y), f"{prefix}.ca.conv_du.0"))
        fea = b.add(b.mul(y, b.sigmoid(b.conv(z, f"{prefix}.ca.conv_du.2"))), fea)
        outs.append(fea)
    body = b.add(b.conv(b.relu(b.conv(b.concat(outs), "collect.0")), "collect.2"), head)
    up = b.pixel_shuffle(b.conv(body, "tail.0"), scale)
    out = b.conv(b.add(up, b.resize(x0, "bicubic", scale=scale)), "add_mean")
    return b.finish(out)


def _masks(sd, key: str) -> np.ndarray:
    if key not in sd:
        raise CheckpointError(f"{NAME}: the state_dict is missing {key!r}")
    try:
        return channel_masks(np.asarray(sd[key]))
    except CheckpointError as e:
        raise CheckpointError(f"{NAME}: {key!r}: {e}") from None
