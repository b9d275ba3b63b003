"""EDSR (sanghyun-son/EDSR-PyTorch src/model/edsr.py, common.py), on 0..255.

    sub_mean, head.0 conv C->F, body.0..n-1 residual blocks (conv, ReLU, conv,
    times res_scale, plus the input), body.<n> conv, plus the head's output,
    tail.0 upsampler (x2^k: k x (conv F->4F, pixel shuffle 2); x3: conv F->9F,
    pixel shuffle 3), tail.1 conv F->C, add_mean.

MeanShift is a frozen 1x1 conv (weight identity / std, bias sign * rgb_range *
DIV2K mean / std) stored in the state_dict as sub_mean/add_mean; the pixel range
is read off its bias. A state_dict without them gets the constructor's values
(rgb_range 255, DIV2K means). res_scale is not in the weights: the EDSR paper's
large model (32 blocks of 256 features) was trained with 0.1, everything else
with the default 1.
"""

from __future__ import annotations

import math

from ...graph import IO
from ..builder import GraphBuilder
from .common import (DIV2K_RGB_MEAN, StateDict, check_shapes, conv_shapes, count, has_all,
                     mean_shift, range_of_mean_shift, shape, stacked_upsampler_scale,
                     stacked_upsampler_shapes)

NAME = "edsr"


def detect(sd: StateDict) -> dict | None:
    if not has_all(sd, "head.0.weight", "body.0.body.0.weight", "body.0.body.2.weight",
                   "tail.0.0.weight", "tail.1.weight"):
        return None
    feat, colors, k = shape(sd, "head.0.weight", NAME, 4)[:3]
    blocks = count(sd, r"body\.(\d+)\.body\.0\.weight", NAME)
    hyper = {"n_colors": colors, "n_feats": feat, "n_resblocks": blocks, "kernel_size": k,
             "scale": stacked_upsampler_scale(sd, "tail.0", 2, feat, NAME),
             "res_scale": 0.1 if (blocks, feat) == (32, 256) else 1.0}
    hyper.update(mean_shift_hyper(sd))
    check_shapes(sd, expected_shapes(hyper), NAME,
                 f"EDSR(n_resblocks={blocks}, n_feats={feat}, scale={hyper['scale']})")
    return hyper


def mean_shift_hyper(sd: StateDict) -> dict:
    stored = has_all(sd, "sub_mean.weight", "add_mean.weight")
    return {"mean_shift": "stored" if stored else "div2k",
            "rgb_range": range_of_mean_shift(sd, "sub_mean", 255.0)}


def head_tail_shapes(h: dict) -> dict:
    """sub_mean/add_mean, head, tail: the same in EDSR and RCAN."""
    feat, colors, k = h["n_feats"], h["n_colors"], h["kernel_size"]
    out = {}
    if h["mean_shift"] == "stored":
        for shift in ("sub_mean", "add_mean"):
            out.update(conv_shapes(shift, 3, 3, 1))
    out.update(conv_shapes("head.0", feat, colors, k))
    # common.Upsampler: conv, pixel shuffle per stage (tail.0.0, tail.0.2, ...)
    out.update(stacked_upsampler_shapes("tail.0", 2, h["scale"], feat, feat))
    out.update(conv_shapes("tail.1", colors, feat, k))
    return out


def expected_shapes(h: dict) -> dict:
    feat, k, n = h["n_feats"], h["kernel_size"], h["n_resblocks"]
    out = head_tail_shapes(h)
    for i in range(n):
        out.update(conv_shapes(f"body.{i}.body.0", feat, feat, k))
        out.update(conv_shapes(f"body.{i}.body.2", feat, feat, k))
    out.update(conv_shapes(f"body.{n}", feat, feat, k))
    return out


def scales(hyper: dict) -> list[int]:
    return [hyper["scale"]]


def new_builder(sd: StateDict, hyper: dict, scale: int, arch: str) -> GraphBuilder:
    color = "rgb" if hyper["n_colors"] == 3 else "grey"
    return GraphBuilder(sd, IO(scale=scale, color=color, range=hyper["rgb_range"]), arch, hyper)


def sub_mean(b: GraphBuilder, x: str, hyper: dict) -> str:
    if hyper["mean_shift"] == "stored":
        return mean_shift(b, x, "sub_mean")
    return mean_shift(b, x, None, DIV2K_RGB_MEAN, -1.0, hyper["rgb_range"])


def tail(b: GraphBuilder, x: str, hyper: dict) -> str:
    """tail.0 upsampler, tail.1 conv, add_mean."""
    scale = hyper["scale"]
    if scale == 3:
        x = b.pixel_shuffle(b.conv(x, "tail.0.0"), 3)
    else:
        for i in range(int(math.log2(scale))):
            x = b.pixel_shuffle(b.conv(x, f"tail.0.{2 * i}"), 2)
    x = b.conv(x, "tail.1")
    if hyper["mean_shift"] == "stored":
        return mean_shift(b, x, "add_mean")
    return mean_shift(b, x, None, DIV2K_RGB_MEAN, 1.0, hyper["rgb_range"])


def build(sd: StateDict, hyper: dict, scale: int):
    b = new_builder(sd, hyper, scale, NAME)
    x = b.conv(sub_mean(b, b.input, hyper), "head.0")
    res = x
    for i in range(hyper["n_resblocks"]):
        r = b.conv(b.relu(b.conv(res, f"body.{i}.body.0")), f"body.{i}.body.2")
        if hyper["res_scale"] != 1.0:
            r = b.op("mul", [r], {"value": float(hyper["res_scale"])})
        res = b.add(r, res)
    res = b.add(b.conv(res, f"body.{hyper['n_resblocks']}"), x)
    return b.finish(tail(b, res, hyper))
