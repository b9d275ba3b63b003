"""RLFN: residual local feature network (NTIRE 2022 efficient SR winner).

Definition: ofsoundof/NTIRE2022_ESR models/team04_rlfn.py (RLFN_cut). The
network sees RGB on 0..255. RFDN without the distillation branches: each block
(RLFB) is three 3x3 convs with LeakyReLU, a local residual, a 1x1 conv and
RFDN's ESA trimmed to one 3x3 conv on the pooled map; blocks are chained.
"""

from __future__ import annotations

import re

from ...graph import IO
from ..builder import GraphBuilder
from .common import (Shapes, StateDict, check_scale, check_shapes, conv_shapes, count, has_all,
                     shape, shuffle_factor)
from .rfdn import esa, esa_shapes

NAME = "rlfn"
COLOURS = 3
SLOPE = 0.05
_RFDN_ONLY_KEY = re.compile(r"B\d+\.(c\d_d|esa\.conv_max)\.weight$")


def detect(sd: StateDict) -> dict | None:
    if not has_all(sd, "fea_conv.weight", "B1.esa.conv1.weight"):
        return None
    if "c.0.weight" in sd or any(_RFDN_ONLY_KEY.match(k) for k in sd):
        return None     # RFDN's
    hyper = {"nf": shape(sd, "fea_conv.weight", NAME, 4)[0],
             "mid": shape(sd, "B1.c1_r.weight", NAME, 4)[0],
             "blocks": count(sd, r"B(\d+)\..+", NAME, first=1),
             "esa_channels": shape(sd, "B1.esa.conv1.weight", NAME, 4)[0],
             "scale": shuffle_factor(sd, "upsampler.0.weight", COLOURS, NAME)}
    check_shapes(sd, expected_shapes(hyper), NAME, _describe(hyper))
    return hyper


def scales(hyper: dict) -> list[int]:
    return [hyper["scale"]]


def expected_shapes(hyper: dict) -> Shapes:
    nf, mid, f = hyper["nf"], hyper["mid"], hyper["esa_channels"]
    s = conv_shapes("fea_conv", nf, COLOURS, 3)
    for i in range(1, hyper["blocks"] + 1):
        p = f"B{i}"
        s.update(conv_shapes(f"{p}.c1_r", mid, nf, 3))
        s.update(conv_shapes(f"{p}.c2_r", mid, mid, 3))
        s.update(conv_shapes(f"{p}.c3_r", nf, mid, 3))
        s.update(conv_shapes(f"{p}.c5", nf, nf, 1))
        s.update(esa_shapes(f"{p}.esa", nf, f, range_convs=False))
    s.update(conv_shapes("LR_conv", nf, nf, 3))
    s.update(conv_shapes("upsampler.0", COLOURS * hyper["scale"] ** 2, nf, 3))
    return s


def _describe(h: dict) -> str:
    return (f"RLFN(nf={h['nf']}, mid={h['mid']}, blocks={h['blocks']}, "
            f"esa_channels={h['esa_channels']}, upscale={h['scale']})")


def build(sd: StateDict, hyper: dict, scale: int):
    check_scale(hyper, scale, NAME)
    check_shapes(sd, expected_shapes(hyper), NAME, _describe(hyper))
    b = GraphBuilder(sd, IO(scale, color="rgb", range=255.0), NAME, hyper)
    fea = b.conv(b.input, "fea_conv")
    x = fea
    for i in range(1, hyper["blocks"] + 1):
        x = _rlfb(b, x, f"B{i}")
    y = b.add(b.conv(x, "LR_conv"), fea)
    return b.finish(b.pixel_shuffle(b.conv(y, "upsampler.0"), scale))


def _rlfb(b: GraphBuilder, x: str, p: str) -> str:
    y = x
    for j in (1, 2, 3):
        y = b.leaky_relu(b.conv(y, f"{p}.c{j}_r"), SLOPE)
    y = b.conv(b.add(y, x), f"{p}.c5")
    return esa(b, y, f"{p}.esa", range_convs=False)
