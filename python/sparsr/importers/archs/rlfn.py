"""RLFN: residual local feature network (NTIRE 2022 efficient SR winner).

Definition: ofsoundof/NTIRE2022_ESR models/team04_rlfn.py (RLFN_cut). The
network sees RGB on 0..255. RFDN without the distillation branches: each block
(RLFB) is three 3x3 convs with LeakyReLU, a local residual, a 1x1 conv and
RFDN's ESA trimmed to one 3x3 conv on the pooled map; blocks are chained.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from ...graph import IO
from ..builder import GraphBuilder
from ._shapes import Shapes, block_count, check, check_scale, conv, shape, upsampler_scale
from .rfdn import esa, esa_shapes

NAME = "rlfn"
COLOURS = 3
SLOPE = 0.05
_RFDN_ONLY_KEY = re.compile(r"B\d+\.(c\d_d|esa\.conv_max)\.weight$")


def detect(sd: Mapping[str, Any]) -> dict | None:
    if "fea_conv.weight" not in sd or "B1.esa.conv1.weight" not in sd:
        return None
    if "c.0.weight" in sd or any(_RFDN_ONLY_KEY.match(k) for k in sd):
        return None     # RFDN's
    hyper = {"nf": shape(sd, "fea_conv.weight", NAME, 4)[0],
             "mid": shape(sd, "B1.c1_r.weight", NAME, 4)[0],
             "blocks": block_count(sd, r"B(\d+)\.", NAME),
             "esa_channels": shape(sd, "B1.esa.conv1.weight", NAME, 4)[0],
             "scale": upsampler_scale(sd, "upsampler.0.weight", COLOURS, NAME)}
    check(sd, expected_shapes(hyper), NAME)
    return hyper


def scales(hyper: Mapping[str, Any]) -> list[int]:
    return [hyper["scale"]]


def expected_shapes(hyper: Mapping[str, Any]) -> Shapes:
    nf, mid, f = hyper["nf"], hyper["mid"], hyper["esa_channels"]
    s: Shapes = {}
    conv(s, "fea_conv", nf, COLOURS, 3)
    for i in range(1, hyper["blocks"] + 1):
        p = f"B{i}"
        conv(s, f"{p}.c1_r", mid, nf, 3)
        conv(s, f"{p}.c2_r", mid, mid, 3)
        conv(s, f"{p}.c3_r", nf, mid, 3)
        conv(s, f"{p}.c5", nf, nf, 1)
        esa_shapes(s, f"{p}.esa", nf, f, range_convs=False)
    conv(s, "LR_conv", nf, nf, 3)
    conv(s, "upsampler.0", COLOURS * hyper["scale"] ** 2, nf, 3)
    return s


def build(sd: Mapping[str, Any], hyper: Mapping[str, Any], scale: int):
    check_scale(hyper, scale, NAME)
    check(sd, expected_shapes(hyper), NAME)
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
