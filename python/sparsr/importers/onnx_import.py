"""ONNX files -> sparsr graphs.

    convert_onnx("net.onnx", "net.sparsr")                 # scale inferred, range 1.0
    model, tensors = graph_from_onnx(onnx.load("net.onnx"), input_range=255.0)

A model exported with ``torch.onnx.export`` (either exporter, dynamic H and W)
maps onto the sparsr op set node by node, in three steps:

1. Lowering. Every ONNX value becomes one of: a *known* array (initializers,
   Constant nodes, and everything computed from them and from tensor shapes:
   the shape subgraphs that feed a Resize or a Reshape are folded with numpy);
   an image *feature* (a sparsr value of (C, H, W), batch 1); or a *view*, a
   Reshape/Transpose of a feature that is not itself (1, C, H, W). A view keeps,
   per element, its index into the feature it came from, so a chain of views
   that ends as a 4-D tensor is recognised by what it does (a pixel shuffle, an
   unshuffle, a channel permutation) and not by the shape of the ONNX code that
   did it; a MatMul over a view's channel axis is a 1x1 convolution.
   Feature ops become graph nodes; a few ONNX ops with no sparsr op of their own
   (Erf, Sqrt, a sum over one axis) become internal nodes ("_erf", ...).
2. Fusion: patterns of nodes become one sparsr op (x * sigmoid(x) -> silu, the
   erf and tanh forms of GELU, sum / (H * W) -> global_mean, the population
   standard deviation -> global_std). An internal node left over is refused,
   naming the ONNX node it came from.
3. Size independence. A sparsr graph runs at any input size, an ONNX graph may
   hold sizes fixed when it was exported. The graph is lowered at two probe
   sizes and must come out the same at both (ops, attributes and tensors);
   the output size at the probes gives the scale.

Anything else is refused with a CheckpointError naming the ONNX node and its op
type: an op outside the set, a batch other than 1, a tensor of another rank
that is no recognised pattern, a shape that does not work out. Nothing is run:
shapes are propagated, never data. The ONNX graph carries no pixel range, so
``input_range`` defaults to 1.0.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import CheckpointError
from ..graph import IO, MIN_RANGE, Graph, Node
from . import quiet_nans
from .builder import GraphBuilder

# The graph ops this importer writes (HELPERS "Op semantics"; smsr_module aside).
SPARSR_OPS = ("conv2d", "conv_transpose2d", "relu", "sigmoid", "silu", "tanh", "leaky_relu",
              "gelu", "clamp", "prelu", "add", "sub", "mul", "concat", "split", "slice",
              "pixel_shuffle", "pixel_unshuffle", "resize", "max_pool", "avg_pool",
              "global_mean", "global_std")
# Default-domain opsets this importer reads (the op semantics it implements
# differ by version only where an attribute became an input; both are read).
MIN_OPSET, MAX_OPSET = 9, 21
# The two input sizes (H, W) the graph is lowered at when its input size is
# dynamic: multiples of 32 (so strided and unshuffled paths divide), H != W.
PROBES = ((64, 96), (96, 160))
# Rearranging a feature (Reshape/Transpose, DepthToSpace DCR) takes an int64
# index per element at the probe size: bounded, so a hostile graph costs at
# most 64 MB there.
MAX_VIEW_ELEMENTS = 1 << 23
# A constant folded from inputs smaller than this (ConstantOfShape, Expand,
# Range, Tile) has at most this many elements.
MAX_FOLD_ELEMENTS = 1 << 22


# -- public ------------------------------------------------------------------

def convert_onnx(src: str | os.PathLike, dst: str | os.PathLike, *, scale: int | None = None,
                 input_range: float | None = None, color: str | None = None) -> dict:
    """Reads an ONNX file and writes a sparsr checkpoint; returns the model
    description written (io, graph), as `importers.convert` does."""
    import onnx
    from .. import checkpoint

    src = Path(src)
    try:
        proto = onnx.load(str(src))
    except FileNotFoundError:
        raise CheckpointError(f"{src}: no such file") from None
    except Exception as e:      # protobuf's DecodeError and friends
        raise CheckpointError(f"{src}: not an ONNX model ({type(e).__name__}: {e})") from None
    try:
        model, tensors = graph_from_onnx(proto, scale=scale, input_range=input_range,
                                         color=color)
    except CheckpointError as e:
        raise CheckpointError(f"{src}: {e}") from None
    metadata = {"source": "onnx", "onnx_file": src.name, "opset": _default_opset(proto),
                "producer": f"{proto.producer_name} {proto.producer_version}".strip()}
    checkpoint.save(dst, model, tensors, metadata)
    return model


def graph_from_onnx(model_proto: Any, *, scale: int | None = None,
                    input_range: float | None = None,
                    color: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The sparsr model description and tensors of an onnx.ModelProto."""
    graph = model_proto.graph
    opset = _default_opset(model_proto)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise CheckpointError(f"ONNX opset {opset} is not supported "
                              f"(this importer reads opsets {MIN_OPSET} to {MAX_OPSET})")
    _check_text(model_proto)
    _check_op_types(graph)
    _check_shape_inference(model_proto)
    name, channels, fixed = _graph_input(graph)
    if color is None:
        color = {3: "rgb", 1: "grey"}.get(channels)
        if color is None:
            raise CheckpointError(f"the input {name!r} has {channels} channels; sparsr runs "
                                  "networks on 3-channel (rgb) or 1-channel (grey, y) images")
    elif color not in ("rgb", "grey", "y"):
        raise CheckpointError(f"color must be 'rgb', 'grey' or 'y', got {color!r}")
    elif channels != (3 if color == "rgb" else 1):
        raise CheckpointError(f"color {color!r} needs a {3 if color == 'rgb' else 1}-channel "
                              f"input; {name!r} has {channels}")
    rng = 1.0 if input_range is None else input_range
    if (isinstance(rng, bool) or not isinstance(rng, (int, float)) or not math.isfinite(rng)
            or not MIN_RANGE <= rng <= 65535):
        raise CheckpointError(f"input_range must be a positive number (1.0 or 255.0), "
                              f"got {input_range!r}")

    if fixed is not None:
        # An input exported at a fixed size: lower at that size and at another
        # one, so sizes baked into the graph are found (whole multiples keep
        # whatever divisibility the exported size had; H != W at the second).
        probes = (fixed, (fixed[0] * 2, fixed[1] * (2 if fixed[0] != fixed[1] else 4)))
    else:
        probes = PROBES
    first = _lower(model_proto, probes[0])
    try:
        second = _lower(model_proto, probes[1])
    except CheckpointError as e:
        raise CheckpointError(
            f"{e} (at a {probes[1][0]}x{probes[1][1]} input, while the graph converts at "
            f"{probes[0][0]}x{probes[0][1]}: it holds sizes fixed at export; export it "
            "with dynamic H and W)") from None
    _same_at_both_sizes(first, second, probes)

    out_c, out_h, out_w = first.out_shape
    in_h, in_w = probes[0]
    ratios = {out_h / in_h, out_w / in_w, second.out_shape[1] / probes[1][0],
              second.out_shape[2] / probes[1][1]}
    if len(ratios) != 1 or not float(next(iter(ratios))).is_integer():
        raise CheckpointError(
            f"the output is not an integer multiple of the input size ({in_h}x{in_w} -> "
            f"{out_h}x{out_w}, {probes[1][0]}x{probes[1][1]} -> {second.out_shape[1]}x"
            f"{second.out_shape[2]})")
    inferred = int(next(iter(ratios)))
    if scale is not None and scale != inferred:
        raise CheckpointError(f"scale {scale} was given but the graph upscales by {inferred}")
    if out_c != channels:
        raise CheckpointError(f"the output has {out_c} channels, the input {channels}; sparsr "
                              "maps an image to an image of the same layout")
    try:
        io = IO(scale=inferred, color=color, range=float(rng))
        IO.from_dict(io.to_dict())
    except CheckpointError as e:
        raise CheckpointError(f"unsupported input/output: {e}") from None
    first.builder.io = io
    first.builder.hyper = {"onnx_graph": graph.name, "opset": opset}
    model, tensors = first.builder.finish(first.output)
    Graph.from_dict(model["graph"]).check(SPARSR_OPS, tensors)
    return model, tensors


# -- model checks ---------------------------------------------------------------

@functools.lru_cache(maxsize=512)
def _schema(op_type: str, opset: int) -> Any:
    """The default-domain schema of op_type at opset, or None."""
    import onnx
    try:
        return onnx.defs.get_schema(op_type, max_inclusive_version=opset, domain="")
    except Exception:
        return None


def _default_opset(proto: Any) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise CheckpointError("the ONNX model imports no default-domain opset")


def _check_text(proto: Any) -> None:
    """Every name the importer reads is text: protobuf hands a string field
    that is not UTF-8 over as bytes."""
    g = proto.graph
    fields = [("the model's producer_name", proto.producer_name),
              ("the model's producer_version", proto.producer_version),
              ("the graph's name", g.name)]
    fields += [(f"the name of graph input {i}", v.name) for i, v in enumerate(g.input)]
    fields += [(f"the name of graph output {i}", v.name) for i, v in enumerate(g.output)]
    fields += [(f"the name of initializer {i}", t.name) for i, t in enumerate(g.initializer)]
    for i, n in enumerate(g.node):
        fields += [(f"ONNX node #{i}: its {what}", v) for what, v in
                   [("name", n.name), ("op_type", n.op_type), ("domain", n.domain)]
                   + [(f"input {j}", v) for j, v in enumerate(n.input)]
                   + [(f"output {j}", v) for j, v in enumerate(n.output)]
                   + [(f"attribute {j}'s name", a.name) for j, a in enumerate(n.attribute)]]
    for what, value in fields:
        if not isinstance(value, str):
            raise CheckpointError(f"{what} is not UTF-8 text ({bytes(value)[:40]!r})")


def _check_op_types(graph: Any) -> None:
    """Refuses an op outside the importer's set before anything else looks at it."""
    for i, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx"):
            raise CheckpointError(f"{_where(node, i)}: custom op of domain {node.domain!r} "
                                  "is not supported")
        if node.op_type not in _FEATURE_OPS and node.op_type not in _FOLD_OPS:
            raise CheckpointError(f"{_where(node, i)}: op {node.op_type} is not supported by "
                                  "sparsr")


def _check_shape_inference(proto: Any) -> None:
    import onnx
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"ONNX shape inference fails on this model: {first}") from None


def _graph_input(graph: Any) -> tuple[str, int, tuple[int, int] | None]:
    """The one image input: its name, channels and fixed (H, W) or None."""
    inits = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise CheckpointError(f"the ONNX graph has {len(inputs)} inputs and {len(graph.output)}"
                              " outputs; sparsr runs a network of one image in, one image out")
    v = inputs[0]
    t = v.type.tensor_type
    if not v.type.HasField("tensor_type") or t.elem_type != 1:
        raise CheckpointError(f"the input {v.name!r} is not a float32 tensor")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if len(dims) != 4:
        raise CheckpointError(f"the input {v.name!r} has rank {len(dims)}; sparsr expects an "
                              "image batch of shape (1, C, H, W)")
    n, c, h, w = dims
    if n is not None and n != 1:
        raise CheckpointError(f"the input {v.name!r} has a fixed batch size of {n}; "
                              "sparsr runs batch 1 (export with batch 1 or a dynamic batch)")
    if c is None:
        raise CheckpointError(f"the input {v.name!r} has a dynamic channel count; "
                              "export with a fixed one")
    if (h is None) != (w is None):
        raise CheckpointError(f"the input {v.name!r} has one fixed and one dynamic side; "
                              "export with both H and W dynamic")
    return v.name, c, None if h is None else (h, w)


