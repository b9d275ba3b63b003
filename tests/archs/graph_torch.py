"""Runs a sparsr graph description op by op with PyTorch, as the graph contract
(HELPERS "Op semantics") defines each op: an independent check that an
importer's graph computes what the network computes, apart from sparsr's
runtime. `run` works in float64 by default (graph and reference agree to
rounding), or in float32 to compare with a float32 network; values are
(1, C, H, W) tensors.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .common import one_thread

_UNARY = {"relu": torch.relu, "sigmoid": torch.sigmoid, "silu": F.silu, "tanh": torch.tanh}


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def _other(node: dict, params: Mapping[str, torch.Tensor], inputs: list[torch.Tensor]):
    """The second operand of add/sub/mul: a value, a per-channel tensor or a scalar."""
    if len(inputs) == 2:
        return inputs[1]
    if "other" in params:
        return params["other"].reshape(1, -1, 1, 1)
    return float(node["attrs"]["value"])


def _resize(a: dict, inputs: list[torch.Tensor]) -> torch.Tensor:
    mode = a.get("mode", "nearest")
    corners = a.get("align_corners", False) if mode != "nearest" else None
    if len(inputs) == 2:
        return F.interpolate(inputs[0], size=inputs[1].shape[2:], mode=mode,
                             align_corners=corners)
    return F.interpolate(inputs[0], scale_factor=a["scale"], mode=mode, align_corners=corners)


def _global(x: torch.Tensor, op: str) -> torch.Tensor:
    """global_mean / global_std (population), accumulated in double as the runtime does."""
    d = x.double()
    mean = d.mean(dim=(2, 3), keepdim=True)
    if op == "global_std":
        mean = ((d - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt()
    return mean.to(x.dtype)


def run_node(node: dict, ins: list[torch.Tensor],
             p: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """One node's outputs from its inputs and parameters."""
    op, a = node["op"], node.get("attrs", {})
    if op == "conv2d":
        return [F.conv2d(ins[0], p["weight"], p.get("bias"), _pair(a.get("stride", 1)),
                         _pair(a.get("padding", 0)), _pair(a.get("dilation", 1)),
                         a.get("groups", 1))]
    if op == "conv_transpose2d":
        return [F.conv_transpose2d(ins[0], p["weight"], p.get("bias"), _pair(a.get("stride", 1)),
                                   _pair(a.get("padding", 0)),
                                   _pair(a.get("output_padding", 0)), a.get("groups", 1))]
    if op in _UNARY:
        return [_UNARY[op](ins[0])]
    if op == "leaky_relu":
        return [F.leaky_relu(ins[0], a["slope"])]
    if op == "gelu":
        return [F.gelu(ins[0], approximate=a.get("approximate", "none"))]
    if op == "clamp":
        return [torch.clamp(ins[0], a.get("min"), a.get("max"))]
    if op == "prelu":
        return [F.prelu(ins[0], p["weight"])]
    if op in ("add", "mul"):
        return [getattr(torch, op)(ins[0], _other(node, p, ins))]
    if op == "sub":
        other = _other(node, p, ins)
        return [other - ins[0] if a.get("reverse") else ins[0] - other]
    if op == "concat":
        return [torch.cat(ins, 1)]
    if op == "split":
        return list(torch.split(ins[0], a["sizes"], 1))
    if op == "slice":
        return [ins[0][:, a["start"]:a["stop"]]]
    if op == "pixel_shuffle":
        return [F.pixel_shuffle(ins[0], a["factor"])]
    if op == "pixel_unshuffle":
        return [F.pixel_unshuffle(ins[0], a["factor"])]
    if op == "resize":
        return [_resize(a, ins)]
    if op == "max_pool":
        return [F.max_pool2d(ins[0], _pair(a["kernel"]), _pair(a["stride"]),
                             _pair(a.get("padding", 0)))]
    if op == "avg_pool":
        return [F.avg_pool2d(ins[0], _pair(a["kernel"]), _pair(a["stride"]),
                             _pair(a.get("padding", 0)), count_include_pad=True)]
    if op in ("global_mean", "global_std"):
        return [_global(ins[0], op)]
    raise NotImplementedError(f"graph_torch has no op {op!r}")


def run(model: dict, tensors: Mapping[str, np.ndarray], x: torch.Tensor,
        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The graph's output for x of (1, C, H, W), computed in `dtype`."""
    graph = model["graph"]
    weights = {k: torch.tensor(np.asarray(v), dtype=dtype) for k, v in tensors.items()}
    values = {graph["inputs"][0]: x.to(dtype)}
    for node in graph["nodes"]:
        params = {role: weights[name] for role, name in node.get("params", {}).items()}
        outs = run_node(node, [values[v] for v in node["inputs"]], params)
        assert len(outs) == len(node["outputs"]), node["name"]
        values.update(zip(node["outputs"], outs))
    return values[graph["outputs"][0]]


def upscale_with_graph(model: dict, tensors: Mapping[str, np.ndarray],
                       lr: np.ndarray) -> np.ndarray:
    """The graph's output in float32 for an (H, W, 3) uint8 image, on 0..255."""
    rng = float(model["io"]["range"])
    x = torch.from_numpy(np.array(lr, dtype=np.uint8)).permute(2, 0, 1)[None].float()
    with torch.no_grad(), one_thread():
        y = run(model, tensors, x / (255.0 / rng), dtype=torch.float32)
    assert math.isfinite(float(y.abs().max()))
    return (y[0].permute(1, 2, 0) * (255.0 / rng)).numpy()
