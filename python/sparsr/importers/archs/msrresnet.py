"""MSRResNet (xinntao/BasicSR basicsr/archs/srresnet_arch.py), on 0..1.

    conv_first + leaky ReLU 0.1, body.0..n-1 residual blocks without BN (conv1,
    ReLU, conv2, plus the input; no long skip), upsampler (x2 / x3: upconv1 to
    F * s^2, pixel shuffle s; x4: upconv1 and upconv2 to 4F, pixel shuffle 2,
    each followed by leaky ReLU), conv_hr + leaky ReLU, conv_last, plus the input
    upsampled bilinearly (align_corners False).
"""

from __future__ import annotations

from ...errors import CheckpointError
from ...graph import IO
from ..builder import GraphBuilder
from .common import StateDict, check_shapes, conv_shapes, count, has_all, shape, shuffle_factor

NAME = "msrresnet"
_SLOPE = 0.1


def detect(sd: StateDict) -> dict | None:
    if not has_all(sd, "conv_first.weight", "body.0.conv1.weight", "upconv1.weight",
                   "conv_hr.weight", "conv_last.weight"):
        return None
    feat, in_ch = shape(sd, "conv_first.weight", NAME, 4)[:2]
    if "upconv2.weight" in sd:
        scale = 4
    else:
        scale = shuffle_factor(sd, "upconv1.weight", feat, NAME)
        if scale not in (2, 3):
            raise CheckpointError(f"{NAME}: upconv1 upsamples x{scale}; MSRResNet has x2, x3 "
                                  "or (with upconv2) x4")
    hyper = {"num_in_ch": in_ch, "num_out_ch": shape(sd, "conv_last.weight", NAME, 4)[0],
             "num_feat": feat, "num_block": count(sd, r"body\.(\d+)\.conv1\.weight", NAME),
             "scale": scale}
    if in_ch not in (1, 3) or hyper["num_out_ch"] != in_ch:
        raise CheckpointError(f"{NAME}: {in_ch} input and {hyper['num_out_ch']} output "
                              "channels; sparsr reads RGB (3) or grey (1), the same out")
    check_shapes(sd, expected_shapes(hyper), NAME,
                 f"MSRResNet(num_feat={feat}, num_block={hyper['num_block']}, upscale={scale})")
    return hyper


def expected_shapes(h: dict) -> dict:
    feat, s = h["num_feat"], h["scale"]
    out = conv_shapes("conv_first", feat, h["num_in_ch"], 3)
    for i in range(h["num_block"]):
        out.update(conv_shapes(f"body.{i}.conv1", feat, feat, 3))
        out.update(conv_shapes(f"body.{i}.conv2", feat, feat, 3))
    if s == 4:
        out.update(conv_shapes("upconv1", 4 * feat, feat, 3))
        out.update(conv_shapes("upconv2", 4 * feat, feat, 3))
    else:
        out.update(conv_shapes("upconv1", s * s * feat, feat, 3))
    out.update(conv_shapes("conv_hr", feat, feat, 3))
    out.update(conv_shapes("conv_last", h["num_out_ch"], feat, 3))
    return out


def scales(hyper: dict) -> list[int]:
    return [hyper["scale"]]


def build(sd: StateDict, hyper: dict, scale: int):
    color = "rgb" if hyper["num_in_ch"] == 3 else "grey"
    b = GraphBuilder(sd, IO(scale=scale, color=color, range=1.0), NAME, hyper)
    x = b.input
    y = b.leaky_relu(b.conv(x, "conv_first"), _SLOPE)
    for i in range(hyper["num_block"]):
        r = b.conv(b.relu(b.conv(y, f"body.{i}.conv1")), f"body.{i}.conv2")
        y = b.add(y, r)
    if scale == 4:
        for up in ("upconv1", "upconv2"):
            y = b.leaky_relu(b.pixel_shuffle(b.conv(y, up), 2), _SLOPE)
    else:
        y = b.leaky_relu(b.pixel_shuffle(b.conv(y, "upconv1"), scale), _SLOPE)
    y = b.conv(b.leaky_relu(b.conv(y, "conv_hr"), _SLOPE), "conv_last")
    return b.finish(b.add(y, b.resize(x, "bilinear", scale=scale)))