def _where(node: Any, index: int) -> str:
    return f"ONNX node {node.name or f'#{index}'!r} ({node.op_type})"


# -- values during lowering --------------------------------------------------------

@dataclass
class Known:
    """A value known at conversion time. `tags` (same shape, int64, -1 = none)
    marks elements that are a dimension of a feature: the shape subgraph of
    `F.interpolate(x, size=y.shape[2:])` still says "the size of y" after the
    Gathers and Concats that moved it."""
    array: np.ndarray
    tags: np.ndarray | None = None


@dataclass
class Feat:
    """An image feature: the sparsr value and its (C, H, W) at this probe."""
    value: str
    shape: tuple[int, int, int]


@dataclass
class View:
    """A Reshape/Transpose/... of a feature: `index` has the ONNX shape and
    holds, per element, its flat index c*H*W + y*W + x into `feat`."""
    feat: Feat
    index: np.ndarray


Value = Known | Feat | View


@dataclass
class _Lowered:
    builder: GraphBuilder
    output: str
    out_shape: tuple[int, int, int]


# Internal ops: they exist between lowering and fusion only.
_INTERNAL = {"_erf": "Erf", "_sqrt": "Sqrt", "_reduce": "ReduceSum/ReduceMean",
             "_permute": "a channel permutation"}


class _Lowering:
    """Lowers one ONNX graph at one input size."""

    def __init__(self, proto: Any, probe: tuple[int, int]):
        import onnx.numpy_helper
        self.onnx = onnx
        self.graph = proto.graph
        self.opset = _default_opset(proto)
        self.probe = probe
        self.b = GraphBuilder({}, IO(scale=1), "onnx")
        self.env: dict[str, Value] = {}
        self.origin: dict[str, tuple[str, str]] = {}    # IR node name -> (ONNX name, op)
        self.dim_tags: list[tuple[str, int]] = []       # tag id -> (feature value, axis)
        self.splits: list[tuple[str, int, list[str]]] = []   # (source, channels, slices)
        self.node: Any = None
        self.index = -1
        for init in self.graph.initializer:
            try:
                self.env[init.name] = Known(quiet_nans(np.array(onnx.numpy_helper.to_array(init))))
            except Exception as e:
                raise CheckpointError(f"initializer {init.name!r} cannot be read "
                                      f"({type(e).__name__}: {e})") from None

    # -- plumbing ---------------------------------------------------------------

    def fail(self, message: str) -> None:
        raise CheckpointError(f"{_where(self.node, self.index)}: {message}")

    def emit(self, op: str, inputs: Sequence[str], attrs: dict | None = None,
             params: dict | None = None, n_outputs: int = 1, suffix: str = ""):
        base = (self.node.name or f"{self.node.op_type}_{self.index}") + suffix
        out = self.b.op(op, inputs, attrs, params, name=base, n_outputs=n_outputs)
        self.origin[self.b.nodes[-1].name] = (self.node.name or f"#{self.index}",
                                              self.node.op_type)
        return out

    def tensor(self, hint: str, array: np.ndarray) -> str:
        """A parameter tensor; an initializer used as is keeps its ONNX name."""
        for name, t in self.b.tensors.items():
            if name.split("#")[0] == hint and t.shape == array.shape and np.array_equal(
                    t, array.astype(np.float32)):
                return name
        return self.b.const(hint, array)

    def param_name(self, input_index: int, role: str) -> str:
        """The hint for a tensor taken from an input: the initializer's name, else
        the node's name and the role."""
        name = self.node.input[input_index]
        if any(i.name == name for i in self.graph.initializer):
            return name
        return f"{self.node.name or self.node.op_type}.{role}"

    def attrs(self) -> dict[str, Any]:
        """The node's attributes, each of the type its op's ONNX schema gives it
        (an INT where an INT belongs, ...), strings decoded; anything else is
        refused naming the attribute."""
        schema = _schema(self.node.op_type, self.opset)
        out = {}
        for a in self.node.attribute:
            spec = None if schema is None else schema.attributes.get(a.name)
            if schema is not None and spec is None:
                self.fail(f"has an attribute {a.name!r:.60} that {self.node.op_type} does "
                          "not take")
            if spec is not None and int(spec.type) != a.type:
                got = self.onnx.AttributeProto.AttributeType.Name(a.type) \
                    if a.type in self.onnx.AttributeProto.AttributeType.values() else a.type
                self.fail(f"attribute {a.name!r} must be {spec.type.name}, got {got}")
            try:
                value = self.onnx.helper.get_attribute_value(a)
            except Exception as e:      # an undefined attribute type
                self.fail(f"attribute {a.name!r:.60} cannot be read ({e})")
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    self.fail(f"attribute {a.name!r} is not UTF-8 text")
            out[a.name] = value
        return out

    def check_inputs(self) -> None:
        """The node has every input its op's schema requires (an input named ""
        is absent), and no more than it takes."""
        schema = _schema(self.node.op_type, self.opset)
        if schema is None:
            return
        n = len(self.node.input)
        if n < schema.min_input or n > schema.max_input:
            self.fail(f"has {n} inputs; {self.node.op_type} takes {schema.min_input}"
                      + (f" to {schema.max_input}" if schema.max_input != schema.min_input
                         else ""))
        single = self.onnx.defs.OpSchema.FormalParameterOption.Single
        for i, formal in enumerate(schema.inputs[:n]):
            if formal.option == single and not self.node.input[i]:
                self.fail(f"lacks its input {i} ({formal.name})")

    def inp(self, i: int) -> Value | None:
        """Input i, or None when absent (past the end or named "")."""
        if i >= len(self.node.input) or not self.node.input[i]:
            return None
        return self.env[self.node.input[i]]

    def known(self, i: int, what: str, required: bool = True) -> np.ndarray | None:
        v = self.inp(i)
        if v is None:
            if required:
                self.fail(f"lacks its {what} input")
            return None
        if not isinstance(v, Known):
            self.fail(f"its {what} is computed from image data; sparsr needs it constant")
        return v.array

    def feat(self, i: int = 0) -> Feat:
        v = self.inp(i)
        if isinstance(v, View):
            v = self.resolve(v)
            self.env[self.node.input[i]] = v     # resolved once for every reader
        if not isinstance(v, Feat):
            self.fail(f"input {i} must be an image feature (1, C, H, W), got "
                      + ("a constant" if isinstance(v, Known) else "nothing"))
        return v

    def put(self, value: Value, i: int = 0) -> None:
        self.env[self.node.output[i]] = value

    # -- the walk -----------------------------------------------------------------

    def run(self) -> _Lowered:
        g = self.graph
        inits = {t.name for t in g.initializer}
        (inp,) = [v for v in g.input if v.name not in inits]
        channels = inp.type.tensor_type.shape.dim[1].dim_value
        self.env[inp.name] = Feat(self.b.input, (channels, *self.probe))
        live = self._live_nodes()
        for self.index, self.node in enumerate(g.node):
            if self.index not in live:
                continue
            for name in self.node.input:
                if name and name not in self.env:
                    self.fail(f"reads {name!r}, which no earlier node writes")
            self.check_inputs()
            values = [self.inp(i) for i in range(len(self.node.input))]
            op = self.node.op_type
            if all(v is None or isinstance(v, Known) for v in values) and op in _FOLD_OPS:
                self._fold(values)
            elif op in _FEATURE_OPS:
                try:
                    _FEATURE_OPS[op](self)
                except CheckpointError:
                    raise
                except (ArithmeticError, LookupError, TypeError, ValueError) as e:
                    # an input or attribute of a shape the handler does not expect
                    self.fail(f"cannot be converted ({type(e).__name__}: {e})"[:400])
            else:
                self.fail("works on image data, which sparsr cannot run this op on")
        if g.output[0].name not in self.env:
            raise CheckpointError(f"the graph output {g.output[0].name!r:.80} is written by "
                                  "no node")
        out = self.env[g.output[0].name]
        if isinstance(out, View):
            self.index = max(live)
            self.node = g.node[self.index]
            out = self.resolve(out)
        if not isinstance(out, Feat):
            raise CheckpointError("the graph's output is a constant, not an image")
        out_value = _fuse(self, out.value)
        return _Lowered(self.b, out_value, out.shape)

    def _live_nodes(self) -> set[int]:
        """Indices of the nodes the graph output depends on."""
        producer = {}
        for i, n in enumerate(self.graph.node):
            for o in n.output:
                producer[o] = i
        live, todo = set(), [self.graph.output[0].name]
        while todo:
            i = producer.get(todo.pop())
            if i is None or i in live:
                continue
            live.add(i)
            todo.extend(v for v in self.graph.node[i].input if v)
        return live

    # -- known values ---------------------------------------------------------------

    def _fold(self, values: list[Value | None]) -> None:
        arrays = [v.array if v is not None else None for v in values]
        try:
            outs = _FOLD_OPS[self.node.op_type](self, arrays, self.attrs())
        except CheckpointError:
            raise
        except Exception as e:          # numpy's complaint about a malformed constant
            self.fail(f"cannot be evaluated on its constant inputs ({type(e).__name__}: {e})")
        tag_outs = None
        if self.node.op_type in _STRUCTURAL and any(
                v is not None and v.tags is not None for v in values):
            # The same index moves on the tags: element i of the output is
            # element j of the input, and so is its tag.
            tagged = [(v.tags if v.tags is not None else np.full(v.array.shape, -1, np.int64))
                      if v is not None else None for v in values]
            moved = _STRUCTURAL[self.node.op_type]
            tag_arrays = [tagged[i] if i in moved(len(values)) else arrays[i]
                          for i in range(len(values))]
            tag_outs = _FOLD_OPS[self.node.op_type](self, tag_arrays, {**self.attrs(),
                                                                        "_tags": True})
        for i, o in enumerate(outs):
            if i < len(self.node.output) and self.node.output[i]:
                tags = None
                if tag_outs is not None:
                    tags = np.asarray(tag_outs[i], np.int64)
                    if (tags < 0).all():
                        tags = None
                self.env[self.node.output[i]] = Known(np.asarray(o), tags)

    def shape_of(self, v: Value) -> Known:
        if isinstance(v, Known):
            return Known(np.asarray(v.array.shape, np.int64))
        if isinstance(v, View):
            return Known(np.asarray(v.index.shape, np.int64))
        tags = []
        for axis in range(4):
            tags.append(len(self.dim_tags))
            self.dim_tags.append((v.value, axis))
        return Known(np.asarray((1, *v.shape), np.int64), np.asarray(tags, np.int64))

    # -- views ---------------------------------------------------------------------

    def view_of(self, v: Value) -> View:
        if isinstance(v, View):
            return v
        c, h, w = v.shape
        return View(v, self.indices(c, h, w).reshape(1, c, h, w))

    def indices(self, c: int, h: int, w: int) -> np.ndarray:
        """0 .. c*h*w - 1 as int64, the element numbers of a (c, h, w) feature;
        a feature too large for them (a Resize by 1000, say) is refused."""
        if c * h * w > MAX_VIEW_ELEMENTS:
            self.fail(f"rearranges a ({c}, {h}, {w}) feature at a {self.probe[0]}x"
                      f"{self.probe[1]} input: more than {MAX_VIEW_ELEMENTS} elements")
        return np.arange(c * h * w, dtype=np.int64)

    def resolve(self, v: View) -> Feat:
        """A view that is an image feature again, as sparsr ops; else refused."""
        f = self.try_resolve(v)
        if f is None:
            self.fail(f"needs an image tensor (1, C, H, W), got one of shape "
                      f"{tuple(v.index.shape)} made by Reshape/Transpose ops that are no "
                      "pixel shuffle, unshuffle or channel permutation")
        return f

    def try_resolve(self, v: View) -> Feat | None:
        idx = v.index
        if idx.ndim != 4 or idx.shape[0] != 1:
            return None
        c, h, w = v.feat.shape
        _, c2, h2, w2 = idx.shape
        planes = self.indices(c, h, w).reshape(c, h, w)
        if (h2, w2) == (h, w):
            perm = _channel_permutation(idx[0], planes)
            return None if perm is None else self.permute(v.feat, perm)
        if h2 % h == 0 and h2 // h == w2 // w and w2 % w == 0:
            r = h2 // h                     # out = pixel_shuffle(P(src))
            perm = _channel_permutation(_pixel_unshuffle(idx[0], r), planes)
            if perm is None:
                return None
            f = self.permute(v.feat, perm)
            out = self.emit("pixel_shuffle", [f.value], {"factor": r})
            return Feat(out, (c2, h2, w2))
        if h % h2 == 0 and h // h2 == w // w2 and w % w2 == 0:
            r = h // h2                     # out = P(pixel_unshuffle(src))
            perm = _channel_permutation(idx[0], _pixel_unshuffle(planes, r))
            if perm is None:
                return None
            out = self.emit("pixel_unshuffle", [v.feat.value], {"factor": r})
            return self.permute(Feat(out, (c * r * r, h2, w2)), perm)
        return None

    def permute(self, f: Feat, perm: np.ndarray) -> Feat:
        """Channel c of the result is channel perm[c] of f."""
        if np.array_equal(perm, np.arange(len(perm))):
            return f
        out = self.emit("_permute", [f.value], {"order": [int(p) for p in perm]})
        return Feat(out, f.shape)


