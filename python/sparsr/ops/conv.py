"""conv2d: the packed fast convolutions (dense, CSR, block CSR, N:M) and the general one.

1x1 and 3x3 "same" convolutions with stride 1 run on the packed micro-kernels
of csrc/kernels in the weight format the checkpoint chooses per layer
(``model["layers"][name]["format"]``: "dense", "csr", "bcsr", "nm" or "sparse",
the engine's choice by measured cost). Grouped ones run one packed conv per group
over channel views. Everything else (other kernel sizes, strides, dilations,
paddings) runs on the general direct convolution, dense.

The executor fuses a following activation (ReLU, leaky ReLU or PReLU: per
output channel negative slopes) and a following residual add into the conv's
epilogue (``run_fused``).
"""

from __future__ import annotations

import numpy as np

from .. import _core
from ..errors import CheckpointError
from ..graph import int8_input
from . import BuildContext, Op, RowMap, register


# A conv's fused activation: None, "relu", or one negative slope per output channel.
Activation = str | np.ndarray | None


def activation_args(act, c0: int, c1: int) -> dict:
    """Keyword arguments of the native convs for act on output channels [c0, c1)."""
    if act is None:
        return {}
    if isinstance(act, str):
        if act != "relu":
            raise ValueError(f"unknown fused activation {act!r}")
        return {"relu": True}
    return {"slopes": np.ascontiguousarray(act[c0:c1], dtype=np.float32)}


def window_rows(kernel: int, stride: int, padding: int, dilation: int = 1) -> RowMap:
    """The RowMap of a sliding window (convolution, pooling) along the rows:
    output row y reads input rows y * stride - padding + [0, dilation * (kernel - 1)]."""
    span = dilation * (kernel - 1)
    return RowMap(down=stride, halo=max(padding, span - padding), align=stride)


class MacCounter:
    """Executed and dense multiply-accumulates per layer name."""

    def __init__(self) -> None:
        self.layers: dict[str, list[int]] = {}

    def add(self, name: str, macs: int, dense_macs: int = 0) -> None:
        s = self.layers.setdefault(name, [0, 0])
        s[0] += int(macs)
        s[1] += int(dense_macs)


def available_formats() -> set[str]:
    return {k["format"] for k in _core.kernels()}


# Time of the AMX bf16 dense kernels over the f32 dense ones, by kernel size
# (measured at 640x360, 2 threads: 3x3 64->64 2.98x faster, 1x1 256->64 2.10x,
# 1x1 64->64 1.46x). There is no bf16 CSR kernel: a "sparse" bf16 layer runs
# CSR (in f32) only where it beats these.
AMX_DENSE_RELATIVE_COST = {3: 0.34, 1: 0.5}


def choose_format(requested: str, weight: np.ndarray, isa: str | None,
                  precision: str = "f32") -> str:
    """The kernel format a layer runs with. "sparse" leaves the choice to the
    engine: of the zero-skip kernels, unstructured (CSR) and block-sparse (bcsr,
    whose blocks of output channels share a pattern), the one whose cost model,
    fitted to measured sparse and dense kernel times, expects the shorter time,
    where it beats dense by a margin; so a lightly sparse layer stays dense. In
    bf16 on AMX, dense is measured against the AMX kernel's time instead."""
    if requested != "sparse":
        return requested
    w = np.ascontiguousarray(weight)
    k = w.shape[2] if w.ndim == 4 and w.shape[2] == w.shape[3] else 0
    models = {"csr": _core.csr_relative_cost, "bcsr": _core.bcsr_relative_cost}
    costs = {f: cost(w, isa) for f, cost in models.items()
             if f in available_formats() and k in (1, 3)}
    if not costs:
        return "dense"
    best = min(costs, key=costs.get)
    margin = 0.05   # the models' error
    dense = 1.0
    if precision == "bf16" and k in AMX_DENSE_RELATIVE_COST and \
            _core.choose_kernel("dense", k, isa, "bf16")["isa"] == "amx":
        dense = AMX_DENSE_RELATIVE_COST[k]
    return best if costs[best] < dense * (1 - margin) else "dense"


