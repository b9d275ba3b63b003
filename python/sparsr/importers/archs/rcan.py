"""RCAN (sanghyun-son/EDSR-PyTorch src/model/rcan.py), on 0..255.

    sub_mean, head.0 conv, body.0..G-1 residual groups, body.<G> conv, plus the
    head's output, tail (as EDSR's), add_mean.
    group g: body.g.body.0..B-1 RCABs, body.g.body.<B> conv, plus the group input.
    RCAB: conv, ReLU, conv, channel attention, plus the input (RCAN's RCAB
    ignores res_scale). Channel attention: x * sigmoid(conv_du.2(ReLU(conv_du.0(
    global mean of x)))) with 1x1 convs F -> F / reduction -> F.

Head, tail and mean shift are EDSR's (see edsr.py).
"""

from __future__ import annotations

from ...errors import CheckpointError
from .common import (StateDict, check_shapes, conv_shapes, count, has_all, shape,
                     stacked_upsampler_scale)
from .edsr import head_tail_shapes, mean_shift_hyper, new_builder, sub_mean, tail

NAME = "rcan"


def detect(sd: StateDict) -> dict | None:
    if not has_all(sd, "head.0.weight", "tail.1.weight", "body.0.body.0.body.0.weight",
                   "body.0.body.0.body.3.conv_du.0.weight"):
        return None
    feat, colors, k = shape(sd, "head.0.weight", NAME, 4)[:3]
    groups = count(sd, r"body\.(\d+)\.body\.0\.body\.0\.weight", NAME)
    blocks = count(sd, r"body\.0\.body\.(\d+)\.body\.0\.weight", NAME)
    squeezed = shape(sd, "body.0.body.0.body.3.conv_du.0.weight", NAME, 4)[0]
    if squeezed < 1 or feat % squeezed:
        raise CheckpointError(f"{NAME}: body.0.body.0.body.3.conv_du.0.weight squeezes {feat} "
                              f"channels to {squeezed}, not F / reduction")
    hyper = {"n_colors": colors, "n_feats": feat, "n_resgroups": groups,
             "n_resblocks": blocks, "reduction": feat // squeezed, "kernel_size": k,
             "scale": stacked_upsampler_scale(sd, "tail.0", 2, feat, NAME)}
    hyper.update(mean_shift_hyper(sd))
    check_shapes(sd, expected_shapes(hyper), NAME,
                 f"RCAN(n_resgroups={groups}, n_resblocks={blocks}, n_feats={feat}, "
                 f"reduction={hyper['reduction']}, scale={hyper['scale']})")
    return hyper


def expected_shapes(h: dict) -> dict:
    feat, k = h["n_feats"], h["kernel_size"]
    squeezed = feat // h["reduction"]
    out = head_tail_shapes(h)
    for g in range(h["n_resgroups"]):
        for i in range(h["n_resblocks"]):
            p = f"body.{g}.body.{i}.body"
            out.update(conv_shapes(f"{p}.0", feat, feat, k))
            out.update(conv_shapes(f"{p}.2", feat, feat, k))
            out.update(conv_shapes(f"{p}.3.conv_du.0", squeezed, feat, 1))
            out.update(conv_shapes(f"{p}.3.conv_du.2", feat, squeezed, 1))
        out.update(conv_shapes(f"body.{g}.body.{h['n_resblocks']}", feat, feat, k))
    out.update(conv_shapes(f"body.{h['n_resgroups']}", feat, feat, k))
    return out


def scales(hyper: dict) -> list[int]:
    return [hyper["scale"]]


def build(sd: StateDict, hyper: dict, scale: int):
    b = new_builder(sd, hyper, scale, NAME)

    def rcab(x: str, p: str) -> str:
        y = b.conv(b.relu(b.conv(x, f"{p}.0")), f"{p}.2")
        w = b.relu(b.conv(b.global_mean(y), f"{p}.3.conv_du.0"))
        w = b.sigmoid(b.conv(w, f"{p}.3.conv_du.2"))
        return b.add(b.mul(y, w), x)

    x = b.conv(sub_mean(b, b.input, hyper), "head.0")
    res = x
    for g in range(hyper["n_resgroups"]):
        y = res
        for i in range(hyper["n_resblocks"]):
            y = rcab(y, f"body.{g}.body.{i}.body")
        res = b.add(b.conv(y, f"body.{g}.body.{hyper['n_resblocks']}"), res)
    res = b.add(b.conv(res, f"body.{hyper['n_resgroups']}"), x)
    return b.finish(tail(b, res, hyper))
