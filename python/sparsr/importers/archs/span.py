"""SPAN: swift parameter-free attention network (NTIRE 2024 efficient SR winner).

Definition: Amazingren/NTIRE2024_ESR models/team38_SPAN.py (SPAN30 with SPAB1
blocks and Conv3XC convs). The network sees RGB on 0..1, subtracts the DIV2K
mean and multiplies by 255; its output is on 0..1 again, with no mean added
back and no clamp. Every Conv3XC is stored re-parameterised: one plain 3x3
conv under ``<name>.eval_conv``, which is all the authors' eval path runs. A
block (SPAB) is three such convs with SiLU between, and its output is
``(out3 + x) * (sigmoid(out3) - 0.5)`` (the parameter-free attention). The
tail concatenates the head's output, a 3x3 conv of the last block's output,
the first block's output and the last block's first conv output after SiLU
(see `_spab`), fuses them with a 1x1 conv and pixel-shuffles.
"""

from __future__ import annotations

from ...errors import CheckpointError
from ...graph import IO
from ..builder import GraphBuilder
from .common import (Shapes, StateDict, check_scale, check_shapes, conv_shapes, count, has_all,
                     shape, shuffle_factor)

NAME = "span"
COLOURS = 3
RGB_MEAN = (0.4488, 0.4371, 0.4040)
IMG_RANGE = 255.0
# SPAN30.forward names block_1's output and block_6's first conv output in its
# concatenation; another block count has no defined wiring.
BLOCKS = 6


def detect(sd: StateDict) -> dict | None:
    if not has_all(sd, "conv_1.eval_conv.weight", "block_1.c1_r.eval_conv.weight",
                   "conv_cat.weight"):
        return None
    if "conv_1.sk.weight" in sd or "block_1.c1_r.sk.weight" in sd:
        raise CheckpointError(f"{NAME}: the state_dict holds the training form of the Conv3XC "
                              "convs (keys '.sk' / '.conv.N'); only re-parameterised weights "
                              "('.eval_conv' alone) are supported")
    hyper = {"nf": shape(sd, "conv_1.eval_conv.weight", NAME, 4)[0],
             "blocks": count(sd, r"block_(\d+)\..+", NAME, first=1),
             "scale": shuffle_factor(sd, "upsampler.0.weight", COLOURS, NAME)}
    if hyper["blocks"] != BLOCKS:
        raise CheckpointError(f"{NAME}: {hyper['blocks']} blocks; SPAN30 has {BLOCKS}")
    check_shapes(sd, expected_shapes(hyper), NAME, _describe(hyper))
    return hyper


def scales(hyper: dict) -> list[int]:
    return [hyper["scale"]]


def expected_shapes(hyper: dict) -> Shapes:
    nf = hyper["nf"]
    s = conv_shapes("conv_1.eval_conv", nf, COLOURS, 3)
    for i in range(1, hyper["blocks"] + 1):
        for j in (1, 2, 3):
            s.update(conv_shapes(f"block_{i}.c{j}_r.eval_conv", nf, nf, 3))
    s.update(conv_shapes("conv_cat", nf, 4 * nf, 1))
    s.update(conv_shapes("conv_2.eval_conv", nf, nf, 3))
    s.update(conv_shapes("upsampler.0", COLOURS * hyper["scale"] ** 2, nf, 3))
    return s


def _describe(h: dict) -> str:
    return f"SPAN30(feature_channels={h['nf']}, upscale={h['scale']})"


def build(sd: StateDict, hyper: dict, scale: int):
    check_scale(hyper, scale, NAME)
    check_shapes(sd, expected_shapes(hyper), NAME, _describe(hyper))
    b = GraphBuilder(sd, IO(scale, color="rgb", range=1.0), NAME, hyper)
    # (x - mean) * img_range, not foldable into conv_1: its zero padding is
    # applied after the shift.
    x = b.op("sub", [b.input], params={"other": b.const("rgb_mean", RGB_MEAN)},
             name="mean_shift")
    x = b.op("mul", [x], {"value": IMG_RANGE}, name="img_range")
    feature = b.conv(x, "conv_1.eval_conv", name="conv_1")
    h, first_out, last_out1 = feature, None, None
    for i in range(1, hyper["blocks"] + 1):
        h, last_out1 = _spab(b, h, f"block_{i}")
        first_out = first_out or h
    final = b.conv(h, "conv_2.eval_conv", name="conv_2")
    out = b.conv(b.concat([feature, final, first_out, last_out1]), "conv_cat")
    return b.finish(b.pixel_shuffle(b.conv(out, "upsampler.0"), scale))


def _spab(b: GraphBuilder, x: str, p: str) -> tuple[str, str]:
    """One SPAB1 block: its output, and SiLU of its first conv. The authors'
    SiLU runs in place on the first conv's output, so the value SPAB1 returns
    as "out1" (concatenated by the tail) is the activated one."""
    out1 = b.silu(b.conv(x, f"{p}.c1_r.eval_conv", name=f"{p}.c1_r"))
    c2 = b.conv(out1, f"{p}.c2_r.eval_conv", name=f"{p}.c2_r")
    c3 = b.conv(b.silu(c2), f"{p}.c3_r.eval_conv", name=f"{p}.c3_r")
    attention = b.op("sub", [b.sigmoid(c3)], {"value": 0.5})
    return b.mul(b.add(c3, x), attention), out1