class PackedConv:
    """One packed fast convolution (1x1 or 3x3, stride 1) plus its MAC bookkeeping."""

    def __init__(self, name: str, weight: np.ndarray, bias: np.ndarray | None, isa: str | None,
                 format: str = "dense", options: dict | None = None,
                 dense_cin: int | None = None, precision: str = "f32",
                 quant: tuple[float, int] | None = None):
        w = np.ascontiguousarray(weight, dtype=np.float32)
        self.name = name
        self.cout, self.cin, self.k = w.shape[0], w.shape[1], w.shape[2]
        self.nonzeros = int(np.count_nonzero(w))
        self.format = choose_format(format, w, isa, precision)
        # bf16 or int8 where the level has such a kernel of the format, else
        # f32 (native.precision says which). int8 quantizes the input by quant,
        # (scale, zero point).
        self.requested_precision = precision
        extra = dict(options or {})
        if precision == "int8":
            if quant is None:
                raise CheckpointError(f"layer {name!r}: int8 asked for without calibration data")
            extra.update(in_scale=quant[0], in_zero_point=quant[1])
        self.native = _core.Conv2d(w, bias, isa=isa, format=self.format, precision=precision,
                                   **extra)
        self.weight = w
        # Input channels of the whole layer this conv computes part of: dense
        # MACs are counted as for the whole layer.
        self.dense_cin = self.cin if dense_cin is None else dense_cin
        # Formats other than dense skip zero weights: only nonzeros cost a MAC.
        self.skips_zeros = self.format != "dense"
        self._nonzeros_in: dict[tuple[int, int], int] = {}

    def macs_per_pixel(self, cin: int, cout: int) -> int:
        if not self.skips_zeros:
            return cin * cout * self.k * self.k
        key = (cin, cout)
        if key not in self._nonzeros_in:
            self._nonzeros_in[key] = int(np.count_nonzero(self.weight[:cout, :cin]))
        return self._nonzeros_in[key]

    def __call__(self, counter: MacCounter, src, dst, pixels, relu=False, cin=-1, cout=-1,
                 residual=None, dense_pixels: int | None = None,
                 slopes: np.ndarray | None = None) -> None:
        self.native(src, dst, pixels, relu=relu, cin=cin, cout=cout, residual=residual,
                    slopes=slopes)
        ci = self.cin if cin < 0 else cin
        co = self.cout if cout < 0 else cout
        dense = (dense_pixels or 0) * self.dense_cin * self.cout * self.k * self.k
        counter.add(self.name, pixels.count * self.macs_per_pixel(ci, co), dense)

    def row(self) -> dict:
        """A row of Model.info()'s layer table."""
        params = int(self.weight.size)
        return {"name": self.name, "shape": list(self.weight.shape), "format": self.format,
                "kernel": self.native.kernel, "precision": self.native.precision,
                "requested_precision": self.requested_precision,
                "params": params, "nonzeros": self.nonzeros,
                "sparsity": 1.0 - self.nonzeros / params if params else 0.0}


def layer_precision(ctx: BuildContext, layer: str) -> str:
    """The precision the load gives layer `layer` (graph.LayerChoices): "f32",
    "bf16" or "int8"."""
    info = ctx.layers.get(layer, {})
    return info.get("precision", "f32") if isinstance(info, dict) else "f32"


def layer_quant(ctx: BuildContext, layer: str) -> tuple[float, int] | None:
    """The int8 input quantization (scale, zero point) of layer `layer`, if
    the checkpoint has it (graph.check_layers has checked it)."""
    info = ctx.layers.get(layer, {})
    quant = info.get("int8") if isinstance(info, dict) else None
    return None if quant is None else int8_input(quant, f"layers[{layer!r:.60}]")


def layer_format(ctx: BuildContext, layer: str) -> tuple[str, dict]:
    """The format and options the checkpoint asks for layer `layer`."""
    info = ctx.layers.get(layer, {})
    fmt = info.get("format", "dense") if isinstance(info, dict) else "dense"
    options = info.get("options", {}) if isinstance(info, dict) else {}
    return fmt, {k: int(v) for k, v in options.items()}


