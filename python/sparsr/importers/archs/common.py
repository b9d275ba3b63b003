"""What the architecture files share: reading a network off its state_dict's
keys and shapes (spandrel's habit), the strict key/shape check, the mean shift.

An architecture's `detect` first looks for a few keys only it has; if they are
there, it reads the hyper-parameters off tensor shapes and key counts (feature
width from one weight, block count by counting keys, scale from the
upsampler's output channels), builds the full table of keys and shapes those
hyper-parameters imply, and compares it with the state_dict (`check_shapes`)
the way ``load_state_dict(strict=True)`` does. A state_dict that looks like
the architecture but does not match it is refused naming the keys at fault,
rather than being passed on as "unknown".
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import numpy as np

from ...errors import CheckpointError

StateDict = Mapping[str, Any]     # key -> numpy array (anything with .shape)
Shapes = dict[str, tuple[int, ...]]

# The DIV2K RGB mean on 0..1 that EDSR-PyTorch's MeanShift (and CARN's) subtracts.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def has_all(sd: StateDict, *keys: str) -> bool:
    return all(k in sd for k in keys)


def shape(sd: StateDict, key: str, arch: str, ndim: int | None = None) -> tuple[int, ...]:
    """The shape of sd[key]; refuses a missing key or (with ndim) a wrong number
    of dimensions."""
    if key not in sd:
        raise CheckpointError(f"{arch}: the state_dict is missing {key!r}")
    got = tuple(int(d) for d in getattr(sd[key], "shape", ()))
    if ndim is not None and len(got) != ndim:
        raise CheckpointError(f"{arch}: {key!r} has shape {got}, expected {ndim} dimensions")
    return got


def indices(sd: StateDict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by the one group of `pattern` over all keys."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := regex.fullmatch(k))})


def count(sd: StateDict, pattern: str, arch: str, first: int = 0) -> int:
    """How many blocks a pattern like r"body\\.(\\d+)\\.conv1\\.weight" (a regex
    over whole keys, its one group the block number) finds, numbered first,
    first + 1, ...: EDSR-PyTorch and BasicSR count from 0 (nn.Sequential), IMDN,
    RFDN and SPAN name their blocks from 1. 0 when there is none; a gap (block 3
    missing of 1..5) is refused naming a key of the first missing block."""
    regex = re.compile(pattern)
    found = indices(sd, pattern)
    if not found or found == list(range(first, first + len(found))):
        return len(found)
    numbered = f"the blocks are numbered {found}, not {first}..{found[-1]}"
    absent = [n for n in range(first, found[-1]) if n not in found]
    if not absent:              # numbers below `first`
        raise CheckpointError(f"{arch}: {numbered}")
    # A key of the first block present, renumbered: a key the gap lacks.
    m = min((m for k in sd if (m := regex.fullmatch(k)) and int(m.group(1)) == found[0]),
            key=lambda m: m.string)
    key = m.string[:m.start(1)] + str(absent[0]) + m.string[m.end(1):]
    raise CheckpointError(f"{arch}: the state_dict is missing {key!r} ({numbered})")


def shuffle_factor(sd: StateDict, key: str, in_channels: int, arch: str) -> int:
    """r such that the conv `key` has in_channels * r * r outputs (the conv before
    a pixel shuffle by r)."""
    out_channels = shape(sd, key, arch, 4)[0]
    r = math.isqrt(max(out_channels // max(in_channels, 1), 0))
    if r < 1 or in_channels * r * r != out_channels:
        raise CheckpointError(f"{arch}: {key!r} has {out_channels} output channels, not "
                              f"{in_channels} x r^2 for a pixel shuffle by r")
    return r


def conv_shapes(prefix: str, cout: int, cin: int, k: int | tuple[int, int],
                bias: bool = True) -> Shapes:
    kh, kw = (k, k) if isinstance(k, int) else k
    out: Shapes = {f"{prefix}.weight": (cout, cin, kh, kw)}
    if bias:
        out[f"{prefix}.bias"] = (cout,)
    return out


def stacked_upsampler_scale(sd: StateDict, prefix: str, step: int, feat: int,
                            arch: str) -> int:
    """The scale of EDSR-PyTorch's Upsampler (and CARN's): one conv to 9F (x3),
    or k convs to 4F (x2^k) at prefix.0, prefix.<step>, prefix.<2 step>, ...
    (each followed by the step's activation / pixel shuffle modules)."""
    key = f"{prefix}.0.weight"
    out = shape(sd, key, arch, 4)[0]
    if out == 9 * feat:
        return 3
    if out != 4 * feat:
        raise CheckpointError(f"{arch}: {key!r} has {out} outputs, not 4 or 9 x {feat}")
    stages = 1
    while any(f"{prefix}.{step * stages}.{p}" in sd for p in ("weight", "bias")):
        stages += 1
    return 2 ** stages


def stacked_upsampler_shapes(prefix: str, step: int, scale: int, feat: int,
                             cin: int) -> Shapes:
    """The convs of that upsampler at `scale`, each taking cin channels per group."""
    if scale == 3:
        return conv_shapes(f"{prefix}.0", 9 * feat, cin, 3)
    out: Shapes = {}
    for i in range(int(math.log2(scale))):
        out.update(conv_shapes(f"{prefix}.{step * i}", 4 * feat, cin, 3))
    return out


def check_shapes(sd: StateDict, expected: Shapes, arch: str, what: str) -> None:
    """Refuses a state_dict whose keys or shapes differ from `expected`, naming
    the missing, mis-shaped and unexpected keys (at most a few of each); `what`
    is the network they would make, e.g. "RFDN(nf=50, blocks=4)"."""
    missing = [k for k in expected if k not in sd]
    wrong = [f"{k!r} has shape {tuple(sd[k].shape)}, expected {expected[k]}"
             for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    unexpected = [k for k in sd if k not in expected]
    problems = []
    if missing:
        problems.append("missing " + _few([repr(k) for k in missing]))
    if wrong:
        problems.append(_few(wrong))
    if unexpected:
        problems.append("unexpected " + _few([repr(k) for k in unexpected]))
    if problems:
        raise CheckpointError(f"{arch}: the state_dict looks like {what} but does not match "
                              f"it: " + "; ".join(problems))


def check_scale(hyper: Mapping[str, Any], scale: int, arch: str) -> None:
    """Refuses a scale other than the one the weights upscale by."""
    if scale != hyper["scale"]:
        raise CheckpointError(f"{arch}: these weights upscale x{hyper['scale']}, not x{scale}")


def _few(items: list[str], n: int = 4) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def mean_shift(b, x: str, prefix: str | None, mean: Any = None, sign: float = -1.0,
               rgb_range: float = 1.0) -> str:
    """A MeanShift layer: the frozen 3->3 1x1 conv `prefix` of the state_dict,
    written as the per-channel scale and shift it is (its weight is diagonal:
    identity / std); without a prefix, x + sign * rgb_range * mean."""
    if prefix is None:
        return b.add_const(x, sign * rgb_range * np.asarray(mean, dtype=np.float64),
                           name="mean_shift")
    w = np.asarray(b.sd[prefix + ".weight"], dtype=np.float32)
    matrix = w.reshape(w.shape[0], -1)
    diagonal = np.diagonal(matrix)
    if (w.shape[2:] != (1, 1) or matrix.shape[0] != matrix.shape[1]
            or not np.array_equal(matrix, np.diag(diagonal))):
        return b.conv(x, prefix)       # not a pure shift: keep the conv
    if not np.all(diagonal == 1.0):
        x = b.mul_const(x, diagonal, name=prefix + ".scale")
    return b.op("add", [x], params={"other": b.param(prefix + ".bias")}, name=prefix)


def range_of_mean_shift(sd: StateDict, prefix: str, default: float) -> float:
    """The pixel range a model was trained on, read off its frozen MeanShift bias
    (-rgb_range * DIV2K mean / std, weight 1 / std): 255 or 1; `default` when
    the bias holds other means."""
    key_w, key_b = prefix + ".weight", prefix + ".bias"
    if key_w not in sd or key_b not in sd:
        return default
    if np.size(sd[key_w]) != 9 or np.size(sd[key_b]) != 3:
        return default          # not a mean shift: the shape check names it
    w = np.asarray(sd[key_w], dtype=np.float64).reshape(3, 3)
    bias = np.asarray(sd[key_b], dtype=np.float64).reshape(3)
    with np.errstate(all="ignore"):     # a zero or non-finite weight is no mean shift
        ratio = -bias / (np.asarray(DIV2K_RGB_MEAN) * np.diagonal(w))
    for rgb_range in (255.0, 1.0):
        if np.allclose(ratio, rgb_range, rtol=1e-3):
            return rgb_range
    return default
