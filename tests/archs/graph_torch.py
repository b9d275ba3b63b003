"""Runs a sparsr graph description with torch.nn.functional, op by op.

An independent reading of the graph contract (HELPERS "Op semantics"): it checks
that an architecture file wrote the network it mirrors, before and apart from
the native runtime. Values are (1, C, H, W) float64 tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def _binary(fn, node, args, params):
    if len(args) == 2:
        return fn(args[0], args[1])
    if "other" in params:
        return fn(args[0], params["other"].reshape(1, -1, 1, 1))
    value = torch.tensor(node["attrs"]["value"], dtype=torch.float64)
    if node["attrs"].get("reverse"):
        return fn(value, args[0])
    return fn(args[0], value)


def _resize(node, args):
    a = node["attrs"]
    mode, align = a["mode"], a.get("align_corners", False)
    kwargs = {} if mode == "nearest" else {"align_corners": align}
    if len(args) == 2:
        return F.interpolate(args[0], size=args[1].shape[2:], mode=mode, **kwargs)
    return F.interpolate(args[0], scale_factor=a["scale"], mode=mode, **kwargs)


def run_node(node, args, params):
    op, a = node["op"], node.get("attrs", {})
    if op == "conv2d":
        return [F.conv2d(args[0], params["weight"], params.get("bias"),
                         stride=_pair(a.get("stride", 1)), padding=_pair(a.get("padding", 0)),
                         dilation=_pair(a.get("dilation", 1)), groups=a.get("groups", 1))]
    if op == "conv_transpose2d":
        return [F.conv_transpose2d(args[0], params["weight"], params.get("bias"),
                                   stride=_pair(a.get("stride", 1)),
                                   padding=_pair(a.get("padding", 0)),
                                   output_padding=_pair(a.get("output_padding", 0)),
                                   groups=a.get("groups", 1))]
    simple = {"relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu,
              "global_mean": lambda x: x.mean(dim=(2, 3), keepdim=True)}
    if op in simple:
        return [simple[op](args[0])]
    if op == "leaky_relu":
        return [F.leaky_relu(args[0], a["slope"])]
    if op == "prelu":
        return [F.prelu(args[0], params["weight"])]
    if op in ("add", "sub", "mul"):
        fn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul}[op]
        return [_binary(fn, node, args, params)]
    if op == "concat":
        return [torch.cat(args, dim=1)]
    if op == "pixel_shuffle":
        return [F.pixel_shuffle(args[0], a["factor"])]
    if op == "resize":
        return [_resize(node, args)]
    raise NotImplementedError(f"graph_torch has no {op!r}")


def run(model: dict, tensors: dict, x: torch.Tensor) -> torch.Tensor:
    """The graph's output for input x (1, C, H, W), computed in float64."""
    graph = model["graph"]
    values = {graph["inputs"][0]: x.double()}
    weights = {k: torch.from_numpy(v).double() for k, v in tensors.items()}
    for node in graph["nodes"]:
        params = {role: weights[name] for role, name in node.get("params", {}).items()}
        outs = run_node(node, [values[v] for v in node["inputs"]], params)
        values.update(zip(node["outputs"], outs))
    return values[graph["outputs"][0]]
