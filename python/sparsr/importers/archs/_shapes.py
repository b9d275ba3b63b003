"""Reading hyper-parameters from a state_dict, and checking every key against them.

An architecture module reads a few shapes (feature width from one weight,
block count by counting keys, scale from the upsampler's output channels),
derives the shape of every tensor the network has, and `check` compares the
state_dict with that table the way ``load_state_dict(strict=True)`` does: a
missing key, a wrong shape or a key the network does not have is refused,
naming it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from ...errors import CheckpointError

Shapes = dict[str, tuple[int, ...]]


def shape(sd: Mapping[str, Any], key: str, arch: str, ndim: int | None = None) -> tuple[int, ...]:
    """The shape of sd[key]; refuses a missing key or a wrong number of dimensions."""
    if key not in sd:
        raise CheckpointError(f"{arch}: the state_dict lacks {key!r}")
    got = tuple(int(d) for d in getattr(sd[key], "shape", ()))
    if ndim is not None and len(got) != ndim:
        raise CheckpointError(f"{arch}: {key!r} has shape {got}, expected {ndim} dimensions")
    return got


def block_count(sd: Mapping[str, Any], pattern: str, arch: str) -> int:
    """How many blocks have keys matching `pattern` (a regex whose first group is
    the block number); refuses numbers other than 1..n (a block missing)."""
    found = sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})
    if not found:
        raise CheckpointError(f"{arch}: no block keys matching {pattern!r}")
    if found != list(range(1, len(found) + 1)):
        raise CheckpointError(f"{arch}: the blocks are numbered {found}, not 1..{found[-1]} "
                              "(a block is missing)")
    return len(found)


def upsampler_scale(sd: Mapping[str, Any], key: str, colours: int, arch: str) -> int:
    """The pixel-shuffle factor s of an upsampling conv with colours * s^2 outputs."""
    out_channels = shape(sd, key, arch, 4)[0]
    s = math.isqrt(out_channels // colours)
    if s < 1 or colours * s * s != out_channels:
        raise CheckpointError(f"{arch}: {key!r} has {out_channels} output channels, which is "
                              f"not {colours} x scale^2 for any scale")
    return s


def conv(shapes: Shapes, prefix: str, cout: int, cin: int, k: int, bias: bool = True) -> None:
    """Adds the weight (and bias) of an nn.Conv2d to a shape table."""
    shapes[prefix + ".weight"] = (cout, cin, k, k)
    if bias:
        shapes[prefix + ".bias"] = (cout,)


def check(sd: Mapping[str, Any], expected: Shapes, arch: str) -> None:
    """Refuses a state_dict whose keys or shapes differ from the table."""
    for key, want in expected.items():
        got = shape(sd, key, arch)
        if got != want:
            raise CheckpointError(f"{arch}: {key!r} has shape {got}, expected {want}")
    extra = [k for k in sd if k not in expected]
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise CheckpointError(f"{arch}: the state_dict has keys this network does not: "
                              f"{extra[:3]}{more}")


def check_scale(hyper: Mapping[str, Any], scale: int, arch: str) -> None:
    if scale != hyper["scale"]:
        raise CheckpointError(f"{arch}: these weights upscale x{hyper['scale']}, not x{scale}")
