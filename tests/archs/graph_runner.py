"""Runs a sparsr graph description with PyTorch ops, as the graph contract defines
each op. It checks that an importer's graph computes what the network computes,
independently of sparsr's runtime."""

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


def _other(node: dict, tensors: Mapping[str, torch.Tensor], inputs: list[torch.Tensor]):
    """The second operand of add/sub/mul: a value, a per-channel tensor or a scalar."""
    if len(inputs) == 2:
        return inputs[1]
    if "other" in node.get("params", {}):
        return tensors[node["params"]["other"]].reshape(1, -1, 1, 1)
    return float(node["attrs"]["value"])


def _resize(node: dict, inputs: list[torch.Tensor]) -> torch.Tensor:
    a = node.get("attrs", {})
    mode = a.get("mode", "nearest")
    corners = a.get("align_corners", False) if mode != "nearest" else None
    if len(inputs) == 2:
        return F.interpolate(inputs[0], size=inputs[1].shape[2:], mode=mode,
                             align_corners=corners)
    return F.interpolate(inputs[0], scale_factor=a["scale"], mode=mode, align_corners=corners)


def run_graph(model: dict, tensors: Mapping[str, np.ndarray], x: torch.Tensor) -> torch.Tensor:
    """The graph's output for x of (1, C, H, W)."""
    t = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    graph = model["graph"]
    values = {graph["inputs"][0]: x}
    for node in graph["nodes"]:
        op, a, p = node["op"], node.get("attrs", {}), node.get("params", {})
        ins = [values[v] for v in node["inputs"]]
        if op == "conv2d":
            out = [F.conv2d(ins[0], t[p["weight"]], t[p["bias"]] if "bias" in p else None,
                            _pair(a.get("stride", 1)), _pair(a.get("padding", 0)),
                            _pair(a.get("dilation", 1)), a.get("groups", 1))]
        elif op in _UNARY:
            out = [_UNARY[op](ins[0])]
        elif op == "leaky_relu":
            out = [F.leaky_relu(ins[0], a["slope"])]
        elif op in ("add", "mul"):
            out = [getattr(torch, op)(ins[0], _other(node, t, ins))]
        elif op == "sub":
            other = _other(node, t, ins)
            out = [other - ins[0] if a.get("reverse") else ins[0] - other]
        elif op == "concat":
            out = [torch.cat(ins, 1)]
        elif op == "split":
            out = list(torch.split(ins[0], a["sizes"], 1))
        elif op == "slice":
            out = [ins[0][:, a["start"]:a["stop"]]]
        elif op == "pixel_shuffle":
            out = [F.pixel_shuffle(ins[0], a["factor"])]
        elif op == "resize":
            out = [_resize(node, ins)]
        elif op == "max_pool":
            out = [F.max_pool2d(ins[0], _pair(a["kernel"]), _pair(a["stride"]),
                                _pair(a.get("padding", 0)))]
        elif op == "global_mean":
            out = [ins[0].double().mean(dim=(2, 3), keepdim=True).float()]
        elif op == "global_std":
            d = ins[0].double()
            var = ((d - d.mean(dim=(2, 3), keepdim=True)) ** 2).mean(dim=(2, 3), keepdim=True)
            out = [var.sqrt().float()]
        else:
            raise NotImplementedError(f"graph_runner has no op {op!r}")
        assert len(out) == len(node["outputs"]), node["name"]
        values.update(zip(node["outputs"], out))
    return values[graph["outputs"][0]]


def upscale_with_graph(model: dict, tensors: Mapping[str, np.ndarray],
                       lr: np.ndarray) -> np.ndarray:
    """The graph's output for an (H, W, 3) uint8 image, float32 on 0..255."""
    rng = float(model["io"]["range"])
    x = torch.from_numpy(np.array(lr, dtype=np.uint8)).permute(2, 0, 1)[None].float()
    with torch.no_grad(), one_thread():
        y = run_graph(model, tensors, x / (255.0 / rng))
    assert math.isfinite(float(y.abs().max()))
    return (y[0].permute(1, 2, 0) * (255.0 / rng)).numpy()

