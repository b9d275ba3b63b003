"""The network as data: a list of ops over named values, and its checks.

A graph is what a sparsr checkpoint describes (``model["graph"]``)::

    {"inputs": ["image"], "outputs": ["out"],
     "nodes": [{"op": "conv2d", "name": "head", "inputs": ["image"], "outputs": ["h"],
                "attrs": {"kernel": 3, "padding": 1},
                "params": {"weight": "head.weight", "bias": "head.bias"}}, ...]}

Every value is one image-sized feature of (channels, height, width), batch 1.
``params`` maps a role of the op ("weight", "bias", ...) to a tensor stored in
the checkpoint. Nodes are listed in an order in which they can run; the
checks below refuse a cycle, a value read before it is written or written
twice, a dangling output and an unknown op, naming the node.

The model description around the graph (``model["io"]``) says how images
enter and leave it: the pixel range the network expects, the colour layout
and the scale. ``model["layers"]`` optionally chooses a weight format per
convolution, by the name of its weight tensor without ``.weight``, and the
precision its kernel computes in ("f32", "bf16" or "int8", used when the
model is loaded with precision="auto"; tools/precision.py writes it), and the
quantization of its input for int8 kernels (``"int8": {"scale": s,
"zero_point": 0 or 128}``, tools/quantize.py's calibration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from .errors import CheckpointError

# How images enter and leave a network: io["color"].
COLORS = ("rgb", "y", "grey")
# The smallest io.range: an image enters the network scaled by range / its peak
# (1 or 255) in float32, and its output is divided by that again.
MIN_RANGE = 1e-3
# Weight formats a layer may ask for (model["layers"][name]["format"]), and the
# options of the N:M one.
FORMATS = ("dense", "csr", "bcsr", "nm", "sparse")
FORMAT_OPTIONS = ("n", "m")
NM_GROUPS = (4, 8, 16, 32)     # the M of N:M formats the kernels have
# What a layer computes in (model["layers"][name]["precision"]), and what
# sparsr.load(precision=...) takes: "auto" is each layer's own, f32 if none.
PRECISIONS = ("f32", "bf16", "int8")
LOAD_PRECISIONS = PRECISIONS + ("auto",)
# The zero points of int8 inputs: 0 for inputs that are never negative (ReLU
# outputs), 128 for the others.
INT8_ZERO_POINTS = (0, 128)


@dataclass
class Node:
    """One op application."""
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"op": self.op, "name": self.name, "inputs": list(self.inputs),
             "outputs": list(self.outputs)}
        if self.attrs:
            d["attrs"] = dict(self.attrs)
        if self.params:
            d["params"] = dict(self.params)
        return d


@dataclass
class IO:
    """How images map to the graph's input and output values.

    The runtime turns an image into floats on [0, range] (``range`` 255 for a
    network trained on 0..255, 1 for 0..1), in the channel order and colour
    layout given, runs the graph, and maps its output back the same way.
    """
    scale: int
    color: str = "rgb"          # "rgb": 3 channels; "y": luma only, chroma upscaled bicubically;
    #                             "grey": one channel in, one out
    range: float = 1.0
    channel_order: str = "rgb"  # or "bgr"

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1

    def to_dict(self) -> dict:
        return {"scale": self.scale, "color": self.color, "range": self.range,
                "channel_order": self.channel_order}

    @classmethod
    def from_dict(cls, d: Any) -> "IO":
        if not isinstance(d, dict):
            raise CheckpointError("model 'io' must be an object with scale, color and range")
        scale = _field(d, "scale", int, "io")
        color = d.get("color", "rgb")
        rng = d.get("range", 1.0)
        order = d.get("channel_order", "rgb")
        if not 1 <= scale <= 16:
            raise CheckpointError(f"io.scale must be 1..16, got {scale}")
        if color not in COLORS:
            raise CheckpointError(f"io.color must be one of {COLORS}, got {color!r}")
        if (not isinstance(rng, (int, float)) or isinstance(rng, bool)
                or not math.isfinite(rng) or not MIN_RANGE <= rng <= 65535):
            raise CheckpointError(f"io.range must be a number in [{MIN_RANGE}, 65535], got "
                                  f"{rng!r:.40}")
        if order not in ("rgb", "bgr"):
            raise CheckpointError(f"io.channel_order must be 'rgb' or 'bgr', got {order!r}")
        return cls(scale, color, float(rng), order)


def _field(d: Mapping, key: str, kind, where: str):
    value = d.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CheckpointError(f"{where}.{key} is missing or not a {kind.__name__}")
    return value


@dataclass
class Graph:
    """Nodes in a runnable order, the input value and the output value."""
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]

    def to_dict(self) -> dict:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs),
                "nodes": [n.to_dict() for n in self.nodes]}

    @classmethod
    def from_dict(cls, d: Any) -> "Graph":
        if not isinstance(d, dict):
            raise CheckpointError("model 'graph' must be an object")
        nodes = []
        raw = d.get("nodes")
        if not isinstance(raw, list):
            raise CheckpointError("graph.nodes must be a list")
        for i, n in enumerate(raw):
            if not isinstance(n, dict):
                raise CheckpointError(f"graph node {i} is not an object")
            where = f"graph node {i} ({n.get('name', '?')!s:.40})"
            op, name = n.get("op"), n.get("name", f"node{i}")
            if not isinstance(op, str) or not isinstance(name, str):
                raise CheckpointError(f"{where}: 'op' and 'name' must be strings")
            ins, outs = n.get("inputs", []), n.get("outputs", [])
            attrs, params = n.get("attrs", {}), n.get("params", {})
            if not (_str_list(ins) and _str_list(outs)):
                raise CheckpointError(f"{where}: inputs and outputs must be lists of names")
            if not isinstance(attrs, dict):
                raise CheckpointError(f"{where}: attrs must be an object")
            if not isinstance(params, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
                raise CheckpointError(f"{where}: params must map roles to tensor names")
            nodes.append(Node(op, name, list(ins), list(outs), dict(attrs), dict(params)))
        ins, outs = d.get("inputs"), d.get("outputs")
        if not (_str_list(ins) and _str_list(outs)) or len(ins) != 1 or len(outs) != 1:
            raise CheckpointError("graph.inputs and graph.outputs must each name one value")
        return cls(nodes, list(ins), list(outs))

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r}")

    def producers(self) -> dict[str, int]:
        """Value -> index of the node that writes it (graph inputs: -1)."""
        out = {v: -1 for v in self.inputs}
        for i, n in enumerate(self.nodes):
            for v in n.outputs:
                out[v] = i
        return out

    def consumers(self) -> dict[str, list[int]]:
        """Value -> indices of the nodes that read it, in order."""
        out: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for v in n.inputs:
                out.setdefault(v, []).append(i)
        return out

    def check(self, known_ops: Iterable[str], tensors: Mapping[str, Any]) -> None:
        """Structural checks: every op known, names unique, every value written
        once before it is read, every written value used, tensors present."""
        known = set(known_ops)
        written = set(self.inputs)
        names = set()
        for i, n in enumerate(self.nodes):
            where = f"node {n.name!r} ({n.op})"
            if n.op not in known:
                raise CheckpointError(f"{where}: unsupported op {n.op!r} "
                                      f"(supported: {', '.join(sorted(known))})")
            if n.name in names:
                raise CheckpointError(f"{where}: a second node has this name")
            names.add(n.name)
            for v in n.inputs:
                if v not in written:
                    later = any(v in m.outputs for m in self.nodes[i:])
                    raise CheckpointError(
                        f"{where}: reads {v!r} " + ("before it is written (a cycle, or nodes "
                                                    "out of order)" if later else
                                                    "which no node writes"))
            for v in n.outputs:
                if v in written:
                    raise CheckpointError(f"{where}: writes {v!r}, already written")
                written.add(v)
            for role, t in n.params.items():
                if t not in tensors:
                    raise CheckpointError(f"{where}: its {role} tensor {t!r} is not in the file")
        out = self.outputs[0]
        if out not in written:
            raise CheckpointError(f"graph output {out!r} is written by no node")
        read = {v for n in self.nodes for v in n.inputs} | {out}
        dangling = [v for n in self.nodes for v in n.outputs if v not in read]
        if dangling:
            raise CheckpointError(f"values written but never used (dangling): {dangling[:5]}")


def check_layers(layers: Any) -> dict:
    """model["layers"]: {layer: {"format": one of FORMATS, "options": {"n": N,
    "m": M}, "precision": one of PRECISIONS, "int8": {"scale": s, "zero_point":
    z}}}, every entry typed (other keys are ignored); precision "int8" needs
    the "int8" calibration."""
    if not isinstance(layers, dict):
        raise CheckpointError("model 'layers' must be an object")
    for name, info in layers.items():
        where = f"layers[{name!r:.60}]"
        if not isinstance(info, dict):
            raise CheckpointError(f"{where} must be an object with a 'format'")
        fmt = info.get("format", "dense")
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise CheckpointError(f"{where}.format must be one of {FORMATS}, got {fmt!r:.40}")
        precision = info.get("precision", "f32")
        if not isinstance(precision, str) or precision not in PRECISIONS:
            raise CheckpointError(f"{where}.precision must be one of {PRECISIONS}, got "
                                  f"{precision!r:.40}")
        if "int8" in info:
            int8_input(info["int8"], where)
        elif precision == "int8":
            raise CheckpointError(f"{where}.precision is 'int8' but the layer has no 'int8' "
                                  "calibration (scale, zero_point; tools/quantize.py writes it)")
        options = info.get("options", {})
        if not isinstance(options, dict):
            raise CheckpointError(f"{where}.options must be an object")
        for key, value in options.items():
            if key not in FORMAT_OPTIONS:
                raise CheckpointError(f"{where}.options: unknown option {key!r:.40} (the N:M "
                                      f"format takes {FORMAT_OPTIONS})")
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1024:
                raise CheckpointError(f"{where}.options.{key} must be an int in [0, 1024], got "
                                      f"{value!r:.40}")
        if fmt == "nm":
            n, m = options.get("n"), options.get("m")
            if m not in NM_GROUPS or n is None or not 1 <= n <= m:
                raise CheckpointError(f"{where}: the nm format needs options n and m with m in "
                                      f"{NM_GROUPS} and 1 <= n <= m, got n={n!r}, m={m!r}")
    return layers


def int8_input(quant: Any, where: str = "int8") -> tuple[float, int]:
    """A layer's "int8" entry as (scale, zero_point); CheckpointError, naming
    `where`, unless the scale is a positive finite number whose inverse is
    finite in float32 and the zero point one of INT8_ZERO_POINTS."""
    if not isinstance(quant, dict):
        raise CheckpointError(f"{where}.int8 must be an object with 'scale' and 'zero_point'")
    scale, zero = quant.get("scale"), quant.get("zero_point")
    if (not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale)
            or not 1e-30 < scale < 1e30):
        raise CheckpointError(f"{where}.int8.scale must be a positive finite number (within "
                              f"1e-30..1e30), got {scale!r:.40}")
    if zero not in INT8_ZERO_POINTS or isinstance(zero, bool):
        raise CheckpointError(f"{where}.int8.zero_point must be one of {INT8_ZERO_POINTS}, got "
                              f"{zero!r:.40}")
    return float(scale), int(zero)


class LayerChoices(Mapping):
    """model["layers"] as the ops read it, with the precision of the load
    applied: "f32" or "bf16" for every layer; "int8" for every layer with int8
    calibration, each layer's own elsewhere (f32 if none); or "auto" for each
    layer's own. A live view: a format a tool sets later in `layers` is seen."""

    def __init__(self, layers: dict, precision: str):
        if precision not in LOAD_PRECISIONS:
            raise ValueError(f"precision must be one of {LOAD_PRECISIONS}, got {precision!r}")
        self.layers = layers
        self.precision = precision

    def precision_of(self, name: str) -> str:
        info = self.layers.get(name)
        info = info if isinstance(info, dict) else {}
        if self.precision == "int8" and "int8" in info:
            return "int8"
        if self.precision not in ("auto", "int8"):
            return self.precision
        return info.get("precision", "f32")

    def __getitem__(self, name: str) -> dict:
        info = self.layers.get(name, {})
        return {**(info if isinstance(info, dict) else {}), "precision": self.precision_of(name)}

    def get(self, name: str, default: Any = None) -> dict:
        return self[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


def _str_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)
