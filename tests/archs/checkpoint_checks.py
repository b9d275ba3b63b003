"""The checks every architecture test here makes on the authors' checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsr.errors import CheckpointError
from sparsr.graph import IO, Graph

from .common import lr_crop, mangle, upscale
from .graph_torch import upscale_with_graph

# Crops of a Set14 LR image: the size the task names, and an odd one (odd
# sizes exercise the stride-2 conv, pooling and resizing of ESA).
CROPS = [(40, 48), (37, 45)]


def check_detection(arch, sd: dict, hyper: dict) -> None:
    assert arch.detect(sd) == hyper
    assert arch.scales(hyper) == [hyper["scale"]]


def check_refusal(arch, sd: dict, hyper: dict, key: str, how: str) -> None:
    """detect and build refuse a mangled state_dict, naming the key."""
    bad, named = mangle(sd, key, how)
    with pytest.raises(CheckpointError, match=re.escape(repr(named))):
        arch.detect(bad)
    with pytest.raises(CheckpointError, match=re.escape(repr(named))):
        arch.build(bad, hyper, hyper["scale"])


def check_graph(arch, sd: dict, hyper: dict, data_range: float) -> tuple[dict, dict]:
    """build gives a structurally valid graph that uses every tensor of the state_dict."""
    model, tensors = arch.build(sd, hyper, hyper["scale"])
    io = IO.from_dict(model["io"])
    assert (io.scale, io.color, io.range) == (hyper["scale"], "rgb", data_range)
    assert model["architecture"] == arch.NAME and model["hyper"] == hyper
    graph = Graph.from_dict(model["graph"])
    graph.check({n.op for n in graph.nodes}, tensors)
    used = {t for n in graph.nodes for t in n.params.values()}
    assert set(sd) <= used, sorted(set(sd) - used)[:5]
    with pytest.raises(CheckpointError, match="upscale"):
        arch.build(sd, hyper, hyper["scale"] + 1)
    return model, tensors


def graph_vs_reference(arch, net: torch.nn.Module, sd: dict, hyper: dict, shared_dir: Path,
                       data_range: float) -> float:
    """Max abs difference (0..255) between the graph run by PyTorch ops and the
    reference network, over the test crops."""
    model, tensors = arch.build(sd, hyper, hyper["scale"])
    worst = 0.0
    for h, w in CROPS:
        lr = lr_crop(shared_dir, hyper["scale"], h, w)
        want = upscale(net, lr, data_range)
        got = upscale_with_graph(model, tensors, lr)
        assert got.shape == want.shape == (h * hyper["scale"], w * hyper["scale"], 3)
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def sparsr_vs_reference(arch, net: torch.nn.Module, sd: dict, hyper: dict, shared_dir: Path,
                        data_range: float, tmp_path: Path) -> float:
    """Max abs difference (0..255) between sparsr running the converted
    checkpoint and the reference network, over the test crops. Skips while the
    graph runtime or one of the graph's ops is not in this tree."""
    pytest.importorskip("sparsr.executor", reason="the graph runtime is not in this tree yet")
    import sparsr
    from sparsr import checkpoint
    from sparsr.ops import OPS

    model, tensors = arch.build(sd, hyper, hyper["scale"])
    missing = sorted({n["op"] for n in model["graph"]["nodes"]} - set(OPS))
    if missing:
        pytest.skip(f"ops not in this tree yet: {', '.join(missing)}")
    path = tmp_path / f"{arch.NAME}.pt"
    checkpoint.save(path, model, tensors)
    loaded = sparsr.load(path)
    worst = 0.0
    for h, w in CROPS:
        lr = lr_crop(shared_dir, hyper["scale"], h, w)
        want = upscale(net, lr, data_range)
        got = loaded.forward(lr).output
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max()))
    return worst
