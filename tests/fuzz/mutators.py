"""Mutation strategies: seed bytes + a random generator -> (strategy name, new bytes).

Each target has a list of weighted strategies; `mutate(target, seeds, rng)`
picks a seed and a strategy (sometimes two stacked). Everything is
deterministic given the generator, and small: no strategy makes an input of
more than a few megabytes.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import random
import struct
import zipfile
import warnings
import zlib
from typing import Any, Callable

# No input larger than this (the seeds are kilobytes; the long-header
# mutations reach 9 MB).
MAX_INPUT = 12 << 20

# -- generic bytes ----------------------------------------------------------------------

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x20, 0x22, 0x5C, 0x7B, 0x5B)
INTERESTING_INTS = (0, 1, -1, 2, 3, 7, 8, 64, 255, 256, 4096, 65535, 65536, 2 ** 31 - 1,
                    2 ** 31, -2 ** 31, 2 ** 32, 2 ** 32 + 1, 2 ** 40, 2 ** 53, 2 ** 62,
                    2 ** 63 - 1, -2 ** 63, 2 ** 63, 2 ** 64, 10 ** 30)
INTERESTING_FLOATS = (0.0, -0.0, 0.5, 1e-300, 1e-45, 1e300, -1e300, 3.4e38, 1e39,
                      float("nan"), float("inf"), float("-inf"), 1e-7, 2.5, -3.0)


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    if not b:
        return bytes([rng.randrange(256)])
    for _ in range(rng.choice((1, 1, 2, 4, 8, 32))):
        i = rng.randrange(len(b))
        kind = rng.random()
        if kind < 0.4:
            b[i] ^= 1 << rng.randrange(8)
        elif kind < 0.7:
            b[i] = rng.choice(INTERESTING_BYTES)
        else:
            b[i] = rng.randrange(256)
    return bytes(b)


def splice_bytes(data: bytes, rng: random.Random) -> bytes:
    """Deletes, duplicates or inserts a run of bytes somewhere."""
    if not data:
        return b"\0"
    i = rng.randrange(len(data))
    n = rng.choice((1, 2, 4, 8, 64, 512))
    kind = rng.randrange(3)
    if kind == 0:
        return data[:i] + data[i + n:]
    if kind == 1:
        return data[:i] + data[i:i + n] * rng.choice((2, 3, 16)) + data[i + n:]
    return data[:i] + bytes(rng.randrange(256) for _ in range(n)) + data[i:]


def truncate(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    kind = rng.random()
    if kind < 0.6:
        return data[:rng.randrange(len(data))]
    if kind < 0.8:
        return data[:len(data) - rng.choice((1, 2, 4, 8, 64))]
    return data + bytes(rng.randrange(256) for _ in range(rng.choice((1, 8, 64, 4096))))


def overwrite_int(data: bytes, rng: random.Random) -> bytes:
    """An interesting little-endian integer written at a random offset."""
    if len(data) < 8:
        return flip_bytes(data, rng)
    fmt = rng.choice(("<I", "<Q", "<i", "<q", "<H", "<B"))
    size = struct.calcsize(fmt)
    i = rng.randrange(len(data) - size + 1)
    lo, hi = {"<I": (0, 2 ** 32), "<Q": (0, 2 ** 64), "<i": (-2 ** 31, 2 ** 31),
              "<q": (-2 ** 63, 2 ** 63), "<H": (0, 2 ** 16), "<B": (0, 256)}[fmt]
    v = rng.choice(INTERESTING_INTS)
    v = v if lo <= v < hi else rng.randrange(lo, hi)
    return data[:i] + struct.pack(fmt, v) + data[i + size:]


GENERIC = [(flip_bytes, 4), (splice_bytes, 2), (truncate, 2), (overwrite_int, 2)]


# -- JSON trees ---------------------------------------------------------------------------

def _paths(tree: Any, at=()) -> list[tuple]:
    out = [at]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.extend(_paths(v, at + (k,)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.extend(_paths(v, at + (i,)))
    return out


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree, path, value):
    if not path:
        return value
    _get(tree, path[:-1])[path[-1]] = value
    return tree


def random_json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(INTERESTING_INTS)
    if kind == 1:
        return rng.choice(INTERESTING_FLOATS)
    if kind == 2:
        return rng.choice(("", "x", "float32", "conv2d", "nm", "rgb", "\0", "é" * 3,
                           "a" * rng.choice((10, 1000, 100000)), "image", "a.weight"))
    if kind == 3:
        return rng.choice((True, False, None))
    if kind == 4:
        return []
    if kind == 5:
        return {}
    if kind < 8:
        return [random_json_value(rng, depth + 1) for _ in range(rng.choice((1, 2, 4, 8)))]
    return {rng.choice(("op", "name", "inputs", "outputs", "attrs", "params", "format",
                        "shape", "dtype", "offset", "x", "")): random_json_value(rng, depth + 1)
            for _ in range(rng.choice((1, 2, 3)))}


def mutate_json_tree(tree: Any, rng: random.Random, hints: dict | None = None) -> Any:
    """One structural change somewhere in a JSON tree (in place where possible)."""
    paths = _paths(tree)
    path = rng.choice(paths)
    node = _get(tree, path)
    kind = rng.random()
    hints = hints or {}
    if kind < 0.30:                         # replace by a value of another type or extreme
        return _set(tree, path, random_json_value(rng))
    if kind < 0.45 and isinstance(node, (int, float)) and not isinstance(node, bool):
        choices = [node * 2, node + 1, node - 1, -node, node * 1000, 0] + list(INTERESTING_INTS)
        if isinstance(node, float):
            choices += list(INTERESTING_FLOATS)
        return _set(tree, path, rng.choice(choices))
    if kind < 0.55 and path:                 # delete
        parent = _get(tree, path[:-1])
        del parent[path[-1]]
        return tree
    if kind < 0.62 and isinstance(node, list) and node:
        op = rng.randrange(4)
        if op == 0:
            node.append(rng.choice(node))
        elif op == 1:
            rng.shuffle(node)
        elif op == 2 and len(json.dumps(node[0])) < 64:
            node.extend([node[0]] * rng.choice((10, 1000, 20000)))
        else:
            node.pop(rng.randrange(len(node)))
        return tree
    if kind < 0.70 and isinstance(node, dict):
        node[rng.choice(("x", "op", "attrs", "scale", "groups", "kernel", "format",
                         "version", "io", "graph", ""))] = random_json_value(rng)
        return tree
    if kind < 0.80 and hints.get("strings") and isinstance(node, str):
        return _set(tree, path, rng.choice(hints["strings"]))
    if kind < 0.88:                          # copy another subtree here
        other = _get(tree, rng.choice(paths))
        return _set(tree, path, json.loads(json.dumps(other)))
    if kind < 0.94:                          # deep nesting
        depth = rng.choice((10, 63, 64, 65, 100, 1000, 100000))
        deep: Any = 0
        for _ in range(min(depth, 2000)):
            deep = [deep] if rng.random() < 0.5 else {"a": deep}
        return _set(tree, path, deep)
    return _set(tree, path, random_json_value(rng))


# -- sparsr checkpoints ----------------------------------------------------------------------

_PREFIX = struct.Struct("<8sIIQ")


def ck_split(raw: bytes):
    """(header dict, data bytes) of a well-formed checkpoint."""
    _, _, _, n = _PREFIX.unpack_from(raw)
    start = (24 + n + 63) // 64 * 64
    return json.loads(raw[24:24 + n]), raw[start:]


def ck_join(header_text: bytes, data: bytes, version: int = 1) -> bytes:
    start = (24 + len(header_text) + 63) // 64 * 64
    return (_PREFIX.pack(b"SPARSRCK", version, 0, len(header_text)) + header_text
            + b"\0" * (start - 24 - len(header_text)) + data)


def _dump(header: Any, rng: random.Random) -> bytes:
    return json.dumps(header, allow_nan=True, sort_keys=rng.random() < 0.5).encode()


def _recrc(header: dict, data: bytes) -> None:
    """Every tensor's CRC recomputed from its (possibly changed) bytes, where it fits."""
    for e in header.get("tensors", {}).values():
        try:
            off, n = int(e["offset"]), int(e["nbytes"])
            if 0 <= off and 0 <= n and off + n <= len(data):
                e["crc32"] = zlib.crc32(data[off:off + n])
        except (KeyError, TypeError, ValueError, OverflowError):
            pass


