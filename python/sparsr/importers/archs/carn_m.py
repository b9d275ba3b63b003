"""CARN-M (nmhkahn/CARN-pytorch carn/model/carn_m.py, carn/model/ops.py), on 0..1.

    sub_mean, entry conv 3x3 3->F,
    three cascading blocks b1..b3 joined by 1x1 convs c1..c3 (+ ReLU) over the
    concatenation of everything before, upsampler, exit conv 3x3 F->3, add_mean.

A block is itself a cascade of one efficient residual block `b1` applied three
times with the same weights (group 3x3 conv, ReLU, group 3x3 conv, ReLU, 1x1
conv, plus the input, ReLU), joined by its own c1..c3. The multi-scale model
(`Net(multi_scale=True)`) holds upsampler branches up2, up3 and up4 in one file;
a converted checkpoint keeps the one branch of the chosen scale.
"""

from __future__ import annotations

import math

from ...errors import CheckpointError
from ...graph import IO
from ..builder import GraphBuilder
from .common import (StateDict, check_shapes, conv_shapes, has_all, mean_shift, shape,
                     stacked_upsampler_scale, stacked_upsampler_shapes)

NAME = "carn_m"
_BRANCH_SCALES = (2, 3, 4)


def detect(sd: StateDict) -> dict | None:
    # CARN (not -M) has residual blocks b1..b3 inside each block and no 1x1 in them.
    if not has_all(sd, "entry.weight", "b1.b1.body.4.weight", "b1.c3.body.0.weight") \
            or "b1.b2.body.0.weight" in sd:
        return None
    feat = shape(sd, "entry.weight", NAME, 4)[0]
    per_group = shape(sd, "b1.b1.body.0.weight", NAME, 4)[1]
    if per_group < 1 or feat % per_group:
        raise CheckpointError(f"{NAME}: b1.b1.body.0.weight takes {per_group} channels per "
                              f"group, which does not divide {feat}")
    hyper = {"num_feat": feat, "group": feat // per_group}
    branches = [s for s in _BRANCH_SCALES if f"upsample.up{s}.body.0.weight" in sd]
    if branches:
        hyper.update(multi_scale=True, scales=list(_BRANCH_SCALES), scale=None)
    else:
        hyper.update(multi_scale=False,
                     scales=[stacked_upsampler_scale(sd, "upsample.up.body", 3, feat, NAME)])
        hyper["scale"] = hyper["scales"][0]
    check_shapes(sd, expected_shapes(hyper), NAME,
                 f"CARN-M(group={hyper['group']}, "
                 + ("multi_scale=True)" if hyper["multi_scale"] else f"scale={hyper['scale']})"))
    return hyper


def _branch(hyper: dict, scale: int) -> str:
    return f"upsample.up{scale}" if hyper["multi_scale"] else "upsample.up"


def expected_shapes(h: dict) -> dict:
    feat, group = h["num_feat"], h["group"]
    out = {}
    for shift in ("sub_mean", "add_mean"):
        out.update(conv_shapes(f"{shift}.shifter", 3, 3, 1))
    out.update(conv_shapes("entry", feat, 3, 3))
    for block in ("b1", "b2", "b3"):
        out.update(conv_shapes(f"{block}.b1.body.0", feat, feat // group, 3))
        out.update(conv_shapes(f"{block}.b1.body.2", feat, feat // group, 3))
        out.update(conv_shapes(f"{block}.b1.body.4", feat, feat, 1))
    for prefix in ("", "b1.", "b2.", "b3."):
        for i in (1, 2, 3):
            out.update(conv_shapes(f"{prefix}c{i}.body.0", feat, (i + 1) * feat, 1))
    for s in h["scales"]:
        # Each stage is conv (group), ReLU, pixel shuffle: convs at body.0, body.3, ...
        out.update(stacked_upsampler_shapes(f"{_branch(h, s)}.body", 3, s, feat, feat // group))
    out.update(conv_shapes("exit", 3, feat, 3))
    return out


def scales(hyper: dict) -> list[int]:
    return list(hyper["scales"])


def build(sd: StateDict, hyper: dict, scale: int):
    group = hyper["group"]
    b = GraphBuilder(sd, IO(scale=scale, color="rgb", range=1.0), NAME,
                     dict(hyper, scale=scale))

    def eres_block(x: str, prefix: str) -> str:
        y = b.relu(b.conv(x, f"{prefix}.body.0", groups=group))
        y = b.relu(b.conv(y, f"{prefix}.body.2", groups=group))
        y = b.conv(y, f"{prefix}.body.4")
        return b.relu(b.add(y, x))

    def cascade(x: str, units, prefix: str) -> str:
        # o_i = relu(c_i(concat(x, u_1, ..., u_i))), u_i = unit_i(o_{i-1})
        parts, o = [x], x
        for i, unit in enumerate(units, start=1):
            parts.append(unit(o))
            o = b.relu(b.conv(b.concat(parts), f"{prefix}c{i}.body.0"))
        return o

    def block(x: str, name: str) -> str:
        return cascade(x, [lambda t: eres_block(t, f"{name}.b1")] * 3, f"{name}.")

    x = mean_shift(b, b.input, "sub_mean.shifter")
    x = b.conv(x, "entry")
    x = cascade(x, [lambda t, n=n: block(t, n) for n in ("b1", "b2", "b3")], "")
    branch = _branch(hyper, scale)
    if scale == 3:
        x = b.pixel_shuffle(b.relu(b.conv(x, f"{branch}.body.0", groups=group)), 3)
    else:
        for i in range(int(math.log2(scale))):
            x = b.pixel_shuffle(b.relu(b.conv(x, f"{branch}.body.{3 * i}", groups=group)), 2)
    x = b.conv(x, "exit")
    return b.finish(mean_shift(b, x, "add_mean.shifter"))