# -- views: index helpers ------------------------------------------------------------

def _pixel_unshuffle(a: np.ndarray, r: int) -> np.ndarray:
    """torch.pixel_unshuffle on a (C, H, W) array."""
    c, h, w = a.shape
    return a.reshape(c, h // r, r, w // r, r).transpose(0, 2, 4, 1, 3).reshape(
        c * r * r, h // r, w // r)


def _channel_permutation(idx: np.ndarray, planes: np.ndarray) -> np.ndarray | None:
    """perm with idx[c] == planes[perm[c]] for every c, else None."""
    if idx.shape != planes.shape:
        return None
    first = {int(v): i for i, v in enumerate(planes[:, 0, 0])}
    perm = np.asarray([first.get(int(v), -1) for v in idx[:, 0, 0]], np.int64)
    if (perm < 0).any() or len(set(perm.tolist())) != len(perm):
        return None
    return perm if np.array_equal(idx, planes[perm]) else None


def _channel_axis(v: View, axis: int) -> np.ndarray | None:
    """If `axis` of the view runs over channels (every other axis over pixels),
    the channel of each position along it, else None."""
    c, h, w = v.feat.shape
    hw = h * w
    idx = np.moveaxis(v.index, axis, -1).reshape(-1, v.index.shape[axis])
    if idx.shape[1] != c:
        return None
    chans = idx // hw
    if not (chans == chans[0]).all():
        return None
    pixels = idx % hw
    if not (pixels == pixels[:, :1]).all():
        return None
    return chans[0]


# -- feature ops -------------------------------------------------------------------

def _pads(lo: "_Lowering", attrs: dict) -> list[int]:
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if auto == "VALID":
        pads = [0, 0, 0, 0]
    elif auto != "NOTSET":
        lo.fail(f"auto_pad {auto} is not supported; export with explicit pads")
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        lo.fail(f"pads {pads} are not the same on both sides (sparsr pads symmetrically)")
    return [int(pads[0]), int(pads[1])]


def _pair_attr(lo: "_Lowering", attrs: dict, key: str, default: int) -> list[int]:
    v = list(attrs.get(key, [default, default]))
    if len(v) != 2:
        lo.fail(f"{key} {v} is not a pair (only 2-D ops are supported)")
    return [int(a) for a in v]


def _conv(lo: "_Lowering") -> None:
    x = lo.feat(0)
    w = lo.known(1, "weight")
    b = lo.known(2, "bias", required=False)
    a = lo.attrs()
    if w.ndim != 4:
        lo.fail(f"weight of shape {w.shape} is not a 2-D convolution's")
    cout, cin_g, kh, kw = w.shape
    groups = int(a.get("group", 1))
    if "kernel_shape" in a and list(a["kernel_shape"]) != [kh, kw]:
        lo.fail(f"kernel_shape {list(a['kernel_shape'])} does not match the weight {w.shape}")
    stride = _pair_attr(lo, a, "strides", 1)
    dil = _pair_attr(lo, a, "dilations", 1)
    pad = _pads(lo, a)
    c, h, wd = x.shape
    if groups < 1 or c % groups or cout % groups or c // groups != cin_g:
        lo.fail(f"weight {w.shape} with group {groups} does not fit {c} input channels")
    if any(s not in (1, 2) for s in stride):
        lo.fail(f"strides {stride}: sparsr convolutions have stride 1 or 2")
    if b is not None and b.shape != (cout,):
        lo.fail(f"bias of shape {b.shape}, expected ({cout},)")
    oh = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    if oh < 1 or ow < 1:
        lo.fail(f"the output of a {h}x{wd} input would be empty")
    params = {"weight": lo.tensor(lo.param_name(1, "weight"), w)}
    if b is not None:
        params["bias"] = lo.tensor(lo.param_name(2, "bias"), b)
    out = lo.emit("conv2d", [x.value], {"kernel": [kh, kw], "stride": stride, "padding": pad,
                                        "dilation": dil, "groups": groups}, params)
    lo.put(Feat(out, (cout, oh, ow)))


def _conv_transpose(lo: "_Lowering") -> None:
    x = lo.feat(0)
    w = lo.known(1, "weight")
    b = lo.known(2, "bias", required=False)
    a = lo.attrs()
    if w.ndim != 4:
        lo.fail(f"weight of shape {w.shape} is not a 2-D convolution's")
    cin, cout_g, kh, kw = w.shape
    groups = int(a.get("group", 1))
    if "output_shape" in a:
        lo.fail("output_shape is not supported; export with pads and output_padding")
    if "kernel_shape" in a and list(a["kernel_shape"]) != [kh, kw]:
        lo.fail(f"kernel_shape {list(a['kernel_shape'])} does not match the weight {w.shape}")
    if _pair_attr(lo, a, "dilations", 1) != [1, 1]:
        lo.fail("a dilated transposed convolution is not supported")
    stride = _pair_attr(lo, a, "strides", 1)
    out_pad = _pair_attr(lo, a, "output_padding", 0)
    pad = _pads(lo, a)
    c, h, wd = x.shape
    if c != cin or groups < 1 or cin % groups:
        lo.fail(f"weight {w.shape} with group {groups} does not fit {c} input channels")
    cout = cout_g * groups
    if b is not None and b.shape != (cout,):
        lo.fail(f"bias of shape {b.shape}, expected ({cout},)")
    oh = (h - 1) * stride[0] - 2 * pad[0] + kh + out_pad[0]
    ow = (wd - 1) * stride[1] - 2 * pad[1] + kw + out_pad[1]
    if oh < 1 or ow < 1:
        lo.fail(f"the output of a {h}x{wd} input would be empty")
    params = {"weight": lo.tensor(lo.param_name(1, "weight"), w)}
    if b is not None:
        params["bias"] = lo.tensor(lo.param_name(2, "bias"), b)
    out = lo.emit("conv_transpose2d", [x.value],
                  {"kernel": [kh, kw], "stride": stride, "padding": pad,
                   "output_padding": out_pad, "groups": groups}, params)
    lo.put(Feat(out, (cout, oh, ow)))


def _unary(op: str, attrs_of: Callable[[dict], dict] | None = None):
    def lower(lo: "_Lowering") -> None:
        attrs = attrs_of(lo.attrs()) if attrs_of else {}
        v = lo.inp(0)
        if isinstance(v, View):
            out = lo.emit(op, [v.feat.value], attrs)
            lo.put(View(Feat(out, v.feat.shape), v.index))
            return
        x = lo.feat(0)
        lo.put(Feat(lo.emit(op, [x.value], attrs), x.shape))
    return lower


def _leaky_attrs(a: dict) -> dict:
    return {"slope": float(a.get("alpha", 0.01))}


def _gelu_attrs(a: dict) -> dict:
    approx = a.get("approximate", b"none")
    return {"approximate": approx.decode() if isinstance(approx, bytes) else approx}


def _prelu(lo: "_Lowering") -> None:
    x = lo.feat(0)
    slope = lo.known(1, "slope")
    c = x.shape[0]
    s = slope.reshape(slope.shape[1:]) if slope.ndim == 4 and slope.shape[0] == 1 else slope
    if s.size == 1:
        s = s.reshape(1)
    elif s.shape == (c, 1, 1):
        s = s.reshape(c)
    else:
        lo.fail(f"slope of shape {slope.shape}: sparsr's prelu has one slope or one per channel "
                f"({c}, 1, 1)")
    lo.put(Feat(lo.emit("prelu", [x.value], params={
        "weight": lo.tensor(lo.param_name(1, "weight"), s)}), x.shape))


def _clip(lo: "_Lowering") -> None:
    x = lo.feat(0)
    a = lo.attrs()
    attrs = {}
    if lo.opset < 11:
        lo_v, hi_v = a.get("min"), a.get("max")
    else:
        lo_v, hi_v = lo.known(1, "min", False), lo.known(2, "max", False)
    for key, v in (("min", lo_v), ("max", hi_v)):
        if v is None:
            continue
        v = np.asarray(v, np.float64)
        if v.size != 1:
            lo.fail(f"its {key} has shape {v.shape}; sparsr clamps to one value")
        attrs[key] = float(v.reshape(()))
    if not attrs:
        lo.put(x)
        return
    lo.put(Feat(lo.emit("clamp", [x.value], attrs), x.shape))


def _channel_const(k: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray | None:
    """A constant operand against a (1, C, H, W) feature as one value (shape
    (1,)) or one per channel (C,); None when it varies over pixels. A constant
    as large as the image (``torch.ones_like(x)``, a shape-derived fill) counts
    when it holds one value per channel at every pixel: the probe sizes check
    that it does at any size."""
    c, h, w = shape
    k = np.asarray(k, np.float32)
    if k.ndim > 4:
        return None
    full = (1,) * (4 - k.ndim) + k.shape
    if full[0] != 1 or full[1] not in (1, c) or full[2] not in (1, h) or full[3] not in (1, w):
        return None
    per_channel = k.reshape(full[1], full[2] * full[3])
    if not (per_channel == per_channel[:, :1]).all():
        return None
    v = per_channel[:, 0]
    if v.size > 1 and (v == v[0]).all():
        v = v[:1]
    return v


def _binary(op: str):
    def lower(lo: "_Lowering") -> None:
        a, b = lo.inp(0), lo.inp(1)
        if isinstance(a, View) or isinstance(b, View):
            return _binary_view(lo, op, a, b)
        if isinstance(a, Feat) and isinstance(b, Feat):
            return _binary_feats(lo, op, a, b)
        if isinstance(a, Known):            # constant first: k op x
            k, x, k_first = a.array, b, True
        else:
            k, x, k_first = b.array, a, False
        v = _channel_const(k, x.shape)
        if v is None:
            lo.fail(f"a constant operand of shape {np.shape(k)} varies over pixels or does "
                    f"not broadcast over channels of {(1, *x.shape)}")
        lo.put(Feat(_const_op(lo, op, x.value, v, k_first, lo.param_name(1 - k_first,
                                                                          "other")), x.shape))
    return lower


def _const_op(lo: "_Lowering", op: str, x: str, v: np.ndarray, k_first: bool, hint: str) -> str:
    """x op v (or v op x) with v one value or one per channel."""
    if op == "div":
        if k_first:
            lo.fail("dividing a constant by image data is not supported")
        op, v = "mul", (1.0 / v.astype(np.float64)).astype(np.float32)
        hint = f"{lo.node.name or 'div'}.reciprocal"
    if op == "sub" and k_first:
        if v.size == 1:
            return lo.emit("sub", [x], {"value": float(v[0]), "reverse": True})
        neg = lo.emit("mul", [x], {"value": -1.0}, suffix=".neg")
        return lo.emit("add", [neg], params={"other": lo.tensor(hint, v)})
    if v.size == 1:
        return lo.emit(op, [x], {"value": float(v[0])})
    return lo.emit(op, [x], params={"other": lo.tensor(hint, v)})


def _binary_feats(lo: "_Lowering", op: str, a: Feat, b: Feat) -> None:
    if op == "div":
        lo.fail("dividing image data by image data is not supported")
    if a.shape == b.shape:
        lo.put(Feat(lo.emit(op, [a.value, b.value]), a.shape))
        return

    def broadcast(small: Feat, big: Feat) -> bool:
        return small.shape[1:] == (1, 1) and small.shape[0] in (1, big.shape[0])
    if broadcast(b, a):
        lo.put(Feat(lo.emit(op, [a.value, b.value]), a.shape))
    elif broadcast(a, b):
        if op == "sub":                 # a - b == (-b) + a, exactly
            neg = lo.emit("mul", [b.value], {"value": -1.0}, suffix=".neg")
            lo.put(Feat(lo.emit("add", [neg, a.value]), b.shape))
        else:
            lo.put(Feat(lo.emit(op, [a.value, b.value]), b.shape))
    else:
        lo.fail(f"operands of shapes {(1, *a.shape)} and {(1, *b.shape)} do not match and "
                "neither is one value per channel")


def _binary_view(lo: "_Lowering", op: str, a: Value, b: Value) -> None:
    """Elementwise on views: per element on the features underneath."""
    if isinstance(a, View) and isinstance(b, View):
        if a.feat.shape != b.feat.shape or not np.array_equal(a.index, b.index):
            lo.fail("operands are reshaped/transposed image tensors of different layouts")
        if op == "div":
            lo.fail("dividing image data by image data is not supported")
        out = lo.emit(op, [a.feat.value, b.feat.value])
        lo.put(View(Feat(out, a.feat.shape), a.index))
        return
    if isinstance(a, Feat) or isinstance(b, Feat):
        f = lo.try_resolve(a if isinstance(a, View) else b)
        if f is None:
            lo.fail("mixes an image tensor with a reshaped/transposed one")
        return _binary_feats(lo, op, f, b) if isinstance(a, View) else _binary_feats(lo, op, a, f)
    v, k, k_first = (a, b.array, False) if isinstance(a, View) else (b, a.array, True)
    # Scatter the broadcast constant back onto the feature's layout: it must
    # be one value per channel there.
    try:
        full = np.broadcast_to(np.asarray(k, np.float32), v.index.shape)
    except ValueError:
        lo.fail(f"a constant of shape {np.shape(k)} does not broadcast to {v.index.shape}")
    if np.broadcast_shapes(np.shape(k), v.index.shape) != v.index.shape:
        lo.fail(f"a constant of shape {np.shape(k)} makes the tensor larger")
    c, h, w = v.feat.shape
    per = np.empty(c * h * w, np.float32)
    per[v.index.reshape(-1)] = full.reshape(-1)
    per = per.reshape(c, h * w)
    if not (per == per[:, :1]).all():
        lo.fail(f"a constant of shape {np.shape(k)} varies over pixels")
    vals = per[:, 0]
    if (vals == vals[0]).all():
        vals = vals[:1]
    out = _const_op(lo, op, v.feat.value, vals, k_first, lo.param_name(int(k_first) ^ 1, "other"))
    lo.put(View(Feat(out, v.feat.shape), v.index))


def _matmul(lo: "_Lowering") -> None:
    """A constant matrix over the channel axis of a view: a 1x1 convolution."""
    a, b = lo.inp(0), lo.inp(1)
    if isinstance(a, Feat):
        a = lo.view_of(a)
    if isinstance(b, Feat):
        b = lo.view_of(b)
    if isinstance(a, View) and isinstance(b, Known):
        v, m, axis = a, np.asarray(b.array, np.float32), a.index.ndim - 1
        wt = m.T                                    # x @ m: (N, K) = m.T
    elif isinstance(b, View) and isinstance(a, Known):
        v, m, axis = b, np.asarray(a.array, np.float32), b.index.ndim - 2
        wt = m                                      # m @ x: (N, K) = m
    else:
        lo.fail("multiplies two image tensors")
    if m.ndim != 2 or axis < 0:
        lo.fail(f"a weight of shape {m.shape} against a tensor of shape {v.index.shape} is "
                "no per-pixel linear layer")
    chans = _channel_axis(v, axis)
    if chans is None or wt.shape[1] != v.index.shape[axis]:
        lo.fail(f"contracts axis {axis} of a tensor of shape {v.index.shape}, which is not "
                "its channel axis (only a per-pixel linear layer is supported)")
    n = wt.shape[0]
    c, h, w = v.feat.shape
    weight = np.zeros((n, c), np.float32)
    weight[:, chans] = wt
    out = lo.emit("conv2d", [v.feat.value], {"kernel": [1, 1], "stride": [1, 1],
                                             "padding": [0, 0], "dilation": [1, 1],
                                             "groups": 1},
                  {"weight": lo.tensor(f"{lo.node.name or 'matmul'}.weight",
                                       weight.reshape(n, c, 1, 1))})
    pixels = np.moveaxis(v.index, axis, -1)[..., :1] % (h * w)     # (..., 1)
    index = np.moveaxis(pixels + np.arange(n, dtype=np.int64) * (h * w), -1, axis)
    lo.put(View(Feat(out, (n, h, w)), index))


def _reshape_like(fn: Callable[["_Lowering", np.ndarray, dict], np.ndarray]):
    """Reshape, Transpose, Flatten, Squeeze, Unsqueeze on image data: a view."""
    def lower(lo: "_Lowering") -> None:
        v = lo.inp(0)
        if not isinstance(v, (Feat, View)):
            lo.fail("input 0 is missing")
        view = lo.view_of(v)
        index = fn(lo, view.index, lo.attrs())
        if index.shape == view.index.shape and np.array_equal(index, view.index):
            lo.put(v)
            return
        out = View(view.feat, index)
        f = lo.try_resolve(out) if index.ndim == 4 else None
        lo.put(f if f is not None else out)
    return lower


def _reshape_index(lo: "_Lowering", idx: np.ndarray, a: dict) -> np.ndarray:
    shape = [int(s) for s in lo.known(1, "shape").reshape(-1)]
    if not a.get("allowzero", 0):
        shape = [idx.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    try:
        return idx.reshape(shape)
    except ValueError:
        lo.fail(f"cannot reshape a tensor of shape {idx.shape} to {shape}")


def _transpose_index(lo: "_Lowering", idx: np.ndarray, a: dict) -> np.ndarray:
    perm = a.get("perm", list(range(idx.ndim))[::-1])
    return idx.transpose(perm)


def _flatten_index(lo: "_Lowering", idx: np.ndarray, a: dict) -> np.ndarray:
    axis = int(a.get("axis", 1)) % (idx.ndim + 1) if idx.ndim else 0
    return idx.reshape(int(np.prod(idx.shape[:axis])), -1)


def _axes(lo: "_Lowering", a: dict, rank: int) -> list[int] | None:
    axes = a.get("axes")
    if axes is None and len(lo.node.input) > 1 and lo.node.input[1]:
        axes = lo.known(1, "axes").reshape(-1).tolist()
    return None if axes is None else [int(x) % rank for x in axes]


def _squeeze_index(lo: "_Lowering", idx: np.ndarray, a: dict) -> np.ndarray:
    axes = _axes(lo, a, idx.ndim)
    if axes is None:
        axes = [i for i, s in enumerate(idx.shape) if s == 1]
    if any(idx.shape[i] != 1 for i in axes):
        lo.fail(f"squeezes a non-1 axis of shape {idx.shape}")
    return idx.reshape([s for i, s in enumerate(idx.shape) if i not in axes])


def _unsqueeze_index(lo: "_Lowering", idx: np.ndarray, a: dict) -> np.ndarray:
    raw = a.get("axes")
    if raw is None:
        raw = lo.known(1, "axes").reshape(-1).tolist()
    rank = idx.ndim + len(raw)
    axes = sorted(int(x) % rank for x in raw)
    shape = list(idx.shape)
    for ax in axes:
        shape.insert(ax, 1)
    return idx.reshape(shape)


def _depth_to_space(lo: "_Lowering") -> None:
    x = lo.feat(0)
    a = lo.attrs()
    r = int(a["blocksize"])
    mode = a.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    c, h, w = x.shape
    if c % (r * r):
        lo.fail(f"{c} channels do not divide into blocks of {r}x{r}")
    if mode == "CRD":
        lo.put(Feat(lo.emit("pixel_shuffle", [x.value], {"factor": r}),
                    (c // (r * r), h * r, w * r)))
        return
    # DCR, by its definition in the ONNX spec: a Reshape/Transpose that is a
    # channel permutation followed by PyTorch's pixel shuffle.
    idx = lo.indices(c, h, w).reshape(1, r, r, c // (r * r), h, w)
    idx = idx.transpose(0, 3, 4, 1, 5, 2).reshape(1, c // (r * r), h * r, w * r)
    lo.put(lo.resolve(View(x, idx)))


def _space_to_depth(lo: "_Lowering") -> None:
    x = lo.feat(0)
    r = int(lo.attrs()["blocksize"])
    c, h, w = x.shape
    if h % r or w % r:
        lo.fail(f"a {h}x{w} input does not divide into blocks of {r}x{r}")
    # ONNX's order puts the block offset before the channel; PyTorch's
    # pixel_unshuffle puts it after: the same pixels, channels permuted.
    idx = lo.indices(c, h, w).reshape(1, c, h // r, r, w // r, r)
    idx = idx.transpose(0, 3, 5, 1, 2, 4).reshape(1, c * r * r, h // r, w // r)
    lo.put(lo.resolve(View(x, idx)))


def _concat(lo: "_Lowering") -> None:
    vals = [lo.inp(i) for i in range(len(lo.node.input))]
    if any(isinstance(v, Known) for v in vals):
        lo.fail("concatenates image data with a constant")
    feats = [lo.feat(i) for i in range(len(vals))]
    axis = int(lo.attrs()["axis"]) % 4
    if axis != 1:
        lo.fail(f"concatenates on axis {axis}; sparsr concatenates channels (axis 1)")
    hw = {f.shape[1:] for f in feats}
    if len(hw) != 1:
        lo.fail(f"inputs of different sizes {sorted(hw)}")
    out = lo.emit("concat", [f.value for f in feats])
    lo.put(Feat(out, (sum(f.shape[0] for f in feats), *feats[0].shape[1:])))


def _split(lo: "_Lowering") -> None:
    x = lo.feat(0)
    a = lo.attrs()
    axis = int(a.get("axis", 0)) % 4
    if axis != 1:
        lo.fail(f"splits axis {axis}; sparsr splits channels (axis 1)")
    c = x.shape[0]
    n = len(lo.node.output)
    sizes = a.get("split")
    if sizes is None and len(lo.node.input) > 1 and lo.node.input[1]:
        sizes = lo.known(1, "split").reshape(-1).tolist()
    if sizes is None:
        n = int(a.get("num_outputs", n))
        sizes = [-(-c // n)] * n
        sizes[-1] = c - sum(sizes[:-1])
    sizes = [int(s) for s in sizes]
    if len(sizes) != n or sum(sizes) != c or min(sizes) < 1:
        lo.fail(f"split sizes {sizes} do not divide {c} channels into {n} parts")
    start, outs = 0, []
    for i, s in enumerate(sizes):
        # One slice per output; those that stay read are joined into one split
        # after fusion (a split with an unread output would leave it dangling).
        out = lo.emit("slice", [x.value], {"start": start, "stop": start + s}, suffix=f":{i}")
        outs.append(out)
        if lo.node.output[i]:
            lo.put(Feat(out, (s, *x.shape[1:])), i)
        start += s
    lo.splits.append((x.value, c, outs))


def _slice(lo: "_Lowering") -> None:
    v = lo.inp(0)
    x = lo.feat(0) if not isinstance(v, View) else None
    if x is None:
        lo.fail("slices a reshaped/transposed image tensor")
    a = lo.attrs()
    if lo.opset < 10:
        starts, ends = a["starts"], a["ends"]
        axes, steps = a.get("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts = lo.known(1, "starts").reshape(-1).tolist()
        ends = lo.known(2, "ends").reshape(-1).tolist()
        ax = lo.known(3, "axes", False)
        st = lo.known(4, "steps", False)
        axes = list(range(len(starts))) if ax is None else ax.reshape(-1).tolist()
        steps = [1] * len(starts) if st is None else st.reshape(-1).tolist()
    dims = (1, *x.shape)
    ranges = {i: (0, d) for i, d in enumerate(dims)}
    for s, e, ax, step in zip(starts, ends, axes, steps):
        ax = int(ax) % 4
        lo_i, hi_i, _ = slice(int(s), int(e), int(step)).indices(dims[ax])
        if int(step) != 1:
            lo.fail(f"slices axis {ax} with step {step}; sparsr slices channels with step 1")
        ranges[ax] = (lo_i, max(hi_i, lo_i))
    for ax in (0, 2, 3):
        if ranges[ax] != (0, dims[ax]):
            lo.fail(f"slices axis {ax} ({ranges[ax][0]}:{ranges[ax][1]} of {dims[ax]}); "
                    "sparsr slices channels only")
    start, stop = ranges[1]
    if stop <= start:
        lo.fail("the slice is empty")
    if (start, stop) == (0, x.shape[0]):
        lo.put(x)
        return
    lo.put(Feat(lo.emit("slice", [x.value], {"start": start, "stop": stop}),
                (stop - start, *x.shape[1:])))


def _resize(lo: "_Lowering") -> None:
    x = lo.feat(0)
    a = lo.attrs()
    op = lo.node.op_type

    def text(key: str, default: str) -> str:
        v = a.get(key, default)
        return v.decode() if isinstance(v, bytes) else v

    mode = text("mode", "nearest")
    if op == "Upsample" or lo.opset < 11:
        coord, nearest = "asymmetric", "floor"
        if mode != "nearest":
            lo.fail(f"{op} mode {mode!r} maps coordinates asymmetrically, which no sparsr "
                    "resize does; export with opset 11 or newer")
    else:
        coord = text("coordinate_transformation_mode", "half_pixel")
        nearest = text("nearest_mode", "round_prefer_floor")
    if int(a.get("antialias", 0)):
        lo.fail("antialiased resizing is not supported")
    if int(a.get("exclude_outside", 0)):
        lo.fail("exclude_outside=1 is not supported")
    if mode == "nearest":
        if coord != "asymmetric" or nearest != "floor":
            lo.fail(f"nearest with {coord} / {nearest}: sparsr's nearest is PyTorch's legacy "
                    "one (asymmetric, floor)")
        attrs: dict[str, Any] = {"mode": "nearest", "align_corners": False}
    elif mode in ("linear", "cubic"):
        if coord in ("half_pixel", "pytorch_half_pixel"):
            corners = False
        elif coord == "align_corners":
            corners = True
        else:
            lo.fail(f"coordinate_transformation_mode {coord!r} is not supported")
        if mode == "cubic" and abs(float(a.get("cubic_coeff_a", -0.75)) + 0.75) > 1e-6:
            lo.fail(f"cubic_coeff_a {a.get('cubic_coeff_a')}: sparsr's bicubic has a = -0.75")
        attrs = {"mode": "bilinear" if mode == "linear" else "bicubic",
                 "align_corners": corners}
    else:
        lo.fail(f"mode {mode!r} is not supported")

    c, h, w = x.shape
    # Inputs: Upsample-7 (attr scales), Upsample-9 / Resize-10 (X, scales),
    # Resize-11+ (X, roi, scales, sizes).
    if op == "Upsample" and lo.opset < 9:
        scales, sizes = np.asarray(a["scales"], np.float64), None
    elif op == "Upsample" or lo.opset < 11:
        scales, sizes = lo.known(1, "scales"), None
    else:
        scales, sizes = lo.known(2, "scales", False), lo.known(3, "sizes", False)
        if scales is not None and scales.size == 0:
            scales = None
        if sizes is not None and sizes.size == 0:
            sizes = None
    axes = a.get("axes")
    full_axes = [int(v) % 4 for v in axes] if axes is not None else [0, 1, 2, 3]
    if sizes is not None:
        sv = lo.env[lo.node.input[3]]
        tags = sv.tags if isinstance(sv, Known) else None
        if text("keep_aspect_ratio_policy", "stretch") != "stretch":
            lo.fail("keep_aspect_ratio_policy other than 'stretch' is not supported")
        full = dict(zip(range(4), (1, c, h, w)))
        tag_of = {}
        for i, ax in enumerate(full_axes):
            full[ax] = int(sizes.reshape(-1)[i])
            tag_of[ax] = int(tags.reshape(-1)[i]) if tags is not None else -1
        if full[0] != 1 or full[1] != c:
            lo.fail(f"resizes the batch or channel axis (sizes {sizes.tolist()})")
        oh, ow = full[2], full[3]
        th, tw = tag_of.get(2, -1), tag_of.get(3, -1)
        if th >= 0 and tw >= 0:
            (vh, ah), (vw, aw) = lo.dim_tags[th], lo.dim_tags[tw]
            if vh == vw and (ah, aw) == (2, 3):
                lo.put(Feat(lo.emit("resize", [x.value, vh], attrs), (c, oh, ow)))
                return
        # Sizes computed from the input's own size: exact as a scale only when
        # it is a whole factor (else the coordinate maps differ on odd sizes).
        if oh % h or ow % w or oh // h != ow // w:
            lo.fail(f"resizes {h}x{w} to {oh}x{ow}: sparsr resizes by a whole factor or to "
                    "the size of another tensor")
        attrs["scale"] = float(oh // h)
        lo.put(Feat(lo.emit("resize", [x.value], attrs), (c, oh, ow)))
        return
    if scales is None:
        lo.fail("has neither scales nor sizes")
    full = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    for i, ax in enumerate(full_axes):
        full[ax] = float(np.asarray(scales, np.float64).reshape(-1)[i])
    if full[0] != 1 or full[1] != 1:
        lo.fail(f"resizes the batch or channel axis (scales {list(full.values())})")
    if full[2] != full[3] or not full[2] > 0:
        lo.fail(f"scales {full[2]} and {full[3]} differ (sparsr resizes both axes alike)")
    s = float(np.float32(full[2]))
    oh, ow = int(math.floor(h * s)), int(math.floor(w * s))
    if oh < 1 or ow < 1:
        lo.fail(f"resizing {h}x{w} by {s} leaves nothing")
    attrs["scale"] = s
    lo.put(Feat(lo.emit("resize", [x.value], attrs), (c, oh, ow)))


def _pool(kind: str):
    def lower(lo: "_Lowering") -> None:
        x = lo.feat(0)
        a = lo.attrs()
        if len(lo.node.output) > 1 and lo.node.output[1]:
            lo.fail("the Indices output is not supported")
        if int(a.get("ceil_mode", 0)):
            lo.fail("ceil_mode=1 is not supported")
        if _pair_attr(lo, a, "dilations", 1) != [1, 1]:
            lo.fail("dilated pooling is not supported")
        if int(a.get("storage_order", 0)):
            lo.fail("storage_order=1 is not supported")
        k = [int(v) for v in a["kernel_shape"]]
        if len(k) != 2:
            lo.fail(f"kernel_shape {k} is not 2-D")
        stride = _pair_attr(lo, a, "strides", 1)
        pad = _pads(lo, a)
        if kind == "avg_pool" and pad != [0, 0] and not int(a.get("count_include_pad", 0)):
            lo.fail("count_include_pad=0 with padding: sparsr's avg_pool counts the padding")
        if any(p > kk // 2 for p, kk in zip(pad, k)):
            lo.fail(f"pads {pad} exceed half the kernel {k}")
        c, h, w = x.shape
        oh = (h + 2 * pad[0] - k[0]) // stride[0] + 1
        ow = (w + 2 * pad[1] - k[1]) // stride[1] + 1
        if oh < 1 or ow < 1:
            lo.fail(f"the output of a {h}x{w} input would be empty")
        out = lo.emit(kind, [x.value], {"kernel": k, "stride": stride, "padding": pad})
        lo.put(Feat(out, (c, oh, ow)))
    return lower


def _global_avg(lo: "_Lowering") -> None:
    x = lo.feat(0)
    lo.put(Feat(lo.emit("global_mean", [x.value]), (x.shape[0], 1, 1)))


def _reduce(kind: str):
    def lower(lo: "_Lowering") -> None:
        x = lo.feat(0)
        a = lo.attrs()
        axes = a.get("axes")
        if axes is None and len(lo.node.input) > 1 and lo.node.input[1]:
            axes = lo.known(1, "axes").reshape(-1).tolist()
        if axes is None or len(axes) == 0:
            if int(a.get("noop_with_empty_axes", 0)):
                lo.put(x)
                return
            axes = [0, 1, 2, 3]
        axes = sorted({int(v) % 4 for v in axes})
        if not int(a.get("keepdims", 1)):
            lo.fail("keepdims=0 is not supported (the result must stay (1, C, H, W))")
        axes = [ax for ax in axes if ax != 0]
        if not axes or any(ax == 1 for ax in axes):
            lo.fail(f"reduces over axes {axes}; sparsr reduces over pixels (axes 2, 3)")
        c, h, w = x.shape
        shape = (c, 1 if 2 in axes else h, 1 if 3 in axes else w)
        if kind == "mean" and axes == [2, 3]:
            lo.put(Feat(lo.emit("global_mean", [x.value]), shape))
            return
        out = lo.emit("_reduce", [x.value], {"kind": kind, "axes": axes,
                                             "size": [h if 2 in axes else 1,
                                                      w if 3 in axes else 1]})
        lo.put(Feat(out, shape))
    return lower


def _pow(lo: "_Lowering") -> None:
    x = lo.feat(0)
    e = lo.known(1, "exponent")
    if e.size != 1:
        lo.fail(f"an exponent of shape {e.shape}: sparsr raises to one constant power")
    e = float(np.asarray(e, np.float64).reshape(()))
    if e == 1:
        lo.put(x)
    elif e == 2:
        lo.put(Feat(lo.emit("mul", [x.value, x.value]), x.shape))
    elif e == 3:
        sq = lo.emit("mul", [x.value, x.value], suffix=".square")
        lo.put(Feat(lo.emit("mul", [sq, x.value]), x.shape))
    elif e == 0.5:
        lo.put(Feat(lo.emit("_sqrt", [x.value]), x.shape))
    else:
        lo.fail(f"raises image data to the power {e}; sparsr has x^2, x^3 and sqrt(x) only "
                "in the patterns of GELU and a standard deviation")


def _batch_norm(lo: "_Lowering") -> None:
    """Inference batch norm: a per-channel scale and shift."""
    x = lo.feat(0)
    a = lo.attrs()
    if int(a.get("training_mode", 0)) or any(o for o in lo.node.output[1:]):
        lo.fail("training-mode batch norm is not supported")
    gamma, beta, mean, var = (np.asarray(lo.known(i, r), np.float64)
                              for i, r in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")))
    c = x.shape[0]
    if any(t.shape != (c,) for t in (gamma, beta, mean, var)):
        lo.fail(f"its parameters are not of shape ({c},)")
    scale = gamma / np.sqrt(var + float(a.get("epsilon", 1e-5)))
    shift = beta - mean * scale
    name = lo.node.name or "batchnorm"
    y = lo.emit("mul", [x.value], params={"other": lo.tensor(f"{name}.scale",
                                                              scale.astype(np.float32))},
                suffix=".scale")
    lo.put(Feat(lo.emit("add", [y], params={"other": lo.tensor(f"{name}.shift",
                                                                 shift.astype(np.float32))}),
                x.shape))


def _identity(lo: "_Lowering") -> None:
    if len(lo.node.output) > 1 and lo.node.output[1]:
        lo.fail("the dropout mask output is not supported")
    lo.put(lo.inp(0))


def _cast(lo: "_Lowering") -> None:
    if int(lo.attrs()["to"]) not in (1, 10, 11):       # float, float16, double
        lo.fail("casts image data to a non-float type")
    lo.put(lo.inp(0))


def _shape(lo: "_Lowering") -> None:
    s = lo.shape_of(lo.inp(0))
    a = lo.attrs()
    start, end = a.get("start", 0), a.get("end")
    sl = slice(int(start), None if end is None else int(end))
    lo.put(Known(s.array[sl], None if s.tags is None else s.tags[sl]))


def _size(lo: "_Lowering") -> None:
    s = lo.shape_of(lo.inp(0))
    lo.put(Known(np.asarray(np.prod(s.array), np.int64)))


def _expand(lo: "_Lowering") -> None:
    x = lo.feat(0)
    shape = lo.known(1, "shape").reshape(-1).tolist()
    if np.broadcast_shapes((1, *x.shape), tuple(int(s) for s in shape)) != (1, *x.shape):
        lo.fail(f"expands {(1, *x.shape)} to {shape}: sparsr does not broadcast image data")
    lo.put(x)


# ONNX op -> lowering of a node with image data among its inputs.
_FEATURE_OPS: dict[str, Callable[["_Lowering"], None]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Relu": _unary("relu"),
    "LeakyRelu": _unary("leaky_relu", _leaky_attrs),
    "Sigmoid": _unary("sigmoid"),
    "Tanh": _unary("tanh"),
    "Erf": _unary("_erf"),
    "Sqrt": _unary("_sqrt"),
    "Gelu": _unary("gelu", _gelu_attrs),
    "PRelu": _prelu,
    "Clip": _clip,
    "Add": _binary("add"),
    "Sub": _binary("sub"),
    "Mul": _binary("mul"),
    "Div": _binary("div"),
    "Pow": _pow,
    "MatMul": _matmul,
    "Reshape": _reshape_like(_reshape_index),
    "Transpose": _reshape_like(_transpose_index),
    "Flatten": _reshape_like(_flatten_index),
    "Squeeze": _reshape_like(_squeeze_index),
    "Unsqueeze": _reshape_like(_unsqueeze_index),
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Resize": _resize,
    "Upsample": _resize,
    "MaxPool": _pool("max_pool"),
    "AveragePool": _pool("avg_pool"),
    "GlobalAveragePool": _global_avg,
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "BatchNormalization": _batch_norm,
    "Identity": _identity,
    "Dropout": _identity,
    "Cast": _cast,
    "Shape": _shape,
    "Size": _size,
    "Expand": _expand,
}


# -- constant folding ------------------------------------------------------------

def _np_dtype(onnx_type: int) -> Any:
    import onnx
    return onnx.helper.tensor_dtype_to_np_dtype(onnx_type)


def _f_constant(lo, ins, a):
    import onnx
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            v = a[key]
            if key == "value":
                return [quiet_nans(np.array(onnx.numpy_helper.to_array(v)))]
            dtype = np.float32 if "float" in key else np.int64
            return [np.asarray(v, dtype)]
    lo.fail(f"a Constant with {sorted(a)} is not supported")


def _f_constant_of_shape(lo, ins, a):
    import onnx
    value = onnx.numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    shape = [int(s) for s in ins[0].reshape(-1)]
    _check_fold_size(lo, shape, ins)
    return [np.full(shape, value.reshape(-1)[0], value.dtype)]


def _check_fold_size(lo, shape, ins) -> None:
    """A folded constant's shape: sizes >= 0 and no more elements than
    MAX_FOLD_ELEMENTS or the largest input has (a constant made from nothing,
    ConstantOfShape([1e9]) say, is refused before it is allocated)."""
    if any(d < 0 for d in shape):
        lo.fail(f"makes a constant of shape {shape[:8]}, with a negative size")
    bound = max([MAX_FOLD_ELEMENTS] + [x.size for x in ins if x is not None])
    if math.prod(shape) > bound:
        lo.fail(f"makes a constant of shape {shape[:8]}, more than {bound} elements")


def _f_gather(lo, ins, a):
    data, indices = ins
    axis = int(a.get("axis", 0))
    idx = np.asarray(indices, np.int64)
    idx = np.where(idx < 0, idx + data.shape[axis], idx)
    return [np.take(data, idx, axis=axis)]


def _f_slice(lo, ins, a):
    data = ins[0]
    if lo.opset < 10:
        starts, ends = a["starts"], a["ends"]
        axes = a.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ins[1].reshape(-1).tolist(), ins[2].reshape(-1).tolist()
        axes = list(range(len(starts))) if len(ins) < 4 or ins[3] is None else ins[3].tolist()
        steps = [1] * len(starts) if len(ins) < 5 or ins[4] is None else ins[4].tolist()
    sl = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = int(ax) % data.ndim
        n = data.shape[ax]
        s, e, st = int(s), int(e), int(st)
        # ONNX clamps like Python, except an end past -n with a negative step
        # means "through index 0", which a Python slice spells as None.
        e_py = None if (st < 0 and e < -n) else max(min(e, n), -n - 1)
        sl[ax] = slice(max(min(s, n), -n), e_py, st)
    return [data[tuple(sl)]]


def _f_concat(lo, ins, a):
    arrays = [np.asarray(x) for x in ins if x is not None]
    if not a.get("_tags"):
        dtype = np.result_type(*arrays)
        arrays = [x.astype(dtype) for x in arrays]
    return [np.concatenate(arrays, axis=int(a["axis"]))]


def _f_unsqueeze(lo, ins, a):
    axes = a.get("axes")
    if axes is None:
        axes = ins[1].reshape(-1).tolist()
    rank = ins[0].ndim + len(axes)
    out = ins[0]
    for ax in sorted(int(x) % rank for x in axes):
        out = np.expand_dims(out, ax)
    return [out]


def _f_squeeze(lo, ins, a):
    axes = a.get("axes")
    if axes is None and len(ins) > 1 and ins[1] is not None:
        axes = ins[1].reshape(-1).tolist()
    if axes is None:
        return [np.squeeze(ins[0])]
    return [np.squeeze(ins[0], axis=tuple(int(x) % ins[0].ndim for x in axes))]


def _f_reshape(lo, ins, a):
    shape = [int(s) for s in ins[1].reshape(-1)]
    if not a.get("allowzero", 0):
        shape = [ins[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [ins[0].reshape(shape)]


def _f_cast(lo, ins, a):
    if a.get("_tags"):
        return [ins[0]]
    to = _np_dtype(int(a["to"]))
    return [ins[0].astype(to)]


def _f_div(lo, ins, a):
    x, y = ins
    if np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer):
        q = np.abs(x) // np.abs(y)          # ONNX integer division truncates
        return [(np.sign(x) * np.sign(y) * q).astype(np.result_type(x, y))]
    return [np.divide(x, y)]


def _f_binary(fn):
    def fold(lo, ins, a):
        return [fn(ins[0], ins[1])]
    return fold


def _f_unary(fn):
    def fold(lo, ins, a):
        return [fn(ins[0])]
    return fold


def _f_range(lo, ins, a):
    start, limit, delta = (x.reshape(()) for x in ins)
    if delta == 0 or not all(np.isfinite(v) for v in (start, limit, delta)):
        lo.fail(f"a Range from {start} to {limit} by {delta}")
    _check_fold_size(lo, [max(0, math.ceil((float(limit) - float(start)) / float(delta)))], [])
    return [np.arange(start, limit, delta, dtype=np.result_type(start, limit, delta))]


def _f_tile(lo, ins):
    reps = [int(r) for r in ins[1].reshape(-1)]
    if len(reps) != ins[0].ndim or any(r < 0 for r in reps):
        lo.fail(f"Tile repeats {reps[:8]} do not fit a rank-{ins[0].ndim} input")
    _check_fold_size(lo, [d * r for d, r in zip(ins[0].shape, reps)], ins[:1])
    return [np.tile(ins[0], reps)]


def _f_where(lo, ins, a):
    return [np.where(ins[0], ins[1], ins[2])]


def _f_expand(lo, ins, a):
    shape = [int(s) for s in ins[1].reshape(-1)]
    _check_fold_size(lo, list(np.broadcast_shapes(ins[0].shape, tuple(shape))), ins[:1])
    return [ins[0] * np.ones(shape, ins[0].dtype) if not a.get("_tags")
            else np.broadcast_to(ins[0], np.broadcast_shapes(ins[0].shape, tuple(shape)))]


def _f_transpose(lo, ins, a):
    return [np.transpose(ins[0], a.get("perm"))]


def _f_flatten(lo, ins, a):
    axis = int(a.get("axis", 1)) % (ins[0].ndim + 1)
    return [ins[0].reshape(int(np.prod(ins[0].shape[:axis])), -1)]


def _f_shape(lo, ins, a):
    s = np.asarray(ins[0].shape, np.int64)
    start, end = a.get("start", 0), a.get("end")
    return [s[int(start): None if end is None else int(end)]]


def _f_reduce(fn):
    def fold(lo, ins, a):
        axes = a.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = ins[1].reshape(-1).tolist()
        axes = None if not axes else tuple(int(x) for x in axes)
        return [fn(ins[0], axis=axes, keepdims=bool(a.get("keepdims", 1)))]
    return fold


def _f_clip(lo, ins, a):
    x = ins[0]
    lo_v = a.get("min") if lo.opset < 11 else (ins[1] if len(ins) > 1 else None)
    hi_v = a.get("max") if lo.opset < 11 else (ins[2] if len(ins) > 2 else None)
    if lo_v is not None:
        x = np.maximum(x, np.asarray(lo_v, x.dtype))
    if hi_v is not None:
        x = np.minimum(x, np.asarray(hi_v, x.dtype))
    return [x]


def _f_split(lo, ins, a):
    axis = int(a.get("axis", 0))
    sizes = a.get("split")
    if sizes is None and len(ins) > 1 and ins[1] is not None:
        sizes = ins[1].reshape(-1).tolist()
    n = len(lo.node.output)
    if sizes is None:
        n = int(a.get("num_outputs", n))
        d = ins[0].shape[axis]
        sizes = [-(-d // n)] * n
        sizes[-1] = d - sum(sizes[:-1])
    return np.split(ins[0], np.cumsum(sizes)[:-1].tolist(), axis=axis)


def _f_erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


def _f_identity(lo, ins, a):
    return [ins[0]]


def _f_matmul(lo, ins, a):
    return [np.matmul(ins[0], ins[1])]


def _f_gelu(lo, ins, a):
    x = ins[0].astype(np.float64)
    if _gelu_attrs(a)["approximate"] == "tanh":
        y = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    else:
        y = 0.5 * x * (1 + _f_erf(x / math.sqrt(2)))
    return [y.astype(ins[0].dtype)]


def _f_leaky(lo, ins, a):
    alpha = float(a.get("alpha", 0.01))
    return [np.where(ins[0] >= 0, ins[0], ins[0] * np.asarray(alpha, ins[0].dtype))]


# ONNX op -> numpy evaluation when every input is known (shape subgraphs,
# weight computations).
_FOLD_OPS: dict[str, Callable] = {
    "Constant": _f_constant,
    "ConstantOfShape": _f_constant_of_shape,
    "Identity": _f_identity,
    "Dropout": _f_identity,
    "Cast": _f_cast,
    "Shape": _f_shape,
    "Size": lambda lo, ins, a: [np.asarray(ins[0].size, np.int64)],
    "Gather": _f_gather,
    "Slice": _f_slice,
    "Concat": _f_concat,
    "Unsqueeze": _f_unsqueeze,
    "Squeeze": _f_squeeze,
    "Reshape": _f_reshape,
    "Flatten": _f_flatten,
    "Expand": _f_expand,
    "Transpose": _f_transpose,
    "Split": _f_split,
    "Add": _f_binary(np.add),
    "Sub": _f_binary(np.subtract),
    "Mul": _f_binary(np.multiply),
    "Div": _f_div,
    "Pow": _f_binary(lambda x, y: np.power(x, y).astype(x.dtype)),
    "Mod": _f_binary(np.fmod),
    "Min": lambda lo, ins, a: [np.minimum.reduce(np.broadcast_arrays(*ins))],
    "Max": lambda lo, ins, a: [np.maximum.reduce(np.broadcast_arrays(*ins))],
    "Equal": _f_binary(np.equal),
    "Less": _f_binary(np.less),
    "Greater": _f_binary(np.greater),
    "LessOrEqual": _f_binary(np.less_equal),
    "GreaterOrEqual": _f_binary(np.greater_equal),
    "And": _f_binary(np.logical_and),
    "Or": _f_binary(np.logical_or),
    "Not": _f_unary(np.logical_not),
    "Where": _f_where,
    "Range": _f_range,
    "Neg": _f_unary(np.negative),
    "Abs": _f_unary(np.abs),
    "Sqrt": _f_unary(np.sqrt),
    "Reciprocal": _f_unary(np.reciprocal),
    "Exp": _f_unary(np.exp),
    "Log": _f_unary(np.log),
    "Floor": _f_unary(np.floor),
    "Ceil": _f_unary(np.ceil),
    "Round": _f_unary(np.round),
    "Sign": _f_unary(np.sign),
    "Relu": _f_unary(lambda x: np.maximum(x, 0).astype(x.dtype)),
    "LeakyRelu": _f_leaky,
    "Sigmoid": _f_unary(lambda x: (1 / (1 + np.exp(-x))).astype(x.dtype)),
    "Tanh": _f_unary(np.tanh),
    "Erf": _f_unary(_f_erf),
    "Gelu": _f_gelu,
    "Clip": _f_clip,
    "MatMul": _f_matmul,
    "ReduceProd": _f_reduce(np.prod),
    "ReduceSum": _f_reduce(np.sum),
    "ReduceMean": _f_reduce(np.mean),
    "ReduceMax": _f_reduce(np.max),
    "ReduceMin": _f_reduce(np.min),
    "ReduceL1": _f_reduce(lambda x, **k: np.sum(np.abs(x), **k)),
    "ReduceL2": _f_reduce(lambda x, **k: np.sqrt(np.sum(np.square(x), **k))),
    "ReduceSumSquare": _f_reduce(lambda x, **k: np.sum(np.square(x), **k)),
    "Tile": lambda lo, ins, a: _f_tile(lo, ins),
}

# Ops that only move elements: which inputs' elements move (the rest are
# indices, shapes, axes). Their tags move the same way.
_STRUCTURAL: dict[str, Callable[[int], set[int]]] = {
    "Identity": lambda n: {0}, "Cast": lambda n: {0}, "Gather": lambda n: {0},
    "Slice": lambda n: {0}, "Concat": lambda n: set(range(n)), "Unsqueeze": lambda n: {0},
    "Squeeze": lambda n: {0}, "Reshape": lambda n: {0}, "Flatten": lambda n: {0},
    "Expand": lambda n: {0}, "Transpose": lambda n: {0}, "Dropout": lambda n: {0},
}


# -- fusion -------------------------------------------------------------------------

class _IR:
    """The node list with producer and consumer look-ups, rebuilt after edits."""

    def __init__(self, nodes: list[Node], output: str):
        self.nodes = nodes
        self.output = output
        self.refresh()

    def refresh(self) -> None:
        self.producer = {v: n for n in self.nodes for v in n.outputs}
        self.users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                self.users.setdefault(v, []).append(n)

    def made_by(self, value: str, op: str, **attrs) -> Node | None:
        n = self.producer.get(value)
        if n is None or n.op != op or any(n.attrs.get(k) != v for k, v in attrs.items()):
            return None
        return n

    def only_user(self, value: str) -> Node | None:
        """The one node reading value, if exactly one does and it is no graph output."""
        users = self.users.get(value, [])
        return users[0] if len(users) == 1 and value != self.output else None

    def scalar(self, n: Node | None, op: str, near: float, tol: float = 1e-5) -> bool:
        """n is `op` with the one constant `near` (attr value)."""
        if n is None or n.op != op or len(n.inputs) != 1 or n.params or n.attrs.get("reverse"):
            return False
        v = n.attrs.get("value")
        return isinstance(v, float) and abs(v - near) <= tol * abs(near)

    def product(self, n: Node | None) -> bool:
        """n multiplies two values."""
        return n is not None and n.op == "mul" and len(n.inputs) == 2 and not n.params

    def replace(self, last: Node, op: str, inputs: list[str], attrs: dict,
                remove: Sequence[Node]) -> None:
        """A node writing `last`'s outputs takes its place; `remove` go."""
        gone = {id(n) for n in remove}
        self.nodes[self.nodes.index(last)] = Node(op, last.name, inputs, list(last.outputs),
                                                  attrs, {})
        self.nodes = [n for n in self.nodes if id(n) not in gone]
        self.refresh()


def _fuse(lo: _Lowering, output: str) -> str:
    ir = _IR(lo.b.nodes, output)
    _fuse_reductions(ir)
    _fuse_std(ir)
    _fuse_gelu(ir)
    _fuse_silu(ir)
    _fuse_bias(lo, ir)
    _drop_dead(ir)
    _lower_permutations(lo, ir)
    _join_splits(lo, ir)
    for n in ir.nodes:
        if n.op in _INTERNAL:
            onnx_name, onnx_op = lo.origin.get(n.name, (n.name, "?"))
            raise CheckpointError(
                f"ONNX node {onnx_name!r} ({onnx_op}): {_INTERNAL[n.op]} on image data is "
                "supported only inside a recognised pattern (GELU, a mean or a standard "
                "deviation over pixels), and this is none")
    lo.b.nodes = ir.nodes
    used = {t for n in ir.nodes for t in n.params.values()}
    lo.b.tensors = {k: v for k, v in lo.b.tensors.items() if k in used}
    return ir.output


def _fuse_reductions(ir: _IR) -> None:
    """A sum over W then over H (either order) -> one sum over pixels; a sum
    over pixels times 1/(H*W), or a mean over pixels -> global_mean."""
    changed = True
    while changed:
        changed = False
        for n in ir.nodes:
            if n.op != "_reduce":
                continue
            inner = ir.made_by(n.inputs[0], "_reduce", kind=n.attrs["kind"])
            if inner is not None and ir.only_user(inner.outputs[0]) is n and \
                    set(inner.attrs["axes"]) | set(n.attrs["axes"]) == {2, 3}:
                size = [inner.attrs["size"][0] * n.attrs["size"][0],
                        inner.attrs["size"][1] * n.attrs["size"][1]]
                ir.replace(n, "_reduce", [inner.inputs[0]],
                           {"kind": n.attrs["kind"], "axes": [2, 3], "size": size}, [inner])
                changed = True
                break
            if n.attrs["axes"] != [2, 3]:
                continue
            if n.attrs["kind"] == "mean":
                ir.replace(n, "global_mean", [n.inputs[0]], {}, [])
                changed = True
                break
            user = ir.only_user(n.outputs[0])
            if ir.scalar(user, "mul", 1.0 / (n.attrs["size"][0] * n.attrs["size"][1])):
                ir.replace(user, "global_mean", [n.inputs[0]], {}, [n])
                changed = True
                break


def _fuse_std(ir: _IR) -> None:
    """sqrt(mean((x - mean(x))^2)) -> global_std(x), as IMDN's stdv_channels."""
    for n in list(ir.nodes):
        if n.op != "_sqrt":
            continue
        var = ir.made_by(n.inputs[0], "global_mean")
        if var is None or ir.only_user(var.outputs[0]) is not n:
            continue
        sq = ir.producer.get(var.inputs[0])
        if not ir.product(sq) or sq.inputs[0] != sq.inputs[1] or \
                ir.only_user(sq.outputs[0]) is not var:
            continue
        d = ir.made_by(sq.inputs[0], "sub")
        if d is None or len(d.inputs) != 2 or d.params or d.outputs[0] == ir.output or \
                ir.users.get(d.outputs[0]) != [sq, sq]:
            continue
        mean = ir.made_by(d.inputs[1], "global_mean")
        if mean is None or mean.inputs[0] != d.inputs[0]:
            continue
        remove = [var, sq, d]
        if ir.users.get(mean.outputs[0]) == [d] and mean.outputs[0] != ir.output:
            remove.append(mean)
        ir.replace(n, "global_std", [d.inputs[0]], {}, remove)


def _gelu_tails(ir: _IR, t: str) -> list[tuple[Node, str, list[Node]]]:
    """The ways t = 1 + f(x) may end as 0.5 * x * t: (last node, x, the nodes
    between t and it)."""
    u = ir.only_user(t)
    found = []
    if ir.scalar(u, "mul", 0.5):                            # x * (t * 0.5)
        last = ir.only_user(u.outputs[0])
        if ir.product(last) and last.inputs.count(u.outputs[0]) == 1:
            x = last.inputs[1] if last.inputs[0] == u.outputs[0] else last.inputs[0]
            found.append((last, x, [u]))
    elif ir.product(u) and u.inputs.count(t) == 1:
        other = u.inputs[1] if u.inputs[0] == t else u.inputs[0]
        half = ir.producer.get(other)
        if ir.scalar(half, "mul", 0.5) and ir.only_user(other) is u:   # (x * 0.5) * t
            found.append((u, half.inputs[0], [half]))
        last = ir.only_user(u.outputs[0])
        if ir.scalar(last, "mul", 0.5):                                 # (x * t) * 0.5
            found.append((last, other, [u]))
    return found


def _fuse_gelu(ir: _IR) -> None:
    """0.5 * x * (1 + erf(x / sqrt 2)) -> gelu; 0.5 * x * (1 + tanh(sqrt(2/pi) *
    (x + 0.044715 x^3))) -> gelu(approximate="tanh")."""
    for n in list(ir.nodes):
        if n.op == "_erf":
            scaled = ir.producer.get(n.inputs[0])
            if not ir.scalar(scaled, "mul", 1 / math.sqrt(2)) or \
                    ir.only_user(scaled.outputs[0]) is not n:
                continue
            x, inner, approx = scaled.inputs[0], [scaled], "none"
        elif n.op == "tanh":
            found = _tanh_gelu_inner(ir, n)
            if found is None:
                continue
            (x, inner), approx = found, "tanh"
        else:
            continue
        plus = ir.only_user(n.outputs[0])
        if not ir.scalar(plus, "add", 1.0):
            continue
        for last, x2, between in _gelu_tails(ir, plus.outputs[0]):
            if x2 == x:
                ir.replace(last, "gelu", [x], {"approximate": approx},
                           [*inner, n, plus, *between])
                break


def _tanh_gelu_inner(ir: _IR, tanh: Node) -> tuple[str, list[Node]] | None:
    """tanh's input is sqrt(2/pi) * (x + 0.044715 * x^3): (x, those nodes)."""
    scaled = ir.producer.get(tanh.inputs[0])
    if not ir.scalar(scaled, "mul", math.sqrt(2 / math.pi)) or \
            ir.only_user(scaled.outputs[0]) is not tanh:
        return None
    add = ir.made_by(scaled.inputs[0], "add")
    if add is None or len(add.inputs) != 2 or add.params or \
            ir.only_user(add.outputs[0]) is not scaled:
        return None
    for x, other in (add.inputs, add.inputs[::-1]):
        k = ir.producer.get(other)
        if not ir.scalar(k, "mul", 0.044715) or ir.only_user(other) is not add:
            continue
        cube = ir.producer.get(k.inputs[0])
        if not ir.product(cube) or ir.only_user(cube.outputs[0]) is not k:
            continue
        for s, y in (cube.inputs, cube.inputs[::-1]):       # (x * x) * x, x * (x * x)
            square = ir.producer.get(s)
            if y == x and ir.product(square) and square.inputs == [x, x] and \
                    ir.only_user(s) is cube:
                return x, [scaled, add, k, cube, square]
    return None


def _fuse_silu(ir: _IR) -> None:
    """x * sigmoid(x) -> silu(x); the sigmoid stays if something else reads it."""
    for n in list(ir.nodes):
        if not ir.product(n):
            continue
        for x, s in (n.inputs, n.inputs[::-1]):
            sig = ir.made_by(s, "sigmoid")
            if sig is not None and sig.inputs[0] == x and x != s:
                ir.replace(n, "silu", [x], {}, [sig] if ir.only_user(s) is n else [])
                break


def _fuse_bias(lo: _Lowering, ir: _IR) -> None:
    """A per-channel constant added to a bias-free convolution's output (a
    MatMul then Add, a linear layer) -> the convolution's bias."""
    for n in list(ir.nodes):
        if n.op != "add" or len(n.inputs) != 1 or "other" not in n.params:
            continue
        conv = ir.made_by(n.inputs[0], "conv2d")
        if conv is None or "bias" in conv.params or ir.only_user(n.inputs[0]) is not n:
            continue
        bias = lo.b.tensors[n.params["other"]]
        cout = lo.b.tensors[conv.params["weight"]].shape[0]
        if bias.size == 1:
            bias = np.full(cout, bias[0], np.float32)
        if bias.shape != (cout,):
            continue
        params = dict(conv.params, bias=lo.tensor(n.params["other"], bias))
        ir.nodes[ir.nodes.index(conv)] = Node(conv.op, conv.name, conv.inputs, list(n.outputs),
                                              conv.attrs, params)
        ir.nodes.remove(n)
        ir.refresh()


def _lower_permutations(lo: _Lowering, ir: _IR) -> None:
    """A channel permutation goes into the weights of the convolution that
    writes its input, or of every convolution reading its output; else it
    becomes slices of runs of channels and a concat (views, no copy)."""
    for n in list(ir.nodes):
        if n.op != "_permute":
            continue
        order = np.asarray(n.attrs["order"], np.int64)
        src = ir.producer.get(n.inputs[0])
        users = ir.users.get(n.outputs[0], [])
        if src is not None and src.op == "conv2d" and src.attrs.get("groups") == 1 and \
                ir.only_user(n.inputs[0]) is n:
            # P(W * x + b) = W[order] * x + b[order]
            params = {role: lo.b.const(t, lo.b.tensors[t][order])
                      for role, t in src.params.items()}
            ir.nodes[ir.nodes.index(src)] = Node(src.op, src.name, src.inputs, list(n.outputs),
                                                 src.attrs, params)
            ir.nodes.remove(n)
        elif users and n.outputs[0] != ir.output and all(
                u.op == "conv2d" and u.attrs.get("groups") == 1 for u in users):
            for u in users:
                # W * P(x): column c of W reads channel order[c] of x.
                w = lo.b.tensors[u.params["weight"]]
                moved = np.empty_like(w)
                moved[:, order] = w
                params = dict(u.params, weight=lo.b.const(u.params["weight"], moved))
                ir.nodes[ir.nodes.index(u)] = Node(u.op, u.name, [n.inputs[0]],
                                                   list(u.outputs), u.attrs, params)
            ir.nodes.remove(n)
        else:
            runs: list[list[int]] = []
            for c in order.tolist():
                if runs and runs[-1][1] == c:
                    runs[-1][1] = c + 1
                else:
                    runs.append([c, c + 1])
            pieces = [Node("slice", f"{n.name}.{k}", [n.inputs[0]], [f"{n.name}.{k}"],
                           {"start": a, "stop": b}) for k, (a, b) in enumerate(runs)]
            i = ir.nodes.index(n)
            ir.nodes[i:i + 1] = [*pieces, Node("concat", n.name, [p.outputs[0] for p in pieces],
                                               list(n.outputs))]
        ir.refresh()


def _join_splits(lo: _Lowering, ir: _IR) -> None:
    """The slices one Split was lowered to become one split again when all of
    its outputs are still read (an unread one would dangle)."""
    for source, channels, outs in lo.splits:
        pieces = [ir.producer.get(v) for v in outs]
        if any(p is None or p.op != "slice" or p.inputs != [source] for p in pieces):
            continue
        bounds = [(p.attrs["start"], p.attrs["stop"]) for p in pieces]
        if len(pieces) < 2 or bounds[0][0] != 0 or bounds[-1][1] != channels or any(
                a[1] != b[0] for a, b in zip(bounds, bounds[1:])):
            continue
        first = ir.nodes.index(pieces[0])
        split = Node("split", pieces[0].name.rsplit(":", 1)[0], [source], list(outs),
                     {"sizes": [b - a for a, b in bounds]})
        gone = {id(p) for p in pieces[1:]}
        ir.nodes[first] = split
        ir.nodes = [n for n in ir.nodes if id(n) not in gone]
        ir.refresh()


def _drop_dead(ir: _IR) -> None:
    """Nodes whose outputs nothing reads any more go."""
    while True:
        read = {v for n in ir.nodes for v in n.inputs} | {ir.output}
        keep = [n for n in ir.nodes if any(v in read for v in n.outputs)]
        if len(keep) == len(ir.nodes):
            return
        ir.nodes = keep
        ir.refresh()


# -- size independence --------------------------------------------------------------

def _lower(proto: Any, probe: tuple[int, int]) -> _Lowered:
    return _Lowering(proto, probe).run()


def _same_at_both_sizes(a: _Lowered, b: _Lowered, probes) -> None:
    na, nb = a.builder.nodes, b.builder.nodes
    for x, y in zip(na, nb):
        if x.to_dict() != y.to_dict() or any(
                not np.array_equal(a.builder.tensors[x.params[r]], b.builder.tensors[y.params[r]])
                for r in x.params if r in y.params):
            raise CheckpointError(
                f"node {x.name!r} ({x.op}) comes out differently at input sizes "
                f"{probes[0][0]}x{probes[0][1]} and {probes[1][0]}x{probes[1][1]} "
                f"({_diff(x, y)}): the graph holds sizes fixed at export, which sparsr "
                "cannot run at other sizes")
    if len(na) != len(nb) or a.output != b.output:
        raise CheckpointError("the graph converts to different node lists at input sizes "
                              f"{probes[0]} and {probes[1]}: it holds sizes fixed at export")


def _diff(x: Node, y: Node) -> str:
    for key in sorted(set(x.attrs) | set(y.attrs)):
        if x.attrs.get(key) != y.attrs.get(key):
            return f"{key} {x.attrs.get(key)} vs {y.attrs.get(key)}"
    if x.op != y.op or x.inputs != y.inputs:
        return f"{x.op}{x.inputs} vs {y.op}{y.inputs}"
    return "its tensors differ"
