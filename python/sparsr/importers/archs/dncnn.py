"""DnCNN (cszn/KAIR models/network_dncnn.py, act_mode 'R'), a denoiser: scale 1.

    model.0 conv 3x3 in->nc + ReLU, nb - 2 x (conv nc->nc + ReLU), conv nc->out;
    the network predicts the noise: output = input - model(input). Inputs on 0..1.

KAIR's nn.Sequential is flattened, so convs sit at model.0, model.2, ...,
model.<2 (nb - 1)>. Models trained with batch norm ('BR') are released with the
norm merged into the convs; a state_dict still holding BN statistics is not read.
"""

from __future__ import annotations

import re

from ...errors import CheckpointError
from ...graph import IO
from ..builder import GraphBuilder
from .common import StateDict, check_shapes, conv_shapes, shape

NAME = "dncnn"
_KEY = re.compile(r"model\.\d+\.(weight|bias)")
# KAIR's IRCNN denoiser has the very same keys and shapes as a 7-conv DnCNN (its
# convs are dilated 1, 2, 3, 4, 3, 2, 1); no released DnCNN has 7 convs.
_IRCNN_CONVS = 7


def detect(sd: StateDict) -> dict | None:
    if "model.0.weight" not in sd or not all(_KEY.fullmatch(k) for k in sd):
        return None
    if len(sd["model.0.weight"].shape) != 4:
        return None
    # Counted from the last conv's index, so that a missing key is reported as such.
    last = max(int(k.split(".")[1]) for k in sd)
    nc, in_nc = shape(sd, "model.0.weight", NAME, 4)[:2]
    out_nc = shape(sd, f"model.{last}.weight", NAME, 4)[0]
    hyper = {"in_nc": in_nc, "out_nc": out_nc, "nc": nc, "nb": last // 2 + 1, "scale": 1}
    if in_nc != out_nc:
        raise CheckpointError(f"{NAME}: {in_nc} input and {out_nc} output channels (FDnCNN "
                              "with a noise-level map?); DnCNN's output is input - noise")
    if in_nc not in (1, 3):
        raise CheckpointError(f"{NAME}: {in_nc} channels; sparsr reads grey (1) or RGB (3)")
    if hyper["nb"] == _IRCNN_CONVS:
        raise CheckpointError(f"{NAME}: 7 convs is KAIR's IRCNN layout (dilated convs), which "
                              "cannot be told apart from a 7-conv DnCNN; export it to ONNX")
    check_shapes(sd, expected_shapes(hyper), NAME,
                 f"DnCNN(in_nc={in_nc}, nc={nc}, nb={hyper['nb']})")
    return hyper


def expected_shapes(h: dict) -> dict:
    nc, nb = h["nc"], h["nb"]
    out = conv_shapes("model.0", nc, h["in_nc"], 3)
    for i in range(1, nb - 1):
        out.update(conv_shapes(f"model.{2 * i}", nc, nc, 3))
    out.update(conv_shapes(f"model.{2 * (nb - 1)}", h["out_nc"], nc, 3))
    return out


def scales(hyper: dict) -> list[int]:
    return [1]


def build(sd: StateDict, hyper: dict, scale: int):
    color = "grey" if hyper["in_nc"] == 1 else "rgb"
    b = GraphBuilder(sd, IO(scale=1, color=color, range=1.0), NAME, hyper)
    y = b.input
    for i in range(hyper["nb"] - 1):
        y = b.relu(b.conv(y, f"model.{2 * i}"))
    noise = b.conv(y, f"model.{2 * (hyper['nb'] - 1)}")
    return b.finish(b.sub(b.input, noise))
