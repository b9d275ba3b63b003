"""IMDN: information multi-distillation network (Hui et al., ACM MM 2019).

Definition: Zheng222/IMDN model/architecture.py (IMDN) and model/block.py
(IMDModule, CCALayer). The network sees RGB on 0..1. Each block (IMDB) runs
four 3x3 convs; after each of the first three a quarter of the channels is
split off ("distilled") and the rest goes on. The four distilled parts are
concatenated, weighted per channel by contrast-aware attention (CCA: sigmoid
of a 1x1 bottleneck over std + mean of each channel), fused by a 1x1 conv and
added to the block input. All blocks' outputs are concatenated and fused.
The authors' checkpoints are saved from nn.DataParallel (keys prefixed
``module.``); the reader strips that before detection.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ...graph import IO
from ..builder import GraphBuilder
from .common import (Shapes, StateDict, check_scale, check_shapes, conv_shapes, count, has_all,
                     shape, shuffle_factor)

NAME = "imdn"
COLOURS = 3
SLOPE = 0.05


def detect(sd: StateDict) -> dict | None:
    if not has_all(sd, "fea_conv.weight", "IMDB1.c1.weight", "IMDB1.cca.conv_du.0.weight"):
        return None
    nf = shape(sd, "fea_conv.weight", NAME, 4)[0]
    remaining = shape(sd, "IMDB1.c2.weight", NAME, 4)[1]
    hyper = {"nf": nf, "blocks": count(sd, r"IMDB(\d+)\..+", NAME, first=1),
             "distilled": nf - remaining,
             "cca_channels": shape(sd, "IMDB1.cca.conv_du.0.weight", NAME, 4)[0],
             "scale": shuffle_factor(sd, "upsampler.0.weight", COLOURS, NAME)}
    check_shapes(sd, expected_shapes(hyper), NAME, _describe(hyper))
    return hyper


def scales(hyper: dict) -> list[int]:
    return [hyper["scale"]]


def expected_shapes(hyper: dict) -> Shapes:
    nf, dc, n = hyper["nf"], hyper["distilled"], hyper["blocks"]
    rc = nf - dc
    s = trunk_shapes(nf, n, hyper["scale"])
    for i in range(1, n + 1):
        p = f"IMDB{i}"
        s.update(conv_shapes(f"{p}.c1", nf, nf, 3))
        s.update(conv_shapes(f"{p}.c2", nf, rc, 3))
        s.update(conv_shapes(f"{p}.c3", nf, rc, 3))
        s.update(conv_shapes(f"{p}.c4", dc, rc, 3))
        # c5 is conv_layer(nf, nf, 1) over the 4 * dc distilled channels.
        s.update(conv_shapes(f"{p}.c5", nf, 4 * dc, 1))
        s.update(conv_shapes(f"{p}.cca.conv_du.0", hyper["cca_channels"], 4 * dc, 1))
        s.update(conv_shapes(f"{p}.cca.conv_du.2", 4 * dc, hyper["cca_channels"], 1))
    return s


def trunk_shapes(nf: int, blocks: int, scale: int) -> Shapes:
    """The convs of `trunk` outside the blocks."""
    s = conv_shapes("fea_conv", nf, COLOURS, 3)
    s.update(conv_shapes("c.0", nf, blocks * nf, 1))
    s.update(conv_shapes("LR_conv", nf, nf, 3))
    s.update(conv_shapes("upsampler.0", COLOURS * scale ** 2, nf, 3))
    return s


def _describe(h: dict) -> str:
    return (f"IMDN(nf={h['nf']}, blocks={h['blocks']}, distilled={h['distilled']}, "
            f"cca_channels={h['cca_channels']}, upscale={h['scale']})")


def build(sd: StateDict, hyper: dict, scale: int):
    check_scale(hyper, scale, NAME)
    check_shapes(sd, expected_shapes(hyper), NAME, _describe(hyper))
    b = GraphBuilder(sd, IO(scale, color="rgb", range=1.0), NAME, hyper)
    dc, rc = hyper["distilled"], hyper["nf"] - hyper["distilled"]
    blocks = [lambda x, p=f"IMDB{i}": _imdb(b, x, p, dc, rc)
              for i in range(1, hyper["blocks"] + 1)]
    return b.finish(trunk(b, blocks, scale))


def trunk(b: GraphBuilder, blocks: Sequence[Callable[[str], str]], scale: int) -> str:
    """IMDN's network around its blocks, which RFDN keeps: fea_conv, the blocks
    in a chain, all their outputs concatenated and fused by c (1x1 conv, leaky
    ReLU), LR_conv plus fea_conv's output, the pixel-shuffle upsampler."""
    fea = b.conv(b.input, "fea_conv")
    x, outs = fea, []
    for block in blocks:
        x = block(x)
        outs.append(x)
    y = b.leaky_relu(b.conv(b.concat(outs), "c.0"), SLOPE)
    y = b.add(b.conv(y, "LR_conv"), fea)
    return b.pixel_shuffle(b.conv(y, "upsampler.0"), scale)


def _imdb(b: GraphBuilder, x: str, p: str, dc: int, rc: int) -> str:
    distilled, r = [], x
    for j in (1, 2, 3):
        d, r = b.split(b.leaky_relu(b.conv(r, f"{p}.c{j}"), SLOPE), [dc, rc])
        distilled.append(d)
    distilled.append(b.conv(r, f"{p}.c4"))
    out = b.concat(distilled)
    return b.add(b.conv(_cca(b, out, f"{p}.cca"), f"{p}.c5"), x)


def _cca(b: GraphBuilder, x: str, p: str) -> str:
    """Contrast-aware channel attention: x * sigmoid(W2 relu(W1 (std + mean)))."""
    y = b.add(b.global_std(x), b.global_mean(x))
    y = b.relu(b.conv(y, f"{p}.conv_du.0"))
    return b.mul(x, b.sigmoid(b.conv(y, f"{p}.conv_du.2")))
