"""Runs a sparsr graph description op by op with PyTorch, as the graph contract
(HELPERS "Op semantics") defines each op: an independent check that an
importer's graph computes what the network computes, apart from sparsr's
runtime. `run` works in float64 by default (graph and reference agree to
rounding), or in float32 to compare with a float32 network; values are
(1, C, H, W) tensors.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .common import one_thread

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import torch_graph  # noqa: E402


def run_node(node: dict, ins: list[torch.Tensor],
             p: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """One node's outputs from its inputs and parameters (tools/torch_graph.py, the
    graph's ops in torch that the tools train on)."""
    return torch_graph.run_node(node["op"], node.get("attrs", {}), ins, p)


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
