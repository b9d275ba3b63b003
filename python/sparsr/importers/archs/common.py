"""What several architecture files share: reading a network off its state_dict's
keys and shapes (spandrel's habit), the strict key/shape check, the mean shift.

An architecture's `detect` first looks for a few keys only it has; if they are
there, it reads the hyper-parameters off tensor shapes and key counts, builds
the full table of keys and shapes those hyper-parameters imply, and compares
it with the state_dict (`check_shapes`). A state_dict that looks like the
architecture but does not match it is refused naming the keys at fault, rather
than being passed on as "unknown".
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


def shape(sd: StateDict, key: str, arch: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"{arch}: the state_dict is missing {key!r}")
    return tuple(int(d) for d in sd[key].shape)


def indices(sd: StateDict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by the one group of `pattern` over all keys."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := regex.fullmatch(k))})


def count(sd: StateDict, pattern: str, arch: str) -> int:
    """How many blocks 0..n-1 a pattern like r"body\\.(\\d+)\\.conv1\\.weight" finds;
    a gap (block 3 missing of 0..5) is refused naming the first missing key."""
    found = indices(sd, pattern)
    if not found:
        return 0
    for expected, got in enumerate(found):
        if expected != got:
            key = pattern.replace(r"(\d+)", str(expected)).replace("\\", "")
            raise CheckpointError(f"{arch}: the state_dict is missing {key!r} (found blocks "
                                  f"{found[:3]}..{found[-1]} with a gap)")
    return len(found)


def shuffle_factor(out_channels: int, in_channels: int, key: str, arch: str) -> int:
    """r such that out_channels == in_channels * r * r (a pixel-shuffle upsampler)."""
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


def check_shapes(sd: StateDict, expected: Shapes, arch: str, what: str) -> None:
    """Refuses a state_dict whose keys or shapes differ from `expected`, naming
    the missing, mis-shaped and unexpected keys (at most a few of each)."""
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
    w = np.asarray(sd[key_w], dtype=np.float64).reshape(3, 3)
    bias = np.asarray(sd[key_b], dtype=np.float64).reshape(3)
    ratio = -bias / (np.asarray(DIV2K_RGB_MEAN) * np.diagonal(w))
    for rgb_range in (255.0, 1.0):
        if np.allclose(ratio, rgb_range, rtol=1e-3):
            return rgb_range
    return default
