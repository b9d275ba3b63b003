"""The op registry: one class per graph op.

An op class is made once per graph node at load time (it checks its attrs and
tensors there and packs its weights) and is then run any number of times:

    @register
    class Sigmoid(Op):
        name = "sigmoid"
        def infer(self, shapes):            # [(C, H, W)] -> [(C, H, W)]
            return [shapes[0]]
        def run(self, rt, inputs):          # _core.Channels in, Channels out
            out = rt.output(0, inputs[0])   # a new feature, or input 0 reused in place
            _core.unary("sigmoid", inputs[0], out)
            return [out]

Adding an op is one module under ops/ with its class; the import list at the
end of this file is the one registry line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from ..errors import CheckpointError
from ..graph import Node

Shape = tuple[int, int, int]   # (channels, height, width)

OPS: dict[str, type["Op"]] = {}


def register(cls: type["Op"]) -> type["Op"]:
    if cls.name in OPS:
        raise RuntimeError(f"op {cls.name!r} registered twice")
    OPS[cls.name] = cls
    return cls


class BuildContext:
    """What an op may read while it is made: tensors, per-layer formats, ISA,
    and whether tensors may hold NaN or infinite values (refused by default)."""

    def __init__(self, tensors: Mapping[str, np.ndarray], layers: Mapping[str, dict],
                 isa: str | None, allow_nonfinite: bool = False):
        self.tensors = tensors
        self.layers = layers
        self.isa = isa
        self.allow_nonfinite = allow_nonfinite


@dataclass(frozen=True)
class RowMap:
    """How an op's output rows follow from its input rows, for band execution
    (bands.py). Output row y reads input rows within `halo` of the proportional
    ones, [(y * down) // up, ((y + 1) * down - 1) // up]. Run on a window of
    input rows starting at row r (a multiple of `align` and `down`) as if it
    were the whole image, the op gives output rows from r * up // down on,
    exact except within the halo of a window edge that is not an image edge.

    border: the halo is one row, which the op reads from the rows beside its
    input views, a fused residual's aside (a 3x3 convolution reading its
    padding from memory): run on
    exactly the rows it is to give, with the rows beside them real, it is exact
    everywhere."""
    up: int = 1
    down: int = 1
    halo: int = 0
    align: int = 1
    border: bool = False


POINTWISE = RowMap()


# Attribute bounds when an op gives none: the native code takes ints as int32
# and floats as float32 (a larger value would wrap, or become infinite).
INT_RANGE = (-(1 << 31), (1 << 31) - 1)
FLOAT_MAX = float(np.finfo(np.float32).max)


class Op:
    """One node of a graph, ready to run. Subclasses set `name` and implement
    `infer` and `run`; `macs` and `convs` feed `Model.info()`."""

    name: ClassVar[str] = ""
    # The output may reuse input 0's buffer when nothing reads input 0 later
    # (the executor decides; `rt.output` does it).
    inplace: ClassVar[bool] = False
    # Number of inputs: an int, or (min, max) with max None for any.
    arity: ClassVar[Any] = 1

    def __init__(self, node: Node, ctx: BuildContext):
        self.node = node
        n = len(node.inputs)
        lo, hi = (self.arity, self.arity) if isinstance(self.arity, int) else self.arity
        if n < lo or (hi is not None and n > hi):
            want = str(lo) if lo == hi else f"{lo} to {hi if hi is not None else 'any'}"
            self.fail(f"takes {want} inputs, got {n}")

    # -- to implement ---------------------------------------------------------

    def infer(self, shapes: list[Shape]) -> list[Shape]:
        raise NotImplementedError

    def run(self, rt: Any, inputs: list[Any]) -> list[Any]:
        raise NotImplementedError

    def row_map(self) -> RowMap | None:
        """How output rows depend on input rows (RowMap), or None when an output
        row depends on the whole input (a global statistic): such an op ends a
        pass of band execution."""
        return None

    def shape_inputs(self) -> tuple[int, ...]:
        """The inputs it reads for their shape alone (band execution then
        passes it a ShapeOnly instead of the whole value)."""
        return ()

    def workspace(self, shapes: list[Shape]) -> int:
        """Bytes of scratch features the op allocates while it runs, beyond its outputs."""
        return 0

    def macs(self, shapes: list[Shape]) -> int:
        """Multiply-accumulates of a dense run at these input shapes."""
        return 0

    def packed_convs(self) -> list:
        """The packed fast convolutions the op runs (ops/conv.py PackedConv)."""
        return []

    def convs(self) -> list[dict]:
        """Rows of Model.info()'s layer table for the convolutions this op owns."""
        return []

    # -- helpers --------------------------------------------------------------

    def fail(self, message: str, kind: type[Exception] = CheckpointError):
        raise kind(f"node {self.node.name!r} ({self.node.op}): {message}")

    def attr(self, key: str, default: Any = None, kind: type | tuple = int,
             lo: float | None = None, hi: float | None = None,
             choices: tuple | None = None) -> Any:
        """A checked attribute: its type, range or allowed values, else the default.
        Without bounds an int must fit int32 and a float be a finite float32."""
        value = self.node.attrs.get(key, default)
        if value is None and default is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            self.fail(f"attribute {key!r} must be {getattr(kind, '__name__', kind)}, "
                      f"got {value!r:.40}")
        if choices is not None and value not in choices:
            self.fail(f"attribute {key!r} must be one of {choices}, got {value!r:.40}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float):
                lo = -FLOAT_MAX if lo is None else lo
                hi = FLOAT_MAX if hi is None else hi
            else:
                lo = INT_RANGE[0] if lo is None else lo
                hi = INT_RANGE[1] if hi is None else hi
            if value != value or not lo <= value <= hi:
                self.fail(f"attribute {key!r} must be in [{lo}, {hi}], got {value!r:.40}")
        return value

    def int_pair(self, key: str, default: int, lo: int, hi: int) -> tuple[int, int]:
        """An attribute given as one int or a pair [a, b]."""
        value = self.node.attrs.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            self.fail(f"attribute {key!r} must be an int or a pair of ints, got {value!r:.40}")
        if not all(lo <= v <= hi for v in value):
            self.fail(f"attribute {key!r} must be in [{lo}, {hi}], got {value}")
        return value[0], value[1]

    def tensor(self, ctx: BuildContext, role: str, shape: tuple | None = None,
               required: bool = True) -> np.ndarray | None:
        """The float32 tensor of a role (params), its shape checked if given.
        Every tensor an op reads comes through here: a tensor of another dtype
        (an int32 label on float bytes, say) is refused, and so are NaN and
        infinite values unless the model was loaded with allow_nonfinite."""
        name = self.node.params.get(role)
        if name is None:
            if required:
                self.fail(f"lacks its {role!r} tensor")
            return None
        t = ctx.tensors.get(name)
        if not isinstance(t, np.ndarray):
            self.fail(f"its {role} tensor {name!r} is not in the file")
        if t.dtype.kind != "f":
            self.fail(f"{role} tensor {name!r} has dtype {t.dtype}, expected float32")
        if shape is not None and tuple(t.shape) != tuple(shape):
            self.fail(f"{role} tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        t = np.ascontiguousarray(t, dtype=np.float32)
        if not getattr(ctx, "allow_nonfinite", False) and not np.isfinite(t).all():
            bad = int(np.count_nonzero(~np.isfinite(t)))
            self.fail(f"{role} tensor {name!r} holds {bad} NaN or infinite values (load with "
                      "allow_nonfinite=True to accept them)")
        return t

    def same_shape(self, shapes: list[Shape]) -> Shape:
        if any(s != shapes[0] for s in shapes[1:]):
            self.fail(f"inputs differ in shape: {shapes}", ValueError)
        return shapes[0]


# The registry: every op module, imported for its @register classes.
from . import conv as _conv  # noqa: E402,F401
from . import conv_transpose as _conv_transpose  # noqa: E402,F401
from . import activation as _activation  # noqa: E402,F401
from . import arith as _arith  # noqa: E402,F401
from . import channels as _channels  # noqa: E402,F401
from . import spatial as _spatial  # noqa: E402,F401
from . import reduce as _reduce  # noqa: E402,F401
from . import pool as _pool  # noqa: E402,F401
from . import smsr as _smsr  # noqa: E402,F401