def ck_header_tree(raw, rng):
    header, data = ck_split(raw)
    strings = sorted({v for v in _strings(header)})[:200]
    for _ in range(rng.choice((1, 1, 2, 3))):
        header = mutate_json_tree(header, rng, {"strings": strings})
    if isinstance(header, dict) and rng.random() < 0.3:
        header["data_nbytes"] = len(data)
    return ck_join(_dump(header, rng), data)


def _strings(tree):
    if isinstance(tree, str):
        yield tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield k
            yield from _strings(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _strings(v)


def ck_graph(raw, rng):
    """Graph-aware changes: op types, rewired inputs, attrs, params, io, layers."""
    from sparsr.ops import OPS

    header, data = ck_split(raw)
    model = header["model"]
    nodes = model["graph"]["nodes"]
    values = ["image"] + [o for n in nodes for o in n["outputs"]]
    tensors = list(header["tensors"])
    kind = rng.randrange(11)
    n = rng.choice(nodes)
    if kind == 0:
        n["op"] = rng.choice(sorted(OPS) + ["nope", "", "conv2d "])
    elif kind == 1:
        if n["inputs"]:
            n["inputs"][rng.randrange(len(n["inputs"]))] = rng.choice(values + ["ghost"])
        else:
            n["inputs"].append(rng.choice(values))
    elif kind == 2:
        n["inputs"].append(rng.choice(values))
    elif kind == 3:
        attrs = n.setdefault("attrs", {})
        key = rng.choice(list(attrs) + ["kernel", "stride", "padding", "dilation", "groups",
                                        "factor", "scale", "mode", "slope", "lo", "hi",
                                        "sizes", "axis", "start", "stop", "output_padding",
                                        "align_corners", "approximate"])
        old = attrs.get(key)
        choices = [rng.choice(INTERESTING_INTS), rng.choice(INTERESTING_FLOATS),
                   [rng.choice(INTERESTING_INTS)] * rng.choice((1, 2, 3)),
                   rng.choice(("nearest", "bilinear", "bicubic", "tanh", "none", "x")),
                   random_json_value(rng), True]
        if isinstance(old, list) and old:
            m = list(old)
            m[rng.randrange(len(m))] = rng.choice(INTERESTING_INTS + (0, 2, 5, 11, 12))
            choices.append(m)
        attrs[key] = rng.choice(choices)
    elif kind == 4:
        params = n.setdefault("params", {})
        key = rng.choice(list(params) + ["weight", "bias", "slopes", "x"])
        params[key] = rng.choice(tensors + ["ghost"])
    elif kind == 5:
        i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
        nodes[i], nodes[j] = nodes[j], nodes[i]
    elif kind == 6:
        nodes.insert(rng.randrange(len(nodes) + 1), json.loads(json.dumps(n)))
    elif kind == 7:
        nodes.pop(rng.randrange(len(nodes)))
    elif kind == 8:
        io_ = model.setdefault("io", {})
        key = rng.choice(("scale", "range", "color", "channel_order", "channels", "x"))
        io_[key] = rng.choice([rng.choice(INTERESTING_INTS), rng.choice(INTERESTING_FLOATS),
                               rng.choice(("rgb", "bgr", "y", "grey", "")), 1, 2, 3, 4, 16, 17])
    elif kind == 9:
        layer = rng.choice([k[:-len(".weight")] for k in tensors if k.endswith(".weight")]
                           or ["a"])
        fmt = rng.choice(("dense", "csr", "nm", "sparse", "x"))
        info: dict = {"format": fmt}
        if fmt == "nm" or rng.random() < 0.2:
            info["options"] = {"n": rng.choice((0, 1, 2, 3, 4, 8, 33, -1)),
                               "m": rng.choice((4, 8, 16, 32, 0, 5, 64))}
        model.setdefault("layers", {})[layer] = info
    else:
        # a new node of a random op between two existing values
        op = rng.choice(sorted(OPS))
        name = f"new{rng.randrange(100)}"
        node = {"op": op, "name": name, "inputs": [rng.choice(values)], "outputs": [name],
                "attrs": {}, "params": {}}
        if rng.random() < 0.5:
            node["params"]["weight"] = rng.choice(tensors)
        at = rng.randrange(len(nodes))
        nodes.insert(at, node)
        nxt = nodes[min(at + 1, len(nodes) - 1)]
        if nxt["inputs"]:
            nxt["inputs"][0] = name
    return ck_join(_dump(header, rng), data)


def ck_tensor_entry(raw, rng):
    """dtype swaps, shapes, offsets overlapping or outside, nbytes, with CRCs recomputed."""
    header, data = ck_split(raw)
    entries = header["tensors"]
    name = rng.choice(list(entries))
    e = entries[name]
    other = entries[rng.choice(list(entries))]
    kind = rng.randrange(8)
    sizes = {"float32": 4, "int32": 4, "uint8": 1, "int8": 1, "uint16": 2, "int64": 8,
             "float16": 2}
    if kind == 0:                         # dtype swap keeping the byte count consistent
        new = rng.choice(list(sizes) + ["float64", "bool", "complex64", "object", "<f4", "V4"])
        e["dtype"] = new
        if new in sizes and e["nbytes"] % sizes[new] == 0:
            e["shape"] = [e["nbytes"] // sizes[new]] if rng.random() < 0.5 else e["shape"]
    elif kind == 1:
        e["offset"] = other["offset"] + rng.choice((0, 4, 64, -4))
    elif kind == 2:
        e["offset"] = rng.choice((len(data), len(data) - 4, -64, 2 ** 63 - 1, 2 ** 64, 10 ** 20))
    elif kind == 3:
        e["shape"] = rng.choice(([2 ** 31, 2 ** 31], [0, 2 ** 62], [2 ** 40], [-1, 4], [],
                                 [1] * 9, [0] * 8, [3, 0, 2 ** 63 - 1],
                                 [d * 2 for d in e["shape"]], e["shape"][::-1],
                                 e["shape"][:-1]))
    elif kind == 4:
        e["nbytes"] = rng.choice((0, e["nbytes"] + 4, e["nbytes"] - 4, 2 ** 63, len(data) * 2))
    elif kind == 5:
        e["shape"], e["dtype"], e["nbytes"] = other["shape"], other["dtype"], other["nbytes"]
    elif kind == 6:                        # a tensor entry renamed, duplicated or removed
        op = rng.randrange(3)
        if op == 0:
            entries[name + rng.choice((".mask", ".values", ".shape", "x", ""))] = dict(e)
        elif op == 1:
            del entries[name]
        else:
            entries[rng.choice(("a.weight.mask", "a.weight.values", "a.weight.shape"))] = dict(e)
    else:                                   # a 0-size tensor claiming a huge shape
        e["shape"] = [0, 2 ** rng.randrange(20, 63)]
        e["nbytes"] = 0
    _recrc(header, data)
    return ck_join(_dump(header, rng), data)


def ck_data(raw, rng):
    """Tensor bytes changed (NaN, Inf, huge, random, sparse shapes), CRCs recomputed."""
    header, data = ck_split(raw)
    data = bytearray(data)
    entries = header["tensors"]
    name = rng.choice(list(entries))
    e = entries[name]
    off, n = e["offset"], e["nbytes"]
    if n:
        kind = rng.randrange(5)
        if e["dtype"] == "float32" and kind < 3:
            value = rng.choice((float("nan"), float("inf"), float("-inf"), 3.4e38, 1e-45,
                                -0.0, 1e30))
            count = rng.choice((1, n // 4))
            for _ in range(count):
                i = off + 4 * rng.randrange(n // 4)
                data[i:i + 4] = struct.pack("<f", value)
        elif e["dtype"] == "int64" and n % 8 == 0:      # the shape of a sparse triple
            i = off + 8 * rng.randrange(n // 8)
            data[i:i + 8] = struct.pack("<q", rng.choice(INTERESTING_INTS[:22] + (-5,)))
        else:
            for _ in range(rng.choice((1, 4, 16))):
                data[off + rng.randrange(n)] = rng.randrange(256)
    _recrc(header, bytes(data))
    return ck_join(_dump(header, rng), bytes(data))


def ck_text(raw, rng):
    """Text-level header changes json.dumps cannot make: tokens, repeated keys,
    numbers beyond a double, huge or long headers, bad UTF-8, a wrong length."""
    _, _, _, n = _PREFIX.unpack_from(raw)
    text = raw[24:24 + n]
    _, data = ck_split(raw)
    kind = rng.randrange(9)
    if kind == 0:
        digits = [i for i, c in enumerate(text) if 0x30 <= c <= 0x39]
        if digits:
            i = rng.choice(digits)
            tok = rng.choice((b"NaN", b"Infinity", b"-Infinity", b"1e300", b"1e400", b"-1e999",
                              b"9" * 30, b"-" + b"9" * 5000, b"1.5", b"0x10", b"00"))
            text = text[:i] + tok + text[i + 1:]
    elif kind == 1:
        i = text.find(b'"version"')
        text = text[:1] + b'"version": 2, ' + text[1:] if i < 0 else text.replace(
            b'"version": 1', b'"version": 1, "version": 1')
    elif kind == 2:
        text = text[:-1] + b', "pad": "' + b"x" * rng.choice((10 ** 5, 10 ** 6, 9 * 10 ** 6)) \
            + b'"}'
    elif kind == 3:
        text = text[:-1] + b', "pad": [' + b"0," * rng.choice((10 ** 4, 6 * 10 ** 5)) + b'0]}'
    elif kind == 4:
        d = rng.choice((60, 64, 65, 1000, 10 ** 5))
        text = text[:-1] + b', "deep": ' + b"[" * d + b"]" * d + b"}"
    elif kind == 5:
        i = rng.randrange(len(text))
        text = text[:i] + rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\", b'"', b"\\u0000",
                                      b"\\ud800")) + text[i:]
    elif kind == 6:
        return _PREFIX.pack(b"SPARSRCK", 1, 0, rng.choice((n - 1, n + 1, n + 64, 2 ** 63,
                                                           2 ** 64 - 1, 0, 9 << 20))) + raw[24:]
    elif kind == 7:
        return _PREFIX.pack(rng.choice((b"SPARSRCK", b"SPARSRCX", b"\x80\x02SPARSR")),
                            rng.choice((0, 1, 2, 2 ** 32 - 1)), rng.choice((0, 1)), n) + raw[24:]
    else:
        i = text.find(b"{", 1)
        if i > 0:
            text = text[:i + 1] + b'"a": 1, "a": 2, ' + text[i + 1:]
    return ck_join(text, data)


CHECKPOINT = GENERIC + [(ck_header_tree, 5), (ck_graph, 6), (ck_tensor_entry, 4), (ck_data, 3),
                        (ck_text, 3)]


# -- ONNX -----------------------------------------------------------------------------------

ONNX_OPS = ("Conv", "ConvTranspose", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip",
            "Add", "Sub", "Mul", "Div", "Concat", "Split", "Slice", "DepthToSpace",
            "SpaceToDepth", "Resize", "Upsample", "MaxPool", "AveragePool",
            "GlobalAveragePool", "ReduceMean", "Pow", "Sqrt", "BatchNormalization",
            "Identity", "Cast", "Shape", "Gather", "Reshape", "Transpose", "Unsqueeze",
            "Squeeze", "Constant", "ConstantOfShape", "Expand", "Range", "Where", "MatMul",
            "Flatten", "Erf", "Gelu", "Softmax", "Pad", "InstanceNormalization", "Size",
            "Equal", "Floor", "Neg", "Exp", "Tile", "FooBar", "If", "Loop")


def _random_attr_value(rng, old=None):
    c = rng.randrange(9)
    if c == 0:
        return rng.choice(INTERESTING_INTS[:24])
    if c == 1:
        return [rng.choice(INTERESTING_INTS[:24]) for _ in range(rng.choice((1, 2, 4, 6)))]
    if c == 2:
        return rng.choice(INTERESTING_FLOATS)
    if c == 3:
        return rng.choice((b"CRD", b"DCR", b"nearest", b"linear", b"cubic", b"x", b"",
                           b"asymmetric", b"align_corners", b"half_pixel", b"floor", b"tanh"))
    if c == 4 and isinstance(old, list) and old:
        m = list(old)
        m[rng.randrange(len(m))] = rng.choice(INTERESTING_INTS[:24])
        return m
    if c == 5:
        return [rng.choice(INTERESTING_FLOATS) for _ in range(rng.choice((1, 4)))]
    return rng.choice((0, 1, 2, 3, -1, 4, 16, 1000))


def _tensor(rng, name, old=None):
    import numpy as np
    from onnx import numpy_helper
    c = rng.randrange(6)
    if c == 0:
        return numpy_helper.from_array(np.array(rng.choice(INTERESTING_FLOATS), np.float32), name)
    if c == 1:
        return numpy_helper.from_array(np.array([rng.choice(INTERESTING_INTS[:24])
                                                 for _ in range(rng.choice((1, 2, 4)))],
                                                np.int64), name)
    if c == 2:
        return numpy_helper.from_array(np.array(
            [rng.choice(INTERESTING_FLOATS) for _ in range(4)], np.float32), name)
    if c == 3 and old is not None:
        a = numpy_helper.to_array(old).copy()
        if a.size and a.dtype.kind == "f":
            a.flat[rng.randrange(a.size)] = rng.choice(INTERESTING_FLOATS)
        elif a.size and a.dtype.kind in "iu":
            a.flat[rng.randrange(a.size)] = rng.choice((0, -1, 2 ** 31 - 1, 2 ** 62, 3, 1000))
        return numpy_helper.from_array(a, name)
    if c == 4 and old is not None:
        a = numpy_helper.to_array(old)
        dt = rng.choice((np.float64, np.float16, np.int64, np.int32, np.int8, np.uint8, bool))
        return numpy_helper.from_array(a.astype(dt), name)
    return numpy_helper.from_array(np.zeros(rng.choice(((0,), (1,), (2, 0), (3, 3, 1, 1))),
                                            np.float32), name)


def onnx_structured(raw, rng):
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load_from_string(raw)
    g = m.graph
    values = ["x"] + [o for n in g.node for o in n.output] + [t.name for t in g.initializer]
    kind = rng.randrange(14)
    node = g.node[rng.randrange(len(g.node))] if len(g.node) else None
    if kind == 0 and node is not None:                     # attribute value or type
        if node.attribute and rng.random() < 0.8:
            a = node.attribute[rng.randrange(len(node.attribute))]
            name = a.name
            old = helper.get_attribute_value(a)
            node.attribute.remove(a)
            if rng.random() > 0.15:
                node.attribute.append(helper.make_attribute(name, _random_attr_value(
                    rng, list(old) if isinstance(old, (list, tuple)) else old)))
        else:
            name = rng.choice(("pads", "strides", "dilations", "group", "kernel_shape",
                               "blocksize", "axis", "mode", "alpha", "output_padding",
                               "auto_pad", "perm", "axes", "keepdims", "to", "value",
                               "output_shape", "ceil_mode", "epsilon", "x"))
            node.attribute.append(helper.make_attribute(name, _random_attr_value(rng)))
    elif kind == 1 and node is not None:                   # op type / domain
        if rng.random() < 0.85:
            node.op_type = rng.choice(ONNX_OPS)
        else:
            node.domain = rng.choice(("com.microsoft", "ai.onnx", "x", "ai.onnx.ml"))
    elif kind == 2 and g.initializer:                      # missing initializer
        g.initializer.remove(g.initializer[rng.randrange(len(g.initializer))])
    elif kind == 3 and g.initializer:                      # initializer contents or dims
        i = rng.randrange(len(g.initializer))
        t = g.initializer[i]
        if rng.random() < 0.5:
            new = _tensor(rng, t.name, t)
        else:
            new = TensorProto()
            new.CopyFrom(t)
            if new.dims:
                new.dims[rng.randrange(len(new.dims))] = rng.choice(
                    (0, 1, -1, 2 ** 31, 2 ** 40, 2 ** 62, 10 ** 6))
            elif rng.random() < 0.5:
                new.dims.append(2 ** 40)
            if rng.random() < 0.2:
                new.data_type = rng.choice((0, 2, 6, 7, 8, 10, 11, 16, 1000))
            if rng.random() < 0.2 and new.raw_data:
                new.raw_data = new.raw_data[:rng.randrange(len(new.raw_data))]
            if rng.random() < 0.1:
                new.data_location = TensorProto.EXTERNAL
                e = new.external_data.add()
                e.key, e.value = "location", rng.choice(("missing.bin", "/proc/self/status",
                                                         "../../etc/hostname", "."))
        g.initializer.remove(t)
        g.initializer.insert(i, new)
    elif kind == 4 and node is not None:                   # rewire an input
        if node.input and rng.random() < 0.8:
            node.input[rng.randrange(len(node.input))] = rng.choice(values + ["ghost", ""])
        else:
            node.input.append(rng.choice(values))
    elif kind == 5:                                        # graph input shape / type
        t = g.input[0].type.tensor_type
        if rng.random() < 0.3:
            t.elem_type = rng.choice((0, 2, 6, 7, 10, 11, 16))
        else:
            dims = t.shape.dim
            if rng.random() < 0.2 and len(dims):
                dims.pop()
            elif len(dims):
                d = dims[rng.randrange(len(dims))]
                if rng.random() < 0.7:
                    d.dim_value = rng.choice((0, 1, 2, 3, 4, -1, 2 ** 31, 2 ** 40, 7, 64, 8192))
                else:
                    d.dim_param = rng.choice(("h", "w", "n", "c", ""))
    elif kind == 6:                                        # opset
        m.opset_import[0].version = rng.choice((1, 6, 8, 9, 10, 11, 12, 13, 17, 18, 19, 21, 22,
                                                 1000, -1, 2 ** 40))
        if rng.random() < 0.1:
            m.opset_import[0].domain = "x"
    elif kind == 7 and node is not None:                   # cycle / order
        if rng.random() < 0.5 and node.input:
            node.input[0] = node.output[0]
        else:
            nodes = list(g.node)
            rng.shuffle(nodes)
            del g.node[:]
            g.node.extend(nodes)
    elif kind == 8:                                        # a new node anywhere
        op = rng.choice(ONNX_OPS)
        ins = [rng.choice(values) for _ in range(rng.choice((1, 1, 2, 3)))]
        new = helper.make_node(op, ins, [f"n{rng.randrange(1000)}"])
        for _ in range(rng.choice((0, 1, 2))):
            new.attribute.append(helper.make_attribute(
                rng.choice(("axis", "pads", "mode", "blocksize", "perm", "to", "alpha",
                            "kernel_shape", "strides")), _random_attr_value(rng)))
        at = rng.randrange(len(g.node) + 1)
        g.node.insert(at, new)
        if at + 1 < len(g.node) and g.node[at + 1].input:
            g.node[at + 1].input[0] = new.output[0]
    elif kind == 9 and node is not None:                   # duplicate or delete a node
        if rng.random() < 0.5:
            g.node.remove(node)
        else:
            g.node.insert(rng.randrange(len(g.node)), node)
    elif kind == 10:                                       # Constant nodes with odd values
        name = f"k{rng.randrange(100)}"
        g.node.insert(0, helper.make_node("Constant", [], [name],
                                          value=_tensor(rng, name)))
        tgt = g.node[rng.randrange(len(g.node))]
        if tgt.input:
            tgt.input[rng.randrange(len(tgt.input))] = name
    elif kind == 11:                                       # graph output
        if rng.random() < 0.5:
            g.output[0].name = rng.choice(values + ["ghost"])
        else:
            g.output.append(helper.make_tensor_value_info(rng.choice(values), 1, None))
    elif kind == 12:                                       # extra or renamed graph inputs
        if rng.random() < 0.5:
            g.input.append(helper.make_tensor_value_info(rng.choice(values + ["x2"]), 1,
                                                         ["n", 3, "h", "w"]))
        else:
            g.input[0].name = rng.choice(values + ["ghost"])
    else:                                                  # huge Resize / pads / kernels
        if node is not None:
            key = {"Resize": "mode", "Conv": "pads", "MaxPool": "kernel_shape",
                   "DepthToSpace": "blocksize"}.get(node.op_type, "pads")
            for a in list(node.attribute):
                if a.name == key:
                    node.attribute.remove(a)
            val = {"mode": rng.choice((b"linear", b"cubic", b"nearest", b"area")),
                   "pads": [rng.choice((0, 1, 5, 1000, 2 ** 31 - 1, -3))] * 4,
                   "kernel_shape": [rng.choice((1, 2, 11, 12, 1000, 2 ** 31 - 1, 0))] * 2,
                   "blocksize": rng.choice((0, 1, 3, 4, 1000, -2, 2 ** 31 - 1))}[key]
            node.attribute.append(helper.make_attribute(key, val))
    return m.SerializeToString()


ONNX = GENERIC + [(onnx_structured, 14)]


# -- PyTorch weights --------------------------------------------------------------------

CANARY_ENV = "SPARSR_FUZZ_CODE_RAN"
# Code a hostile pickle would run; if it ever does, the environment variable
# says so and the target reports it.
CANARY_CODE = f"__import__('os').environ.__setitem__({CANARY_ENV!r}, '1')"


def hostile_pickle(rng: random.Random) -> bytes:
    """A pickle that runs code when unpickled by a plain pickle.load."""
    kind = rng.randrange(6)
    code = CANARY_CODE.encode()
    if kind == 0:
        return (b"\x80\x02cbuiltins\nexec\nq\x00X" + struct.pack("<I", len(code)) + code
                + b"\x85R.")
    if kind == 1:
        return (b"\x80\x02cbuiltins\neval\nX" + struct.pack("<I", len(code)) + code + b"\x85R.")
    if kind == 2:   # STACK_GLOBAL (protocol 4)
        return (b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x94\x93X" + struct.pack("<I", len(code))
                + code + b"\x85R.")
    if kind == 3:   # hidden inside an OrderedDict of a state_dict
        inner = b"cbuiltins\nexec\nX" + struct.pack("<I", len(code)) + code + b"\x85R"
        return b"\x80\x02ccollections\nOrderedDict\n)R}X\x01\x00\x00\x00a" + inner + b"s."
    if kind == 4:   # BUILD on an allowed class calling __setstate__ with a hostile state
        return (b"\x80\x02ccollections\nOrderedDict\n)Rcbuiltins\nexec\nX"
                + struct.pack("<I", len(code)) + code + b"\x85Rb.")
    # INST opcode
    return b"(X" + struct.pack("<I", len(code)) + code + b"ibuiltins\nexec\n."


def _zip_members(raw: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        for name, data in members:
            z.writestr(name, data)
    return f.getvalue()


def _pickle_ops(data: bytes):
    import pickletools
    try:
        return list(pickletools.genops(data))
    except Exception:
        return []


def mutate_pickle(data: bytes, rng: random.Random) -> bytes:
    """Opcode-aware: integers (shapes, strides, offsets) to extreme values,
    global names swapped, a hostile call spliced in, or plain byte flips."""
    ops = _pickle_ops(data)
    kind = rng.randrange(5)
    if kind == 0 and ops:
        ints = [(op, arg, pos) for op, arg, pos in ops
                if op.name in ("BININT1", "BININT2", "BININT", "LONG1")]
        if ints:
            op, arg, pos = rng.choice(ints)
            v = rng.choice(INTERESTING_INTS)
            enc = pickle.dumps(v, protocol=2)[2:-1]    # the opcode that pushes v
            size = {"BININT1": 2, "BININT2": 3, "BININT": 5}.get(op.name)
            if size is None:
                size = 2 + data[pos + 1]
            return data[:pos] + enc + data[pos + size:]
    if kind == 1 and ops:
        globs = [(op, arg, pos) for op, arg, pos in ops if op.name == "GLOBAL"]
        if globs:
            op, arg, pos = rng.choice(globs)
            end = data.index(b"\n", data.index(b"\n", pos + 1) + 1) + 1
            new = rng.choice(("torch._utils\n_rebuild_tensor_v2", "collections\nOrderedDict",
                              "torch\nFloatStorage", "torch\nHalfStorage", "torch\nLongStorage",
                              "torch\nBoolStorage", "torch\nComplexFloatStorage",
                              "torch._utils\n_rebuild_parameter",
                              "torch._utils\n_rebuild_sparse_tensor",
                              "torch._utils\n_rebuild_qtensor", "torch\nSize",
                              "builtins\nexec", "os\nsystem", "builtins\nset", "torch\ndevice",
                              "torch._tensor\n_rebuild_from_type_v2"))
            return data[:pos] + b"c" + new.encode() + b"\n" + data[end:]
    if kind == 2:
        # a hostile call placed at the top of the pickle (its result popped)
        return data[:2] + hostile_pickle(rng).lstrip(b"\x80\x02\x80\x04")[:-1] + b"0" + data[2:]
    if kind == 3 and ops:
        # BINUNICODE keys (names, storage keys, dtypes) changed
        strs = [(op, arg, pos) for op, arg, pos in ops if op.name == "BINUNICODE"]
        if strs:
            op, arg, pos = rng.choice(strs)
            n = struct.unpack_from("<I", data, pos + 1)[0]
            s = rng.choice(("0", "1", "999", "../x", "cpu", "cuda", "meta", "", "a" * 300,
                            "params", "module.x", arg + "x"))
            enc = s.encode()
            return data[:pos + 1] + struct.pack("<I", len(enc)) + enc + data[pos + 5 + n:]
    return flip_bytes(data, rng)


def pth_zip_members(raw, rng):
    """The zip kept valid (CRCs recomputed): its pickle, storages or members changed."""
    if not raw.startswith(b"PK"):
        return pth_legacy(raw, rng)
    members = _zip_members(raw)
    kind = rng.randrange(6)
    pkl = [i for i, (n, _) in enumerate(members) if n.endswith("data.pkl")]
    if kind <= 2 and pkl:
        i = pkl[0]
        members[i] = (members[i][0], mutate_pickle(members[i][1], rng))
    elif kind == 3 and pkl:
        members[pkl[0]] = (members[pkl[0]][0], hostile_pickle(rng))
    elif kind == 4:
        i = rng.randrange(len(members))
        name, data = members[i]
        members[i] = (name, rng.choice((data[: len(data) // 2], data * 2, b"", flip_bytes(data, rng),
                                        b"\xff" * len(data))))
    else:
        op = rng.randrange(3)
        if op == 0 and len(members) > 1:
            members.pop(rng.randrange(len(members)))
        elif op == 1:
            i = rng.randrange(len(members))
            members[i] = (members[i][0].rsplit("/", 1)[0] + "/" +
                          rng.choice(("x", "data.pkl", "version", "byteorder", "0", "../../x")),
                          members[i][1])
        else:
            prefix = members[0][0].split("/")[0]
            members.append((prefix + "/" + rng.choice(("byteorder", "version", ".data/version",
                                                       "data/99")),
                            rng.choice((b"big", b"little", b"3", b"\0" * 8, b"9999"))))
    return _zip(members)


def pth_legacy(raw, rng):
    if raw.startswith(b"PK"):
        return pth_zip_members(raw, rng)
    if rng.random() < 0.3:
        return hostile_pickle(rng)
    return mutate_pickle(raw, rng)


def pth_hostile(raw, rng):
    data = hostile_pickle(rng)
    if rng.random() < 0.5 and raw.startswith(b"PK"):
        members = _zip_members(raw)
        members = [(n, data if n.endswith("data.pkl") else d) for n, d in members]
        return _zip(members)
    return data


def pth_state_dict(raw, rng):
    """The state_dict itself changed (tensor shapes, dtypes, values, keys,
    containers, non-tensors), saved again by torch."""
    import torch

    sd = torch.load(io.BytesIO(raw), weights_only=True)
    while isinstance(sd, dict) and len(sd) == 1 and isinstance(next(iter(sd.values())), dict):
        sd = next(iter(sd.values()))
    sd = dict(sd)
    keys = list(sd)
    k = rng.choice(keys)
    t = sd[k]
    kind = rng.randrange(12)
    if kind == 0:
        shape = rng.choice(((), (0,), (1,), (2 ** 16,), (3, 0, 3, 3), tuple(reversed(t.shape)),
                            tuple(t.shape) + (1,), tuple(t.shape[:-1]),
                            tuple(d + 1 for d in t.shape), tuple(max(d // 2, 1) for d in t.shape),
                            (1, 1, 1, 1, 1), (4, 3, 1, 1), (8, 3, 2, 2)))
        n = math.prod(shape)
        sd[k] = torch.randn(n).reshape(shape) if n <= 2 ** 16 else torch.zeros(shape)
    elif kind == 1:
        dt = rng.choice((torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int8,
                         torch.uint8, torch.bool, torch.complex64, torch.int32, torch.int16,
                         torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn))
        try:
            sd[k] = t.to(dt)
        except (RuntimeError, TypeError):
            sd[k] = torch.zeros(t.shape, dtype=dt)
    elif kind == 2:
        v = t.clone()
        if v.numel() and v.is_floating_point():
            v.view(-1)[rng.randrange(v.numel())] = rng.choice(
                (float("nan"), float("inf"), -float("inf"), 3.4e38, 1e30))
        sd[k] = v
    elif kind == 3:
        del sd[k]
    elif kind == 4:
        sd[rng.choice((k + "x", k.replace("weight", "bias"), "module." + k, k[:-1],
                       k.replace("0", "9"), k.replace(".", "_")))] = sd.pop(k)
    elif kind == 5:
        sd[rng.choice(keys)] = rng.choice((1, "x", None, [1, 2], {"a": t}, 1.5, (t, t), b"x"))
    elif kind == 6:
        sd = rng.choice(({"params": sd}, {"params_ema": {"params": sd}}, {"state_dict": [sd]},
                         {"model": 1}, [sd], (sd,), {"params": {}}, {"state_dict": sd, "x": 1},
                         {1: t, "a": t}, t, None, 3))
        f = io.BytesIO()
        torch.save(sd, f)
        return f.getvalue()
    elif kind == 7:
        v = torch.randn(tuple(t.shape) + (2,))[..., 0] if t.ndim else t
        sd[k] = v if rng.random() < 0.5 else t.t() if t.ndim == 2 else v  # non-contiguous
    elif kind == 8:
        try:
            sd[k] = t.to_sparse() if rng.random() < 0.5 else torch.empty(t.shape, device="meta")
        except (RuntimeError, TypeError):
            pass
    elif kind == 9:
        sd[k] = torch.nn.Parameter(t.float(), requires_grad=False) if t.is_floating_point() \
            else t
    elif kind == 10:
        # add a key another architecture has, so the detection is confused
        sd[rng.choice(("conv_first.weight", "head.0.weight", "body.0.weight",
                       "first_part.0.weight", "entry.weight", "conv_up1.weight",
                       "upsample.0.weight", "tail.0.0.weight", "sub_mean.weight",
                       "fea_conv.weight", "conv_1.weight", "model.0.weight"))] = \
            torch.randn(rng.choice(((8, 3, 3, 3), (3,), (8,), (3, 3, 1, 1), (12, 8, 3, 3))))
    else:
        for _ in range(rng.choice((2, 3))):
            kk = rng.choice(keys)
            if kk in sd and isinstance(sd[kk], torch.Tensor) and sd[kk].ndim:
                sd[kk] = torch.randn(tuple(max(1, d + rng.choice((-1, 1, 0))) for d in
                                           sd[kk].shape))
    f = io.BytesIO()
    torch.save(sd, f, _use_new_zipfile_serialization=rng.random() < 0.8)
    return f.getvalue()


PTH = GENERIC + [(pth_zip_members, 6), (pth_legacy, 2), (pth_hostile, 2), (pth_state_dict, 8)]

STRATEGIES: dict[str, list[tuple[Callable, int]]] = {
    "checkpoint": CHECKPOINT, "onnx": ONNX, "pth": PTH}


def mutate(target: str, seeds: dict[str, bytes], rng: random.Random) -> tuple[str, bytes]:
    """(strategy names, mutated bytes) from a random seed of the target."""
    strategies = STRATEGIES[target]
    name = rng.choice(sorted(seeds))
    data = seeds[name]
    names = []
    for _ in range(1 if rng.random() < 0.75 else 2):
        fn = rng.choices([f for f, _ in strategies], [w for _, w in strategies])[0]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")      # numpy casts, zip duplicate names
                new = fn(data, rng)
            if len(new) > MAX_INPUT:
                raise OverflowError("too large an input")
            data = new
            names.append(fn.__name__)
        except Exception:
            # a structured strategy on input an earlier one already broke,
            # or one that made too large an input: fall back to bytes (the
            # mutator's failure is not a finding)
            data = flip_bytes(data, rng)
            names.append("flip_bytes")
    return f"{name}:{'+'.join(names)}", data
