"""conv_transpose2d: PyTorch's ConvTranspose2d over the native gather-form
ConvTranspose (csrc/ops/conv-general.h): kernels 1..11, stride 1..4, padding,
output padding below the stride, groups, optional bias; no dilation."""

from __future__ import annotations

from typing import Any

from .. import _core
from ..graph import Node
from . import BuildContext, Op, RowMap, Shape, register

MAX_KERNEL = 11
MAX_STRIDE = 4
MAX_PADDING = 64


@register
class ConvTranspose2d(Op):
    name = "conv_transpose2d"

    def __init__(self, node: Node, ctx: BuildContext):
        super().__init__(node, ctx)
        weight = self.tensor(ctx, "weight")
        if weight.ndim != 4:
            self.fail(f"weight must be (cin, cout / groups, kh, kw), got shape {weight.shape}")
        cin, cout_per_group, kh, kw = weight.shape
        self.kernel = self.int_pair("kernel", [kh, kw], 1, MAX_KERNEL)
        if self.kernel != (kh, kw):
            self.fail(f"attribute 'kernel' {list(self.kernel)} does not match the "
                      f"{kh}x{kw} weight")
        self.stride = self.int_pair("stride", 1, 1, MAX_STRIDE)
        self.padding = self.int_pair("padding", 0, 0, MAX_PADDING)
        self.output_padding = self.int_pair("output_padding", 0, 0, MAX_STRIDE - 1)
        if any(op >= s for op, s in zip(self.output_padding, self.stride)):
            self.fail(f"attribute 'output_padding' {list(self.output_padding)} must be below "
                      f"the stride {list(self.stride)}")
        if self.int_pair("dilation", 1, 1, 1 << 10) != (1, 1):
            self.fail("a dilated transposed convolution is not supported")
        self.groups = self.attr("groups", 1, int, lo=1)
        if cin % self.groups:
            self.fail(f"weight has {cin} input channels, which {self.groups} groups do not divide")
        self.cin, self.cout = cin, cout_per_group * self.groups
        bias = self.tensor(ctx, "bias", (self.cout,), required=False)
        self.native = _core.ConvTranspose(weight, bias, self.stride, self.padding,
                                          self.output_padding, self.groups, ctx.isa)

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """(H - 1) s - 2 p + k + output_padding per axis."""
        return tuple((n - 1) * s - 2 * p + k + op for n, s, p, k, op in
                     zip((h, w), self.stride, self.padding, self.kernel, self.output_padding))

    def infer(self, shapes: list[Shape]) -> list[Shape]:
        c, h, w = shapes[0]
        if c != self.cin:
            self.fail(f"input has {c} channels, the weight takes {self.cin}", ValueError)
        oh, ow = self.out_size(h, w)
        if oh < 1 or ow < 1:
            self.fail(f"a {h}x{w} input gives a {oh}x{ow} output (padding "
                      f"{list(self.padding)})", ValueError)
        return [(self.cout, oh, ow)]

    def row_map(self) -> RowMap:
        # Output row y = i * s - p + t reads input rows i in
        # [(y + p - k + 1) / s, (y + p) / s]: within this of y // s.
        s, p, k = self.stride[0], self.padding[0], self.kernel[0]
        return RowMap(up=s, halo=(max(p, k - 1 - p) + s - 1) // s + 1)

    def run(self, rt: Any, inputs: list[Any]) -> list[Any]:
        x = inputs[0]
        oh, ow = self.out_size(x.height, x.width)
        out = rt.new(self.cout, oh, ow, written=self.cout)
        self.native.run(x, out)
        rt.count(self.node.name, self.macs([(len(x), x.height, x.width)]))
        return [out]

    def macs(self, shapes: list[Shape]) -> int:
        """Every input pixel times the whole kernel of its group (as PyTorch
        profilers count it, the taps that padding crops included)."""
        _, h, w = shapes[0]
        kh, kw = self.kernel
        return h * w * self.cin * (self.cout // self.groups) * kh * kw
