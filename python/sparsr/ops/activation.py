"""Activations: one _core.unary call each, in place when the executor allows."""

from __future__ import annotations

import math

import numpy as np

from .. import _core
from . import POINTWISE, Op, register


def shape_of(x) -> tuple[int, int, int]:
    return (len(x), x.height, x.width)


class Unary(Op):
    """An elementwise map; subclasses set `kind` (of _core.unary) and `args`."""

    inplace = True
    kind = ""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.args: dict = {}

    def infer(self, shapes):
        return [shapes[0]]

    def row_map(self):
        return POINTWISE

    def run(self, rt, inputs):
        x = inputs[0]
        out = rt.output(0, shape_of(x))
        _core.unary(self.kind, x, out, isa=rt.isa, **self.args)
        return [out]


@register
class Relu(Unary):
    name = kind = "relu"


@register
class Sigmoid(Unary):
    name = kind = "sigmoid"


@register
class Silu(Unary):
    name = kind = "silu"


@register
class Tanh(Unary):
    name = kind = "tanh"


@register
class LeakyRelu(Unary):
    name = kind = "leaky_relu"

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.args = {"alpha": self.attr("slope", 0.01, float)}   # PyTorch's default slope

    def slopes(self, channels: int) -> np.ndarray:
        """The negative slope of each of `channels` channels (for a conv's epilogue)."""
        return np.full(channels, self.args["alpha"], np.float32)


@register
class Gelu(Unary):
    name = "gelu"

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        approximate = self.attr("approximate", "none", str, choices=("none", "tanh"))
        self.kind = "gelu" if approximate == "none" else "gelu_tanh"


@register
class Clamp(Unary):
    name = kind = "clamp"

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        lo, hi = self.attr("min", None, float), self.attr("max", None, float)
        if lo is None and hi is None:
            self.fail("needs a 'min' or a 'max' attribute")
        self.args = {"alpha": -math.inf if lo is None else lo,
                     "beta": math.inf if hi is None else hi}


@register
class Prelu(Unary):
    name = kind = "prelu"

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        slopes = self.tensor(ctx, "weight")
        if slopes.ndim != 1:
            self.fail(f"weight must be (C,) or (1,), got shape {slopes.shape}")
        self.args = {"slopes": np.ascontiguousarray(slopes, dtype=np.float32)}

    def infer(self, shapes):
        self.slopes(shapes[0][0])
        return [shapes[0]]

    def slopes(self, channels: int) -> np.ndarray:
        """The negative slope of each of `channels` channels (one slope is shared)."""
        slopes = self.args["slopes"]
        if len(slopes) not in (1, channels):
            self.fail(f"{len(slopes)} slopes for {channels} channels (expected {channels} or 1)",
                      ValueError)
        return np.ascontiguousarray(np.broadcast_to(slopes, (channels,)))
