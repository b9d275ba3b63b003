"""An SMSR module as band steps: its spatial mask, each layer and each
collect group as a step of its own (bands.py), so that band execution
computes every row of each once. Run as one step, the module reads a window
of 2 x (n_layers + 4) rows more than it gives, all recomputed in every band.

- mask: the mask branch on a window (RowMap halo 5, even rows), as a
  1-channel feature of 0 / 1; the mask itself goes to rt.masks as the
  module's would.
- layer i: a 3x3 reading its halo rows from the rows beside its inputs
  (RowMap border), at the pixel sets of the mask rows it gives. Its outputs
  are its dense channels and its sparse ones, in storage order, as two values:
  the sparse ones are freed after their collect group, the dense ones are
  read again by the collect at unimportant pixels.
- collect g: the 1x1 of layer group g at important pixels, plus the previous
  group's sum; the last one also the collect at unimportant pixels.

The arithmetic is that of SmsrModule.forward, call for call.
"""

from __future__ import annotations

import numpy as np

from .. import _core
from . import POINTWISE, RowMap

MASK_ROWS = RowMap(halo=5, align=2)    # see SmsrModuleOp.row_map
LAYER_ROWS = RowMap(halo=1, border=True)


class _Step:
    def __init__(self, module):
        self.module = module

    def infer(self, shapes):
        raise NotImplementedError   # shapes are given by band_steps


def _pixel_sets(mask):
    """important, unimportant pixels from a mask value (1 x h x w of 0 / 1)."""
    m = np.ascontiguousarray(mask.numpy()[0] > 0.5).view(np.uint8)
    important = _core.PixelSet.from_mask(m, mask.height, mask.width)
    return important, important.complement()


class MaskStep(_Step):
    def row_map(self):
        return MASK_ROWS

    def run(self, rt, inputs):
        mask, _, _ = self.module.pixel_sets(rt.counter, inputs[0], rt.mode)
        rt.masks.append(mask)
        return [_core.Feature.from_numpy(mask[None].astype(np.float32)).view()]


class LayerStep(_Step):
    def __init__(self, module, i: int):
        super().__init__(module)
        self.i = i

    def row_map(self):
        return LAYER_ROWS

    def run(self, rt, inputs):
        m, i = self.module, self.i
        *parts, mask = inputs
        src = _core.Channels.cat(parts)
        h, w = src.height, src.width
        important, unimportant = _pixel_sets(mask)
        nd, c = m.n_dense[i], m.channels
        outs = []
        if nd:
            outs.append(_core.Feature(nd, h, w, written=nd).view())
        if nd < c:
            outs.append(_core.Feature(c - nd, h, w).view())   # zero at unimportant pixels
        m.run_layer(rt.counter, i, src, _core.Channels.cat(outs), important, unimportant,
                    _core.Feature(1, h, w))
        return outs


class CollectStep(_Step):
    """Inputs: the group's layer outputs (its parts, per layer), the mask, the
    previous group's sum (g > 0), and for the last group every layer's dense
    channels."""

    def __init__(self, module, g: int, parts: list[int], dense: list[bool]):
        super().__init__(module)
        self.g = g
        self.parts = parts          # values per layer of the group
        self.dense = dense          # per layer of the module: has dense channels
        self.last = g == len(module.collect_pairs) - 1

    def row_map(self):
        return POINTWISE

    def run(self, rt, inputs):
        m = self.module
        k = sum(self.parts)
        layer_values, mask = inputs[:k], inputs[k]
        rest = inputs[k + 1:]
        previous = rest.pop(0) if self.g else None
        outputs, at = [], 0
        for n in self.parts:
            outputs.append(_core.Channels.cat(layer_values[at:at + n]))
            at += n
        h, w = mask.height, mask.width
        important, unimportant = _pixel_sets(mask)
        zero = _core.Feature(1, h, w)
        # Written whole by the copy, or at important pixels by the collect and
        # elsewhere by the unimportant one.
        written = m.channels if self.last or previous is not None else 0
        y = _core.Feature(m.channels, h, w, written=written).view()
        if previous is not None:
            # Summed into y in place, as forward does (the gathered kernels
            # accumulate; they take no separate residual).
            _core.copy(previous, y)
        m.run_collect(rt.counter, self.g, outputs, y, important, zero,
                      residual=y if previous is not None else None)
        if self.last:
            dense = iter(rest)
            m.run_unimportant_collect(rt.counter, [next(dense) if d else None
                                                   for d in self.dense], y, unimportant, zero)
        return [y]


def band_steps(module, x: str, y: str, shape):
    """The module reading value x and giving y as band steps: a list of (op,
    inputs, outputs, output shapes), intermediate values named after y."""
    c, h, w = shape
    steps = [(MaskStep(module), [x], [f"{y}~mask"], [(1, h, w)])]
    mask = f"{y}~mask"
    values = []              # per layer: its value names (dense, sparse)
    src = [x]
    for i in range(module.n_layers):
        nd = module.n_dense[i]
        names, shapes = [], []
        if nd:
            names.append(f"{y}~d{i}")
            shapes.append((nd, h, w))
        if nd < c:
            names.append(f"{y}~s{i}")
            shapes.append((c - nd, h, w))
        steps.append((LayerStep(module, i), src + [mask], names, shapes))
        values.append(names)
        src = names
    has_dense = [module.n_dense[i] > 0 for i in range(module.n_layers)]
    previous = None
    for g, group in enumerate(module.collect_pairs):
        last = g == len(module.collect_pairs) - 1
        ins = [v for j in group for v in values[j]] + [mask]
        if previous:
            ins.append(previous)
        if last:
            ins += [values[j][0] for j in range(module.n_layers) if has_dense[j]]
        out = y if last else f"{y}~y{g}"
        steps.append((CollectStep(module, g, [len(values[j]) for j in group], has_dense),
                      ins, [out], [(c, h, w)]))
        previous = out
    return steps
