"""concat, split, slice over channels: views of their inputs' planes (no copy)."""

from __future__ import annotations

from .. import _core
from . import POINTWISE, Op, register


@register
class Concat(Op):
    name = "concat"
    arity = (1, None)

    def infer(self, shapes):
        if any(s[1:] != shapes[0][1:] for s in shapes):
            self.fail(f"inputs differ in height or width: {shapes}", ValueError)
        return [(sum(s[0] for s in shapes), *shapes[0][1:])]

    def row_map(self):
        return POINTWISE

    def run(self, rt, inputs):
        return [_core.Channels.cat(list(inputs))]


@register
class Split(Op):
    name = "split"

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        sizes = node.attrs.get("sizes")
        if (not isinstance(sizes, list) or not sizes
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                           for s in sizes)):
            self.fail(f"attribute 'sizes' must be a list of positive ints, got {sizes!r:.40}")
        if len(sizes) != len(node.outputs):
            self.fail(f"{len(sizes)} sizes for {len(node.outputs)} outputs")
        self.sizes = sizes

    def infer(self, shapes):
        c, h, w = shapes[0]
        if sum(self.sizes) != c:
            self.fail(f"sizes {self.sizes} add up to {sum(self.sizes)}, the input has {c} "
                      "channels", ValueError)
        return [(s, h, w) for s in self.sizes]

    def row_map(self):
        return POINTWISE

    def run(self, rt, inputs):
        x, outs, start = inputs[0], [], 0
        for s in self.sizes:
            outs.append(x.select(list(range(start, start + s))))
            start += s
        return outs


@register
class Slice(Op):
    """Channels [start, stop) with Python's (and PyTorch's) slice rules:
    negative indices count from the end, stop may pass it."""
    name = "slice"

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.start = self.attr("start", 0, int)
        self.stop = self.attr("stop", None, int)

    def channels(self, c: int) -> range:
        picked = range(c)[self.start:self.stop]
        if not picked:
            self.fail(f"channels [{self.start}, {self.stop}) of {c} are empty", ValueError)
        return picked

    def infer(self, shapes):
        c, h, w = shapes[0]
        return [(len(self.channels(c)), h, w)]

    def row_map(self):
        return POINTWISE

    def run(self, rt, inputs):
        x = inputs[0]
        return [x.select(list(self.channels(len(x))))]
