"""max_pool and avg_pool: PyTorch's max_pool2d / avg_pool2d with
ceil_mode=False (floor sizes); max pads with -inf, the average counts the zero
padding (count_include_pad=True). Stride defaults to the kernel."""

from __future__ import annotations

from typing import Any

from .. import _core
from ..graph import Node
from . import BuildContext, Op, RowMap, Shape, register
from .conv import window_rows

MAX_WINDOW = 64


class _Pool(Op):
    def __init__(self, node: Node, ctx: BuildContext):
        super().__init__(node, ctx)
        if node.attrs.get("kernel") is None:
            self.fail("lacks its 'kernel' attribute")
        self.kernel = self.int_pair("kernel", 1, 1, MAX_WINDOW)
        stride = node.attrs.get("stride")
        # PyTorch's stride=None (or []) means the kernel.
        self.stride = (self.kernel if stride is None or stride == []
                       else self.int_pair("stride", 1, 1, MAX_WINDOW))
        self.padding = self.int_pair("padding", 0, 0, MAX_WINDOW // 2)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            self.fail(f"attribute 'padding' {list(self.padding)} must be at most half the "
                      f"kernel {list(self.kernel)}")
        if self.attr("ceil_mode", False, bool):
            self.fail("ceil_mode is not supported (floor output sizes only)")
        if self.int_pair("dilation", 1, 1, MAX_WINDOW) != (1, 1):
            self.fail("a dilated pooling window is not supported")

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return tuple((n + 2 * p - k) // s + 1 for n, p, k, s in
                     zip((h, w), self.padding, self.kernel, self.stride))

    def infer(self, shapes: list[Shape]) -> list[Shape]:
        c, h, w = shapes[0]
        kh, kw = self.kernel
        ph, pw = self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            self.fail(f"a {h}x{w} input is smaller than the {kh}x{kw} window (padding "
                      f"{list(self.padding)})", ValueError)
        return [(c, *self.out_size(h, w))]

    def row_map(self) -> RowMap:
        return window_rows(self.kernel[0], self.stride[0], self.padding[0])

    def run(self, rt: Any, inputs: list[Any]) -> list[Any]:
        x = inputs[0]
        oh, ow = self.out_size(x.height, x.width)
        out = rt.new(len(x), oh, ow, written=len(x))
        self.pool(x, out, self.kernel, self.stride, self.padding)
        return [out]


@register
class MaxPool(_Pool):
    name = "max_pool"
    pool = staticmethod(_core.max_pool)


@register
class AvgPool(_Pool):
    name = "avg_pool"
    pool = staticmethod(_core.avg_pool)

    def __init__(self, node: Node, ctx: BuildContext):
        super().__init__(node, ctx)
        if not self.attr("count_include_pad", True, bool):
            self.fail("count_include_pad=False is not supported (the padding is counted)")
        if self.node.attrs.get("divisor_override") is not None:
            self.fail("divisor_override is not supported")
