"""global_mean, global_std: (C, H, W) -> (C, 1, 1), accumulated in double; std is
the population one (divides by H * W), as IMDN's stdv_channels."""

from __future__ import annotations

from .. import _core
from . import Op, register


class GlobalStat(Op):
    stat = ""

    def infer(self, shapes):
        return [(shapes[0][0], 1, 1)]

    def run(self, rt, inputs):
        x = inputs[0]
        out = rt.new(len(x), 1, 1, written=len(x))
        _core.global_stats(x, **{self.stat: out}, isa=rt.isa)
        return [out]


@register
class GlobalMean(GlobalStat):
    name = "global_mean"
    stat = "mean"


@register
class GlobalStd(GlobalStat):
    name = "global_std"
    stat = "std"
