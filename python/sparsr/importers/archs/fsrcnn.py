"""FSRCNN (yjn870/FSRCNN-pytorch models.py), on the Y channel scaled to 0..1.

    first_part: conv 5x5 C->d, PReLU(d)
    mid_part:   conv 1x1 d->s, PReLU(s), m x (conv 3x3 s->s, PReLU(s)), conv 1x1 s->d, PReLU(d)
    last_part:  transposed conv 9x9 d->C, stride = scale, padding 4, output_padding scale - 1

The scale is the transposed conv's stride, which no weight shape records: it
comes from the caller (or the file name, e.g. fsrcnn_x2.pth; see pth.convert).
"""

from __future__ import annotations

from ...errors import CheckpointError
from ...graph import IO
from ..builder import GraphBuilder
from .common import StateDict, check_shapes, conv_shapes, has_all, indices, shape

NAME = "fsrcnn"
# The author trained and released x2, x3 and x4.
SCALES = [2, 3, 4]


def detect(sd: StateDict) -> dict | None:
    if not has_all(sd, "first_part.0.weight", "mid_part.0.weight", "last_part.weight"):
        return None
    d, channels, k_first, _ = shape(sd, "first_part.0.weight", NAME, 4)
    s = shape(sd, "mid_part.0.weight", NAME, 4)[0]
    # The last 1x1 conv is mid_part.<2m + 2>: m counted from its index, so that a
    # missing key in the middle is reported as missing.
    last = max(indices(sd, r"mid_part\.(\d+)\.(?:weight|bias)")) // 2 * 2
    k_last = shape(sd, "last_part.weight", NAME, 4)[2]
    hyper = {"num_channels": channels, "d": d, "s": s, "m": (last - 2) // 2,
             "first_kernel": k_first, "last_kernel": k_last, "scale": None}
    if channels not in (1, 3):
        raise CheckpointError(f"{NAME}: {channels} channels; sparsr reads Y (1) or RGB (3)")
    if k_first % 2 == 0 or k_last % 2 == 0:
        raise CheckpointError(f"{NAME}: even kernel sizes ({k_first}, {k_last}) are not FSRCNN's")
    check_shapes(sd, expected_shapes(hyper), NAME,
                 f"FSRCNN(num_channels={channels}, d={d}, s={s}, m={hyper['m']})")
    return hyper


def expected_shapes(h: dict) -> dict:
    d, s, m, c = h["d"], h["s"], h["m"], h["num_channels"]
    out = conv_shapes("first_part.0", d, c, h["first_kernel"])
    out["first_part.1.weight"] = (d,)
    out.update(conv_shapes("mid_part.0", s, d, 1))
    out["mid_part.1.weight"] = (s,)
    for i in range(1, m + 1):
        out.update(conv_shapes(f"mid_part.{2 * i}", s, s, 3))
        out[f"mid_part.{2 * i + 1}.weight"] = (s,)
    out.update(conv_shapes(f"mid_part.{2 * m + 2}", d, s, 1))
    out[f"mid_part.{2 * m + 3}.weight"] = (d,)
    # A transposed conv's weight is (in, out, kh, kw).
    out["last_part.weight"] = (d, c, h["last_kernel"], h["last_kernel"])
    out["last_part.bias"] = (c,)
    return out


def scales(hyper: dict) -> list[int]:
    return [hyper["scale"]] if hyper.get("scale") else list(SCALES)


def build(sd: StateDict, hyper: dict, scale: int):
    color = "y" if hyper["num_channels"] == 1 else "rgb"
    hyper = dict(hyper, scale=scale)
    b = GraphBuilder(sd, IO(scale=scale, color=color, range=1.0), NAME, hyper)
    y = b.prelu(b.conv(b.input, "first_part.0"), "first_part.1")
    for i in range(hyper["m"] + 2):
        y = b.prelu(b.conv(y, f"mid_part.{2 * i}"), f"mid_part.{2 * i + 1}")
    # Out = (H - 1) * scale - 2 * (k // 2) + k + scale - 1 = H * scale.
    y = b.conv_transpose(y, "last_part", stride=scale, padding=hyper["last_kernel"] // 2,
                         output_padding=scale - 1)
    return b.finish(y)
