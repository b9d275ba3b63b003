"""GraphBuilder: write a network's forward pass as graph ops over state_dict tensors.

An architecture file reads like the PyTorch forward it mirrors::

    b = GraphBuilder(state_dict, IO(scale=4, range=1.0), "srvgg")
    x = b.input
    y = b.conv(x, "body.0")                 # weight/bias from body.0.weight, body.0.bias
    y = b.prelu(y, "body.1")                # per-channel slopes from body.1.weight
    ...
    out = b.add(b.pixel_shuffle(y, 4), b.resize(x, "nearest", scale=4))
    model, tensors = b.finish(out)          # -> checkpoint.save(path, model, tensors)

Every tensor a node uses is copied from the state_dict under its own key, so a
graph names its layers as the original network does. Shapes are checked when
the graph is loaded, not here.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError
from ..graph import IO, Graph, Node


class GraphBuilder:
    def __init__(self, state_dict: Mapping[str, Any], io: IO, architecture: str,
                 hyper: Mapping[str, Any] | None = None):
        self.sd = state_dict
        self.io = io
        self.architecture = architecture
        self.hyper = dict(hyper or {})
        self.nodes: list[Node] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.input = "image"
        self._names: dict[str, int] = {}

    # -- plumbing -------------------------------------------------------------

    def _unique(self, base: str) -> str:
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}#{n}"

    def param(self, key: str) -> str:
        """Adds state_dict[key] as a float32 tensor; returns its name."""
        if key not in self.tensors:
            if key not in self.sd:
                raise CheckpointError(f"{self.architecture}: the state_dict lacks {key!r}")
            self.tensors[key] = _as_float32(self.sd[key], key)
        return key

    def const(self, name: str, array: Any) -> str:
        """Adds a tensor that is not in the state_dict (e.g. a mean shift)."""
        name = self._unique(name)
        self.tensors[name] = _as_float32(array, name)
        return name

    def has(self, key: str) -> bool:
        return key in self.sd

    def op(self, op: str, inputs: Sequence[str], attrs: Mapping[str, Any] | None = None,
           params: Mapping[str, str] | None = None, name: str | None = None,
           n_outputs: int = 1):
        """Appends a node; returns its output value (a list if n_outputs > 1)."""
        name = self._unique(name or op)
        outs = [f"{name}:{i}" if n_outputs > 1 else name for i in range(n_outputs)]
        self.nodes.append(Node(op, name, list(inputs), outs, dict(attrs or {}),
                               dict(params or {})))
        return outs if n_outputs > 1 else outs[0]

    def finish(self, output: str) -> tuple[dict, dict[str, np.ndarray]]:
        """The checkpoint's model description and tensors."""
        graph = Graph(self.nodes, [self.input], [output])
        model = {"format": "graph", "architecture": self.architecture, "io": self.io.to_dict(),
                 "graph": graph.to_dict(), "layers": {}}
        if self.hyper:
            model["hyper"] = self.hyper
        return model, dict(self.tensors)

    # -- layers with weights ----------------------------------------------------

    def conv(self, x: str, prefix: str, *, stride: int | Sequence[int] = 1,
             padding: int | Sequence[int] | None = None, dilation: int | Sequence[int] = 1,
             groups: int = 1, name: str | None = None) -> str:
        """nn.Conv2d with weight `prefix.weight` (and `prefix.bias` if present);
        padding defaults to "same" for odd kernels (k // 2 * dilation)."""
        w = self.sd.get(prefix + ".weight")
        if w is None or len(w.shape) != 4:
            raise CheckpointError(f"{self.architecture}: {prefix}.weight is not a conv weight")
        kh, kw = int(w.shape[2]), int(w.shape[3])
        d = _pair(dilation)
        pad = _pair(padding) if padding is not None else [kh // 2 * d[0], kw // 2 * d[1]]
        params = {"weight": self.param(prefix + ".weight")}
        if self.has(prefix + ".bias"):
            params["bias"] = self.param(prefix + ".bias")
        attrs = {"kernel": [kh, kw], "stride": _pair(stride), "padding": pad,
                 "dilation": d, "groups": int(groups)}
        return self.op("conv2d", [x], attrs, params, name or prefix)

    def conv_transpose(self, x: str, prefix: str, *, stride: int | Sequence[int] = 1,
                       padding: int | Sequence[int] = 0,
                       output_padding: int | Sequence[int] = 0, groups: int = 1,
                       name: str | None = None) -> str:
        """nn.ConvTranspose2d with weight `prefix.weight` of (cin, cout / groups, kh, kw)."""
        w = self.sd.get(prefix + ".weight")
        if w is None or len(w.shape) != 4:
            raise CheckpointError(f"{self.architecture}: {prefix}.weight is not a conv weight")
        params = {"weight": self.param(prefix + ".weight")}
        if self.has(prefix + ".bias"):
            params["bias"] = self.param(prefix + ".bias")
        attrs = {"kernel": [int(w.shape[2]), int(w.shape[3])], "stride": _pair(stride),
                 "padding": _pair(padding), "output_padding": _pair(output_padding),
                 "groups": int(groups)}
        return self.op("conv_transpose2d", [x], attrs, params, name or prefix)

    def prelu(self, x: str, prefix: str) -> str:
        """nn.PReLU: one slope, or one per channel, from `prefix.weight`."""
        return self.op("prelu", [x], params={"weight": self.param(prefix + ".weight")},
                       name=prefix)

    # -- activations -------------------------------------------------------------

    def relu(self, x: str) -> str:
        return self.op("relu", [x])

    def leaky_relu(self, x: str, slope: float = 0.01) -> str:
        return self.op("leaky_relu", [x], {"slope": float(slope)})

    def sigmoid(self, x: str) -> str:
        return self.op("sigmoid", [x])

    def silu(self, x: str) -> str:
        return self.op("silu", [x])

    def gelu(self, x: str, approximate: str = "none") -> str:
        return self.op("gelu", [x], {"approximate": approximate})

    def tanh(self, x: str) -> str:
        return self.op("tanh", [x])

    def clamp(self, x: str, lo: float | None = None, hi: float | None = None) -> str:
        attrs = {}
        if lo is not None:
            attrs["min"] = float(lo)
        if hi is not None:
            attrs["max"] = float(hi)
        return self.op("clamp", [x], attrs)

    # -- arithmetic ----------------------------------------------------------------

    def add(self, a: str, b: str) -> str:
        return self.op("add", [a, b])

    def sub(self, a: str, b: str) -> str:
        return self.op("sub", [a, b])

    def mul(self, a: str, b: str) -> str:
        return self.op("mul", [a, b])

    def add_const(self, x: str, values: Any, name: str = "shift") -> str:
        """x + values[c] per channel (or one value for all)."""
        return self.op("add", [x], params={"other": self.const(name, np.ravel(values))})

    def mul_const(self, x: str, values: Any, name: str = "scale") -> str:
        """x * values[c] per channel (or one value for all)."""
        return self.op("mul", [x], params={"other": self.const(name, np.ravel(values))})

    # -- channels and pixels ----------------------------------------------------------

    def concat(self, xs: Sequence[str]) -> str:
        return self.op("concat", list(xs))

    def split(self, x: str, sizes: Sequence[int]) -> list[str]:
        return self.op("split", [x], {"sizes": [int(s) for s in sizes]}, n_outputs=len(sizes))

    def slice(self, x: str, start: int, stop: int) -> str:
        return self.op("slice", [x], {"start": int(start), "stop": int(stop)})

    def pixel_shuffle(self, x: str, factor: int) -> str:
        return self.op("pixel_shuffle", [x], {"factor": int(factor)})

    def pixel_unshuffle(self, x: str, factor: int) -> str:
        return self.op("pixel_unshuffle", [x], {"factor": int(factor)})

    def resize(self, x: str, mode: str, *, scale: float | None = None, like: str | None = None,
               align_corners: bool = False) -> str:
        """F.interpolate: by a scale factor, or to the height and width of value `like`."""
        attrs: dict[str, Any] = {"mode": mode, "align_corners": bool(align_corners)}
        if (scale is None) == (like is None):
            raise ValueError("resize takes either scale or like")
        if scale is not None:
            attrs["scale"] = float(scale)
        return self.op("resize", [x] if like is None else [x, like], attrs)

    def max_pool(self, x: str, kernel: int, stride: int | None = None, padding: int = 0) -> str:
        return self.op("max_pool", [x], {"kernel": _pair(kernel),
                                         "stride": _pair(stride or kernel),
                                         "padding": _pair(padding)})

    def avg_pool(self, x: str, kernel: int, stride: int | None = None, padding: int = 0) -> str:
        return self.op("avg_pool", [x], {"kernel": _pair(kernel),
                                         "stride": _pair(stride or kernel),
                                         "padding": _pair(padding)})

    def global_mean(self, x: str) -> str:
        """(C, H, W) -> (C, 1, 1): nn.AdaptiveAvgPool2d(1)."""
        return self.op("global_mean", [x])

    def global_std(self, x: str) -> str:
        """(C, H, W) -> (C, 1, 1): the population standard deviation over pixels."""
        return self.op("global_std", [x])


def _pair(v: int | Sequence[int]) -> list[int]:
    if isinstance(v, (int, np.integer)):
        return [int(v), int(v)]
    v = [int(a) for a in v]
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair, got {v}")
    return v


def _as_float32(value: Any, key: str) -> np.ndarray:
    if hasattr(value, "detach"):          # a torch tensor, from a tool
        value = value.detach().cpu().numpy()
    a = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
    if not np.all(np.isfinite(a)):
        raise CheckpointError(f"tensor {key!r} holds NaN or infinite values")
    return a
