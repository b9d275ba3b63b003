"""add, sub, mul: of two features of equal shapes, of a feature and a (C,1,1) or
(1,1,1) broadcast, or of one feature and a constant (an 'other' tensor of one
value per channel or one, or a scalar 'value' attribute; for sub, 'reverse':
true computes constant - x)."""

from __future__ import annotations

import numpy as np

from .. import _core
from . import POINTWISE, Op, register
from .activation import shape_of


def broadcasts_to(small, full) -> bool:
    return small[1:] == (1, 1) and small[0] in (full[0], 1)


class Arith(Op):
    arity = (1, 2)
    inplace = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        has_other, has_value = "other" in node.params, "value" in node.attrs
        self.values = None
        if len(node.inputs) == 2:
            if has_other or has_value:
                self.fail("takes two inputs, or one input and a constant, not both")
        elif has_other == has_value:
            self.fail("with one input needs exactly one constant: an 'other' tensor or a "
                      "'value' attribute")
        elif has_other:
            other = self.tensor(ctx, "other")
            if other.ndim != 1:
                self.fail(f"'other' must be (C,) or (1,), got shape {other.shape}")
            self.values = other
        else:
            self.values = np.array([self.attr("value", kind=float)], np.float32)
        self.reverse = self.attr("reverse", False, bool)
        if self.reverse and (self.name != "sub" or self.values is None):
            self.fail("'reverse' applies only to sub with a constant")

    def infer(self, shapes):
        if self.values is not None:
            c = shapes[0][0]
            if len(self.values) not in (1, c):
                self.fail(f"'other' has {len(self.values)} values for {c} channels "
                          f"(expected {c} or 1)", ValueError)
            return [shapes[0]]
        a, b = shapes
        if a == b or broadcasts_to(b, a):
            return [a]
        if broadcasts_to(a, b):
            return [b]
        self.fail(f"input shapes {a} and {b} differ and neither is a (C,1,1) or (1,1,1) "
                  "broadcast of the other", ValueError)

    def row_map(self):
        return POINTWISE

    def run(self, rt, inputs):
        if self.values is not None:
            x = inputs[0]
            out = rt.output(0, shape_of(x))
            _core.binary_const(self.name, x, self.values, out, reverse=self.reverse, isa=rt.isa)
            return [out]
        a, b = inputs
        shape = self.infer([shape_of(a), shape_of(b)])[0]
        # The output reuses the full-sized input's buffer, never a broadcast's.
        out = rt.output(0 if shape_of(a) == shape else 1, shape)
        _core.binary(self.name, a, b, out, isa=rt.isa)
        return [out]


@register
class Add(Arith):
    name = "add"


@register
class Sub(Arith):
    name = "sub"


@register
class Mul(Arith):
    name = "mul"
