"""RFDN: residual feature distillation network (AIM 2020 efficient SR winner).

Definition: ofsoundof/NTIRE2022_ESR models/rfdn_baseline/RFDN.py and block.py.
The network sees RGB on 0..255. Each block (RFDB) distils a 1x1 "d" branch
from every 3x3 residual "r" conv, fuses the four with a 1x1 conv and gates the
result with enhanced spatial attention (ESA, shared with RLFN below). Around
the blocks is IMDN's network (imdn.trunk): all blocks' outputs are
concatenated, fused, and a global residual precedes the pixel-shuffle upsampler.
"""

from __future__ import annotations

import re

from ...graph import IO
from ..builder import GraphBuilder
from .common import (Shapes, StateDict, check_scale, check_shapes, conv_shapes, count, has_all,
                     shape, shuffle_factor)
from .imdn import trunk, trunk_shapes

NAME = "rfdn"
COLOURS = 3
SLOPE = 0.05     # block.activation('lrelu') everywhere, as IMDN's
_DISTILLED_KEY = re.compile(r"B\d+\.c\d_d\.weight$")


def detect(sd: StateDict) -> dict | None:
    # RLFN has the same head, ESA and upsampler but no distillation branches
    # and no fusion conv `c`.
    if not has_all(sd, "fea_conv.weight", "B1.esa.conv1.weight"):
        return None
    if "c.0.weight" not in sd and not any(_DISTILLED_KEY.match(k) for k in sd):
        return None
    hyper = {"nf": shape(sd, "fea_conv.weight", NAME, 4)[0],
             "blocks": count(sd, r"B(\d+)\..+", NAME, first=1),
             "distilled": shape(sd, "B1.c1_d.weight", NAME, 4)[0],
             "esa_channels": shape(sd, "B1.esa.conv1.weight", NAME, 4)[0],
             "scale": shuffle_factor(sd, "upsampler.0.weight", COLOURS, NAME)}
    check_shapes(sd, expected_shapes(hyper), NAME, _describe(hyper))
    return hyper


def scales(hyper: dict) -> list[int]:
    return [hyper["scale"]]


def expected_shapes(hyper: dict) -> Shapes:
    nf, dc, f, n = hyper["nf"], hyper["distilled"], hyper["esa_channels"], hyper["blocks"]
    s = trunk_shapes(nf, n, hyper["scale"])
    for i in range(1, n + 1):
        p = f"B{i}"
        for j in (1, 2, 3):
            s.update(conv_shapes(f"{p}.c{j}_d", dc, nf, 1))
            s.update(conv_shapes(f"{p}.c{j}_r", nf, nf, 3))
        s.update(conv_shapes(f"{p}.c4", dc, nf, 3))
        s.update(conv_shapes(f"{p}.c5", nf, 4 * dc, 1))
        s.update(esa_shapes(f"{p}.esa", nf, f, range_convs=True))
    return s


def _describe(h: dict) -> str:
    return (f"RFDN(nf={h['nf']}, blocks={h['blocks']}, distilled={h['distilled']}, "
            f"esa_channels={h['esa_channels']}, upscale={h['scale']})")


def build(sd: StateDict, hyper: dict, scale: int):
    check_scale(hyper, scale, NAME)
    check_shapes(sd, expected_shapes(hyper), NAME, _describe(hyper))
    b = GraphBuilder(sd, IO(scale, color="rgb", range=255.0), NAME, hyper)
    blocks = [lambda x, p=f"B{i}": _rfdb(b, x, p) for i in range(1, hyper["blocks"] + 1)]
    return b.finish(trunk(b, blocks, scale))


def _rfdb(b: GraphBuilder, x: str, p: str) -> str:
    def act(v: str) -> str:
        return b.leaky_relu(v, SLOPE)

    distilled, r = [], x
    for j in (1, 2, 3):
        distilled.append(act(b.conv(r, f"{p}.c{j}_d")))
        r = act(b.add(b.conv(r, f"{p}.c{j}_r"), r))
    distilled.append(act(b.conv(r, f"{p}.c4")))
    return esa(b, b.conv(b.concat(distilled), f"{p}.c5"), f"{p}.esa", range_convs=True)


def esa_shapes(p: str, nf: int, f: int, range_convs: bool) -> Shapes:
    s = conv_shapes(f"{p}.conv1", f, nf, 1)
    s.update(conv_shapes(f"{p}.conv_f", f, f, 1))
    s.update(conv_shapes(f"{p}.conv2", f, f, 3))
    s.update(conv_shapes(f"{p}.conv3", f, f, 3))
    if range_convs:
        s.update(conv_shapes(f"{p}.conv_max", f, f, 3))
        s.update(conv_shapes(f"{p}.conv3_", f, f, 3))
    s.update(conv_shapes(f"{p}.conv4", nf, f, 1))
    return s


def esa(b: GraphBuilder, x: str, p: str, range_convs: bool) -> str:
    """Enhanced spatial attention: x * sigmoid(mask), the mask computed on a
    strided, max-pooled copy and resized back. RFDN's form has three 3x3 convs
    (conv_max, conv3, conv3_ with ReLUs) on the pooled map; RLFN's has conv3 only."""
    reduced = b.conv(x, f"{p}.conv1")
    c1 = b.conv(reduced, f"{p}.conv2", stride=2, padding=0)
    v = b.max_pool(c1, 7, 3)
    if range_convs:
        v = b.relu(b.conv(v, f"{p}.conv_max"))
        v = b.relu(b.conv(v, f"{p}.conv3"))
        c3 = b.conv(v, f"{p}.conv3_")
    else:
        c3 = b.conv(v, f"{p}.conv3")
    c3 = b.resize(c3, "bilinear", like=x, align_corners=False)
    mask = b.sigmoid(b.conv(b.add(c3, b.conv(reduced, f"{p}.conv_f")), f"{p}.conv4"))
    return b.mul(x, mask)
