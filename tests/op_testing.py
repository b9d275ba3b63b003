"""Helpers of the op tests: the ISA levels to run, features from arrays, odd
shapes, a check of the zero border, and a stand-in for the executor's run
context so that op classes run without the graph executor."""

from __future__ import annotations

import numpy as np

from sparsr import _core
from sparsr.graph import Node
from sparsr.ops import OPS, BuildContext

LEVELS = [level for level in ("scalar", "avx2", "avx512") if _core.isa_supported(level)]

# (C, H, W): 1x1 features, 1-pixel rows and columns, odd widths around the
# vector widths (8, 16) and a wide one.
SHAPES = [(1, 1, 1), (3, 1, 7), (2, 5, 17), (1, 3, 33), (16, 4, 100), (5, 2, 1), (4, 1, 16)]


def feature(a: np.ndarray):
    """A fresh feature holding the (C, H, W) array, as Channels."""
    return _core.Feature.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).view()


def empty(shape):
    return _core.Feature(*shape).view()


def random(rng, shape, scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def border_is_zero(x) -> bool:
    """Whether every plane's one-pixel border is still zero: a 3x3 convolution
    summing the 8 neighbours reads it, so it must match the zero-padded sum."""
    c, h, w = len(x), x.height, x.width
    weight = np.ones((1, c, 3, 3), np.float32)
    weight[:, :, 1, 1] = 0
    out = empty((1, h, w))
    _core.Conv2d(weight, isa="scalar")(x, out, _core.PixelSet.full(h, w))
    padded = np.pad(x.numpy().astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    want = sum(padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)
               if (dy, dx) != (1, 1)).sum(axis=0)
    return bool(np.allclose(out.numpy()[0], want, rtol=1e-5, atol=1e-5))


class StandInRun:
    """The parts of the executor's run context an op may use (HELPERS.md):
    new, output, count, mode, isa. With inplace, output(i) hands back input i
    as the executor does when nothing reads it later."""

    def __init__(self, inputs, isa=None, inplace=False, mode="dense"):
        self.inputs, self.isa, self.inplace, self.mode = list(inputs), isa, inplace, mode
        self.counted: dict[str, int] = {}

    def new(self, channels, height, width, written=0):
        return _core.Feature(channels, height, width, written).view()

    def output(self, i, shape):
        x = self.inputs[i]
        if self.inplace and (len(x), x.height, x.width) == tuple(shape):
            return x
        return self.new(*shape, written=shape[0])

    def count(self, name, macs):
        self.counted[name] = self.counted.get(name, 0) + macs


def make_op(op: str, n_inputs=1, attrs=None, params=None, tensors=None, n_outputs=1,
            isa=None):
    node = Node(op, f"test_{op}", [f"x{i}" for i in range(n_inputs)],
                [f"y{i}" for i in range(n_outputs)], dict(attrs or {}), dict(params or {}))
    return OPS[op](node, BuildContext(tensors or {}, {}, isa))


def run_op(op, arrays, isa=None, inplace=False):
    """infer, then run on features of the arrays: (output arrays, the run's
    outputs as Channels, its inputs as Channels)."""
    inputs = [feature(a) for a in arrays]
    shapes = op.infer([a.shape for a in arrays])
    outs = op.run(StandInRun(inputs, isa=isa, inplace=inplace), inputs)
    assert [(len(o), o.height, o.width) for o in outs] == [tuple(s) for s in shapes]
    return [o.numpy() for o in outs], outs, inputs
