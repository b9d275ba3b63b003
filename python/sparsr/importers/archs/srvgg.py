"""Real-ESRGAN's SRVGGNetCompact (xinntao/Real-ESRGAN realesrgan/archs/srvgg_arch.py).

    body.0 conv 3x3 in->F, body.1 PReLU(F), then num_conv x (conv F->F, PReLU),
    body.<last> conv F->out*s^2, pixel shuffle by s, plus the input upsampled
    by nearest neighbour. Inputs on 0..1.

Keys are `body.<i>.weight/bias` only: convs at even i, PReLU slopes at odd i.
The ReLU and leaky-ReLU variants store no activation weights, so the two cannot
be told apart from a state_dict; only the PReLU one (every released model) is read.
"""

from __future__ import annotations

import re

from ...errors import CheckpointError
from ...graph import IO
from ..builder import GraphBuilder
from .common import StateDict, check_shapes, conv_shapes, shape, shuffle_factor

NAME = "srvgg"
_KEY = re.compile(r"body\.\d+\.(weight|bias)")


def detect(sd: StateDict) -> dict | None:
    if "body.0.weight" not in sd or not all(_KEY.fullmatch(k) for k in sd):
        return None
    if len(sd["body.0.weight"].shape) != 4:
        return None
    # Counted from the last conv's index, so that a missing key in the middle is
    # reported as missing rather than shifting every layer after it.
    last = max(int(k.split(".")[1]) for k in sd) // 2 * 2
    if not any(k.endswith(".weight") and len(sd[k].shape) == 1 for k in sd):
        raise CheckpointError(f"{NAME}: SRVGGNetCompact without PReLU weights (act_type relu "
                              "or leakyrelu): the two cannot be told apart from the weights; "
                              "export the model to ONNX instead")
    feat, in_ch = shape(sd, "body.0.weight", NAME, 4)[:2]
    hyper = {"num_in_ch": in_ch, "num_out_ch": in_ch, "num_feat": feat,
             "num_conv": (last - 2) // 2,
             "scale": shuffle_factor(sd, f"body.{last}.weight", in_ch, NAME)}
    if in_ch not in (1, 3):
        raise CheckpointError(f"{NAME}: {in_ch} input channels; sparsr reads RGB (3) or grey (1)")
    check_shapes(sd, expected_shapes(hyper), NAME, _describe(hyper))
    return hyper


def expected_shapes(h: dict) -> dict:
    feat, s = h["num_feat"], h["scale"]
    out = conv_shapes("body.0", feat, h["num_in_ch"], 3)
    out["body.1.weight"] = (feat,)
    for i in range(1, h["num_conv"] + 1):
        out.update(conv_shapes(f"body.{2 * i}", feat, feat, 3))
        out[f"body.{2 * i + 1}.weight"] = (feat,)
    out.update(conv_shapes(f"body.{2 * h['num_conv'] + 2}", h["num_out_ch"] * s * s, feat, 3))
    return out


def _describe(h: dict) -> str:
    return (f"SRVGGNetCompact(num_feat={h['num_feat']}, num_conv={h['num_conv']}, "
            f"upscale={h['scale']})")


def scales(hyper: dict) -> list[int]:
    return [hyper["scale"]]


def build(sd: StateDict, hyper: dict, scale: int):
    color = "rgb" if hyper["num_in_ch"] == 3 else "grey"
    b = GraphBuilder(sd, IO(scale=scale, color=color, range=1.0), NAME, hyper)
    x = b.input
    y = x
    for i in range(hyper["num_conv"] + 1):
        y = b.prelu(b.conv(y, f"body.{2 * i}"), f"body.{2 * i + 1}")
    y = b.conv(y, f"body.{2 * hyper['num_conv'] + 2}")
    # The network learns the residual over the nearest-upsampled input.
    out = b.add(b.pixel_shuffle(y, scale), b.resize(x, "nearest", scale=scale))
    return b.finish(out)