@register
class Conv2d(Op):
    name = "conv2d"

    def __init__(self, node, ctx: BuildContext):
        super().__init__(node, ctx)
        w = self.tensor(ctx, "weight")
        if w.ndim != 4:
            self.fail(f"weight must be (cout, cin / groups, kh, kw), got shape {w.shape}")
        cout, cin_g, kh, kw = (int(d) for d in w.shape)
        self.kernel = self.int_pair("kernel", [kh, kw], 1, 11)
        if self.kernel != (kh, kw):
            self.fail(f"kernel {list(self.kernel)} does not match weight shape {w.shape}")
        self.stride = self.int_pair("stride", 1, 1, 4)
        self.dilation = self.int_pair("dilation", 1, 1, 8)
        self.padding = self.int_pair("padding", [kh // 2 * self.dilation[0],
                                                 kw // 2 * self.dilation[1]], 0, 32)
        self.groups = self.attr("groups", 1, int, 1, 1 << 16)
        if cout % self.groups:
            self.fail(f"{cout} output channels do not split into {self.groups} groups")
        self.cout, self.cin = cout, cin_g * self.groups
        self.bias = self.tensor(ctx, "bias", (cout,), required=False)
        self.layer = node.params["weight"].removesuffix(".weight")
        fmt, options = layer_format(ctx, self.layer)
        precision = layer_precision(ctx, self.layer)
        fast = (kh == kw and kh in (1, 3) and self.stride == (1, 1)
                and self.dilation == (1, 1) and self.padding == (kh // 2, kw // 2))
        self.parts: list[PackedConv] = []
        self.general = None
        if fast:
            og = cout // self.groups
            for g in range(self.groups):
                name = self.layer if self.groups == 1 else f"{self.layer}[{g}]"
                b = None if self.bias is None else self.bias[g * og:(g + 1) * og]
                self.parts.append(PackedConv(name, w[g * og:(g + 1) * og], b, ctx.isa, fmt,
                                             options, precision=precision,
                                             quant=layer_quant(ctx, self.layer)))
        else:
            if fmt not in ("dense", "sparse"):
                self.fail(f"format {fmt!r} needs a 1x1 or 3x3 stride-1 convolution")
            self.general = _core.ConvGeneral(w, self.bias, stride=self.stride,
                                             padding=self.padding, dilation=self.dilation,
                                             groups=self.groups, isa=ctx.isa)
        self.weight = w
        self._format = (fmt, options, precision)
        self._quant = layer_quant(ctx, self.layer)
        self._slices: dict[tuple[int, int, bool], PackedConv] = {}

    def splittable(self) -> bool:
        """Whether the conv can run as partial convs over column ranges of its input."""
        return (self.general is None and self.groups == 1 and self.kernel == (1, 1)
                and self.parts[0].format in ("dense", "csr"))

    def column_slice(self, c0: int, c1: int, with_bias: bool) -> PackedConv:
        """The conv over input channels [c0, c1) only, packed once."""
        key = (c0, c1, with_bias)
        if key not in self._slices:
            fmt, options, precision = self._format
            self._slices[key] = PackedConv(self.layer, self.weight[:, c0:c1],
                                           self.bias if with_bias else None,
                                           self.parts[0].native.isa, fmt, options,
                                           precision=precision, quant=self._quant)
        return self._slices[key]

    def infer(self, shapes):
        c, h, w = shapes[0]
        if c != self.cin:
            self.fail(f"input has {c} channels, the weight expects {self.cin}", ValueError)
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) \
            // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) \
            // self.stride[1] + 1
        if oh < 1 or ow < 1:
            self.fail(f"a {h}x{w} input is too small for this convolution", ValueError)
        return [(self.cout, oh, ow)]

    def row_map(self):
        if self.general is None:
            # The fast path reads its padding row from memory (the zero border).
            return RowMap(halo=self.kernel[0] // 2, border=self.kernel[0] == 3)
        return window_rows(self.kernel[0], self.stride[0], self.padding[0], self.dilation[0])

    def macs(self, shapes):
        _, oh, ow = self.infer(shapes)[0]
        return oh * ow * self.cout * (self.cin // self.groups) * self.kernel[0] * self.kernel[1]

    def run(self, rt, inputs):
        return self.run_fused(rt, inputs, act=None, residual=None)

    def run_fused(self, rt, inputs, act: Activation, residual):
        """act(conv(x)) (+ residual), in one pass over the output. act: None,
        "relu", or the float32 negative slope of each output channel (leaky
        ReLU, PReLU)."""
        x = inputs[0]
        (c, oh, ow), = self.infer([(len(x), x.height, x.width)])
        out = rt.new(c, oh, ow, written=c)
        if self.general is not None:
            self.general.run(x, out, residual=residual, **activation_args(act, 0, c))
            rt.count(self.layer, self.macs([(len(x), x.height, x.width)]))
            return [out]
        pixels = rt.full(oh, ow)
        og, ig = self.cout // self.groups, self.cin // self.groups
        for g, part in enumerate(self.parts):
            if self.groups == 1:
                src, dst, res = x, out, residual
            else:
                src = x.select(list(range(g * ig, (g + 1) * ig)))
                dst = out.select(list(range(g * og, (g + 1) * og)))
                res = None if residual is None else residual.select(
                    list(range(g * og, (g + 1) * og)))
            part(rt.counter, src, dst, pixels, residual=res, dense_pixels=pixels.count,
                 **activation_args(act, g * og, (g + 1) * og))
        return [out]

    def packed_convs(self):
        return self.parts + list(self._slices.values())

    def convs(self):
        if self.general is not None:
            n = int(np.count_nonzero(self.weight))
            return [{"name": self.layer, "shape": list(self.weight.shape), "format": "dense",
                     "kernel": "conv-general", "precision": "f32",
                     "requested_precision": self._format[2],
                     "params": int(self.weight.size), "nonzeros": n,
                     "sparsity": 1.0 - n / self.weight.size}]
        return [p.row() for p in self.parts]
