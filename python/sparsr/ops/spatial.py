"""pixel_shuffle, pixel_unshuffle and resize, as PyTorch computes them."""

from __future__ import annotations

import math

from .. import _core
from . import Op, RowMap, register
from .activation import shape_of


@register
class PixelShuffle(Op):
    name = "pixel_shuffle"

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.factor = self.attr("factor", None, int, lo=1, hi=64)
        if self.factor is None:
            self.fail("lacks its 'factor' attribute")

    def infer(self, shapes):
        c, h, w = shapes[0]
        r = self.factor
        if c % (r * r):
            self.fail(f"{c} channels do not divide by factor^2 = {r * r}", ValueError)
        return [(c // (r * r), h * r, w * r)]

    def row_map(self):
        return RowMap(up=self.factor)

    def run(self, rt, inputs):
        c, h, w = self.infer([shape_of(inputs[0])])[0]
        out = rt.new(c, h, w, written=c)
        _core.pixel_shuffle(inputs[0], out, self.factor)
        return [out]


@register
class PixelUnshuffle(PixelShuffle):
    name = "pixel_unshuffle"

    def infer(self, shapes):
        c, h, w = shapes[0]
        r = self.factor
        if h % r or w % r:
            self.fail(f"factor {r} does not divide the size {h}x{w}", ValueError)
        return [(c * r * r, h // r, w // r)]

    def row_map(self):
        return RowMap(down=self.factor, align=self.factor)

    def run(self, rt, inputs):
        c, h, w = self.infer([shape_of(inputs[0])])[0]
        out = rt.new(c, h, w, written=c)
        _core.pixel_unshuffle(inputs[0], out, self.factor)
        return [out]


@register
class Resize(Op):
    """To floor(size * scale) (one input), or to the size of a second input."""
    name = "resize"
    arity = (1, 2)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.mode = self.attr("mode", "nearest", str, choices=("nearest", "bilinear", "bicubic"))
        self.align_corners = self.attr("align_corners", False, bool)
        if self.mode == "nearest" and self.align_corners:
            self.fail("align_corners applies to bilinear and bicubic only")
        self.scale = self.attr("scale", None, float, lo=1e-6, hi=1e6)
        if len(node.inputs) == 1 and self.scale is None:
            self.fail("with one input needs a 'scale' attribute")
        if len(node.inputs) == 2 and self.scale is not None:
            self.fail("takes a 'scale' or a second input giving the size, not both")

    def infer(self, shapes):
        c, h, w = shapes[0]
        if self.scale is None:
            return [(c, *shapes[1][1:])]
        oh, ow = math.floor(h * self.scale), math.floor(w * self.scale)
        if oh < 1 or ow < 1:
            self.fail(f"scale {self.scale} makes {h}x{w} empty ({oh}x{ow})", ValueError)
        return [(c, oh, ow)]

    def shape_inputs(self):
        return (1,) if self.scale is None else ()

    def row_map(self):
        # An integer scale (half-pixel centres): output row y samples input rows
        # near y / s, the taps of the mode beside them (and the edge clamp only at
        # the image's own edges). To another value's size, or with aligned corners,
        # the sampling depends on the whole height.
        s = self.scale
        if s is None or self.align_corners or s != int(s) or s < 1:
            return None
        return RowMap(up=int(s), halo={"nearest": 1, "bilinear": 2, "bicubic": 3}[self.mode])

    def run(self, rt, inputs):
        c, h, w = self.infer([shape_of(x) for x in inputs])[0]
        out = rt.new(c, h, w, written=c)
        scale = self.scale or 0.0
        _core.resize(inputs[0], out, self.mode, self.align_corners, scale_h=scale, scale_w=scale)
        return [out]
